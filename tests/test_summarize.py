"""`attnlab train summarize` / `attnlab summarize` on a small apt index fixture."""

from __future__ import annotations

import argparse
import json
import random

import pytest

from attnlab import summarize as sm

WORDS = ("tool library data file image audio network server client parser viewer editor game font "
         "python perl rust shell package support format converter plugin driver").split()


def write_index(folder, n=40):
    rng = random.Random(0)
    stanzas = []
    for i in range(n):
        topic = rng.sample(WORDS, 3)
        short = f"{topic[0]} {topic[1]} for {topic[2]}"
        body = " ".join(rng.choice(WORDS) for _ in range(14))
        stanzas.append(
            f"Package: pkg{i}\nDescription-md5: {i:032x}\nDescription-en: {short}\n"
            f" Package {i} is a {topic[0]} {topic[1]} for {topic[2]}. It offers\n {body}.\n .\n"
            f" Features:\n  * fast {topic[0]}\n  * small {topic[2]}\n"
        )
    folder.mkdir()
    (folder / "x_dists_bookworm_main_i18n_Translation-en").write_text("\n".join(stanzas))
    return folder


def cli(*argv):
    ap = argparse.ArgumentParser()
    sm.register(ap.add_subparsers())
    args = ap.parse_args(list(argv))
    return args.func(args)


TINY = ["--set", "d_model=16", "--set", "ffn_dim=32", "--set", "num_heads=2", "--set", "num_encoder_layers=1",
        "--set", "num_decoder_layers=1"]


def common(lists, out):
    return ["--lists-dir", str(lists), "--out", str(out), "--valid-size", "4", "--test-size", "4",
            "--vocab-size", "150", "--eval-every", "2", "--valid-sentences", "3", "--batch-tokens", "300", "--quiet"]


@pytest.fixture(scope="module")
def lists(tmp_path_factory):
    return write_index(tmp_path_factory.mktemp("apt") / "lists")


def test_train_resume_and_summarize(lists, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli("train", "summarize", "--model", "transformer", "--copy", "--steps", "2", *TINY, *common(lists, out)) == 0
    first = json.loads((out / "test.json").read_text())
    assert first["steps"] == 2 and first["copy"] is True and set(first["model"]) >= {"rouge1", "rouge2", "rougeL"}
    assert first["lead"]["n"] == first["model"]["n"] >= 4
    assert cli("train", "summarize", "--resume", "--steps", "4", *common(lists, out)) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["copy"] is True and record["model"] == "transformer"
    assert json.loads((out / "test.json").read_text())["steps"] == 4
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "valid"]
    assert steps[-1] == 4
    capsys.readouterr()
    assert cli("summarize", "--checkpoint", str(out), "Package 9 is a tool for fonts.", "A second text.") == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    # an existing run is not overwritten
    with pytest.raises(FileExistsError, match="--resume"):
        cli("train", "summarize", "--steps", "2", *TINY, *common(lists, out))


def test_rnnsearch_plain_run(lists, tmp_path):
    out = tmp_path / "rnn"
    small = ["--set", "emb_size=8", "--set", "enc_hidden=8", "--set", "dec_hidden=8", "--set", "attn_hidden=8"]
    assert cli("train", "summarize", "--model", "rnnsearch", "--steps", "1", "--precision", "bfloat16", *small,
               *common(lists, out)) == 0
    assert json.loads((out / "test.json").read_text())["copy"] is False
    assert json.loads((out / "run.json").read_text())["train"]["precision"] == "bfloat16"


def test_bad_inputs(lists, tmp_path):
    with pytest.raises(FileNotFoundError, match="Acquire::Languages"):
        cli("train", "summarize", "--steps", "1", *common(tmp_path, tmp_path / "r"))
    with pytest.raises(ValueError, match="d_modl"):
        cli("train", "summarize", "--steps", "1", "--set", "d_modl=3", *common(lists, tmp_path / "r2"))
    with pytest.raises(FileNotFoundError, match="train summarize"):
        cli("summarize", "--checkpoint", str(tmp_path / "none"), "text")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "run.json").write_text('{"task": "translate"}')
    with pytest.raises(ValueError, match="not written by `attnlab train summarize`"):
        cli("summarize", "--checkpoint", str(tmp_path / "other"), "text")
    with pytest.raises(FileNotFoundError, match="summarization run"):
        cli("train", "summarize", "--resume", "--steps", "1", *common(lists, tmp_path / "empty"))
    with pytest.raises(SystemExit):
        cli("train", "summarize", "--model", "luong", "--out", "x")
    with pytest.raises(ValueError, match="must not exceed"):
        cli("train", "summarize", "--steps", "1", "--valid-size", "100", "--lists-dir", str(lists),
            "--out", str(tmp_path / "r3"))
