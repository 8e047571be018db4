"""`attnlab train vision` and `attnlab experiment cnn-vs-vit` on a tiny Fashion-MNIST-format fixture."""

import argparse
import json

import numpy as np
import pytest
from safetensors.torch import load_file

from attnlab import vision
from attnlab.data.fashion_mnist import FASHION_MNIST_FILES, write_idx

TINY_VIT = ["--d-model", "8", "--layers", "1", "--heads", "2", "--ffn-dim", "8"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """48 training and 12 test images, 28 x 28, in the real idx-ubyte.gz files."""
    folder = tmp_path_factory.mktemp("fashion")
    rng = np.random.default_rng(0)
    for split, n in (("train", 48), ("test", 12)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = rng.integers(0, 60, size=(n, 28, 28), dtype=np.uint8)
        images[:, :, :] += (labels * 19)[:, None, None].astype(np.uint8)  # class-dependent brightness
        img_name, lab_name = FASHION_MNIST_FILES[split]
        write_idx(images, folder / img_name)
        write_idx(labels, folder / lab_name)
    return folder


def cli(*argv):
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers()
    vision.register(sub)
    args = ap.parse_args([str(a) for a in argv])
    return args.func(args)


def train(out, data_dir, *extra):
    return cli("train", "vision", "--out", out, "--data", data_dir, "--train-size", 32, "--valid-size", 8,
               "--batch-size", 16, "--eval-every", 1, "--quiet", *extra)


def test_train_resume_and_rollout(tmp_path, data_dir, capsys):
    run = tmp_path / "vit"
    assert train(run, data_dir, "--model", "vit", "--steps", 2, "--schedule", "constant", "--rollout-images", "0,3",
                 *TINY_VIT) == 0
    for name in ("run.json", "metrics.jsonl", "results.json", "rollout.png", "last", "best"):
        assert (run / name).exists(), name
    results = json.loads((run / "results.json").read_text())
    assert results["step"] == 2 and results["test_images"] == 12 and results["train_images"] == 32
    assert 0.0 <= results["test_accuracy"] <= 1.0 and len(results["test_per_class"]) == 10
    assert (run / "rollout.png").read_bytes()[:4] == b"\x89PNG"
    assert "test accuracy" in capsys.readouterr().out

    # Resume to 4 steps: the same weights as 4 steps without a stop (exact resume).
    assert train(run, data_dir, "--resume", "--steps", 4, "--rollout-images", "none") == 0
    assert json.loads((run / "results.json").read_text())["step"] == 4
    events = [json.loads(line).get("event") for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert "resume" in events
    straight = tmp_path / "straight"
    assert train(straight, data_dir, "--model", "vit", "--steps", 4, "--schedule", "constant",
                 "--rollout-images", "none", *TINY_VIT) == 0
    a = load_file(run / "last" / "weights.safetensors")
    b = load_file(straight / "last" / "weights.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_cnn_run_has_no_rollout(tmp_path, data_dir):
    run = tmp_path / "cnn"
    assert train(run, data_dir, "--model", "cnn", "--steps", 1, "--channels", "4,8", "--valid-size", 0,
                 "--precision", "bfloat16") == 0
    record = json.loads((run / "run.json").read_text())
    assert record["config"]["channels"] == [4, 8] and record["valid_images"] == 0
    assert record["train"]["precision"] == "bfloat16"
    assert not (run / "rollout.png").exists() and not (run / "best").exists()


def test_bad_input(tmp_path, data_dir):
    with pytest.raises(ValueError, match="--window applies to local-vit, not to vit"):
        train(tmp_path / "a", data_dir, "--model", "vit", "--steps", 1, "--window", 2)
    with pytest.raises(ValueError, match="--channels applies to cnn, not to local-vit"):
        train(tmp_path / "a", data_dir, "--model", "local-vit", "--steps", 1, "--channels", "4")
    with pytest.raises(ValueError, match=r"train_size must be in \[1, 40\]"):
        cli("train", "vision", "--out", tmp_path / "b", "--data", data_dir, "--train-size", 41, "--valid-size", 8,
            "--steps", 1)
    with pytest.raises(ValueError, match="--rollout-images: index 12 is out of range; the test set has 12 images"):
        train(tmp_path / "c", data_dir, "--steps", 1, "--rollout-images", "1,12", *TINY_VIT)
    with pytest.raises(FileNotFoundError, match="holds no vision run"):
        train(tmp_path / "none", data_dir, "--resume", "--steps", 1)
    with pytest.raises(FileExistsError, match="already holds a training run"):
        train(tmp_path / "c", data_dir, "--steps", 1, *TINY_VIT)  # c/ got its run.json before the rollout failed
    with pytest.raises(ValueError, match="a resumed run keeps its model"):
        train(tmp_path / "c", data_dir, "--resume", "--steps", 1, "--d-model", 16)
    with pytest.raises(ValueError, match="the run in .* trains vit"):
        train(tmp_path / "c", data_dir, "--resume", "--steps", 1, "--model", "cnn")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        cli("train", "vision", "--out", tmp_path / "d", "--data", tmp_path / "nowhere", "--steps", 1)
    with pytest.raises(SystemExit):
        cli("train", "vision", "--out", tmp_path / "e", "--rollout-images", "a,b")
    with pytest.raises(SystemExit):
        cli("experiment", "cnn-vs-vit", "--models", "cnn,resnet")


def test_build_vision_model_errors():
    with pytest.raises(ValueError, match="unknown model 'resnet'; valid models: cnn, local-vit, vit"):
        vision.build_vision_model("resnet")
    with pytest.raises(ValueError, match="model 'vit' has no setting attention"):
        vision.build_vision_model("vit", attention="local")
    config, model = vision.build_vision_model("local-vit", window=2)
    assert config.attention == "local" and config.window == 2


def test_crossings():
    # d = a - b = [-1, 1] between 10 and 1000: the sign changes half-way in log size, at 100.
    assert vision.crossings([10, 1000], [1.0, 3.0], [2.0, 2.0]) == pytest.approx([100.0])
    # d = [-0.1, 0, 0.1]: a tie at a measured size is the crossing.
    assert vision.crossings([1, 10, 100], [0.5, 0.6, 0.8], [0.6, 0.6, 0.7]) == [10.0]
    assert vision.crossings([1, 10], [0.9, 0.8], [0.1, 0.2]) == []
    with pytest.raises(ValueError, match="sizes must be positive and increasing"):
        vision.crossings([10, 1], [0, 0], [0, 0])
    with pytest.raises(ValueError, match="the same length"):
        vision.crossings([1, 10], [0], [0, 0])


def test_experiment_on_fixture(tmp_path, data_dir, capsys):
    out = tmp_path / "exp"
    argv = ["experiment", "cnn-vs-vit", "--out", out, "--data", data_dir, "--sizes", "16,48", "--steps", 1,
            "--test-size", 12, "--models", "cnn,local-vit", "--rollout-images", "0", "--quiet"]
    assert cli(*argv) == 0
    record = json.loads((out / "results.json").read_text())
    assert record["sizes"] == [16, 48] and set(record["accuracy"]) == {"cnn", "local-vit"}
    assert record["crossings"][0]["pair"] == ["cnn", "local-vit"]
    assert (out / "cnn_vs_vit.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "local-vit-16" / "rollout.png").exists()
    table = (out / "cnn_vs_vit.md").read_text()
    assert "| 16 |" in table and "| 48 |" in table and "epochs per size: 16: 8.0, 48: 2.7" in table
    capsys.readouterr()
    assert cli(*argv) == 0  # a re-run reads the finished points instead of training again
    assert capsys.readouterr().out.count("done before") == 4
    with pytest.raises(ValueError, match="49 is more than the 48 training images"):
        cli(*argv[:6], "--sizes", "49", *argv[8:])
