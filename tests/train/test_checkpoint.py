import dataclasses
import json
import os
import random

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from attnlab.train import checkpoint as ckpt_mod
from attnlab.train.checkpoint import (
    CheckpointError,
    CheckpointManager,
    average_weights,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)


@dataclasses.dataclass(frozen=True)
class TinyConfig:
    name: str = "tiny"
    sizes: tuple = (3, 5, 7)
    dropout: float = 0.1


class Tiny(torch.nn.Module):
    def __init__(self, d_in=3, d_hidden=5, d_out=7):
        super().__init__()
        self.a = torch.nn.Linear(d_in, d_hidden)
        self.b = torch.nn.Linear(d_hidden, d_out)
        self.register_buffer("count", torch.tensor([2, 3], dtype=torch.int64))


class Tied(torch.nn.Module):
    """Embedding and output projection share one matrix, as in tied-embedding LMs."""

    def __init__(self, vocab=11, dim=5):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, dim)
        self.out = torch.nn.Linear(dim, vocab, bias=False)
        self.out.weight = self.emb.weight


def trained(model, steps=3, lr=0.1):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        model.b(model.a(torch.randn(4, 3))).pow(2).mean().backward()
        opt.step()
    return opt


def test_round_trip_weights_optimizer_rng_state_and_config(tmp_path):
    torch.manual_seed(0)
    model = Tiny()
    opt = trained(model)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    opt.step()
    sched.step()
    random.seed(5)
    random.gauss(0, 1)  # leaves the second normal of the pair cached in the state
    np.random.seed(6)
    torch.manual_seed(7)
    state = {"step": 3, "epoch": 1, "best": float("nan"), "pos": (4, 2), "ids": {2: "two"}, "t": torch.arange(3)}
    save_checkpoint(tmp_path / "c", model, optimizer=opt, scheduler=sched, state=state, config=TinyConfig())
    expected_draws = (random.gauss(0, 1), float(np.random.rand()), torch.rand(3))

    torch.manual_seed(99)
    model2 = Tiny()
    opt2 = torch.optim.Adam(model2.parameters(), lr=0.1)
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=2, gamma=0.5)
    random.seed(0)
    np.random.seed(0)
    out = load_checkpoint(tmp_path / "c", model2, opt2, sched2)

    for (k, v), (k2, v2) in zip(model.state_dict().items(), model2.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for i in s1["state"]:
        for name in ("step", "exp_avg", "exp_avg_sq"):  # Adam's moments and step counter
            assert torch.equal(s1["state"][i][name], s2["state"][i][name]), name
    assert sched2.state_dict() == sched.state_dict()
    # RNG streams continue where they were at save time.
    assert random.gauss(0, 1) == expected_draws[0]
    assert float(np.random.rand()) == expected_draws[1]
    assert torch.equal(torch.rand(3), expected_draws[2])
    assert out.state["step"] == 3 and out.state["pos"] == (4, 2) and out.state["ids"] == {2: "two"}
    assert np.isnan(out.state["best"]) and torch.equal(out.state["t"], torch.arange(3))
    assert out.config == {"name": "tiny", "sizes": (3, 5, 7), "dropout": 0.1}
    assert out.config_type.endswith("TinyConfig")
    assert TinyConfig(**out.config) == TinyConfig()
    # Strict JSON, and the RNG state is not in it.
    record = json.loads((tmp_path / "c" / "state.json").read_text())
    assert "__tensor__" in json.dumps(record["rng"]["torch"])
    assert sorted(os.listdir(tmp_path / "c")) == [
        "optimizer.json",
        "optimizer.safetensors",
        "state.json",
        "state.safetensors",
        "weights.safetensors",
    ]


def test_optimizer_continues_identically_after_reload(tmp_path):
    torch.manual_seed(1)
    model = Tiny()
    opt = trained(model, steps=2)
    save_checkpoint(tmp_path / "c", model, optimizer=opt)
    model2 = Tiny()
    opt2 = torch.optim.Adam(model2.parameters(), lr=0.1)
    load_checkpoint(tmp_path / "c", model2, opt2, restore_rng=False)
    x = torch.randn(4, 3)
    for m, o in ((model, opt), (model2, opt2)):
        o.zero_grad()
        m.b(m.a(x)).pow(2).mean().backward()
        o.step()
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)


def test_tied_weights_stored_once_and_restored(tmp_path):
    torch.manual_seed(2)
    model = Tied()
    with pytest.raises(RuntimeError):  # what we work around: plain save_file refuses shared storage
        save_file(model.state_dict(), str(tmp_path / "plain.safetensors"))
    save_checkpoint(tmp_path / "c", model)
    with safe_open(str(tmp_path / "c" / "weights.safetensors"), framework="pt") as f:
        assert sorted(f.keys()) == ["emb.weight"]
    model2 = Tied()
    load_checkpoint(tmp_path / "c", model2)
    assert torch.equal(model2.emb.weight, model.emb.weight)
    assert model2.out.weight is model2.emb.weight


def test_tensors_sharing_part_of_a_storage_are_cloned(tmp_path):
    base = torch.arange(12.0)
    model = torch.nn.Module()
    model.register_buffer("left", base[:5])
    model.register_buffer("right", base[5:])
    model.register_buffer("strided", base.view(3, 4).t())  # non-contiguous view
    save_checkpoint(tmp_path / "c", model)
    fresh = torch.nn.Module()
    for name, t in model.named_buffers():
        fresh.register_buffer(name, torch.zeros_like(t))
    load_checkpoint(tmp_path / "c", fresh)
    for name, t in model.named_buffers():
        assert torch.equal(getattr(fresh, name), t), name


def test_crash_while_writing_keeps_previous_checkpoint(tmp_path, monkeypatch):
    torch.manual_seed(3)
    model = Tiny()
    opt = trained(model)
    save_checkpoint(tmp_path / "last", model, optimizer=opt, state={"step": 1})
    old = {k: v.clone() for k, v in model.state_dict().items()}
    trained(model)  # the weights move on

    real = ckpt_mod._write_tensors

    def crash_on_optimizer(path, tensors):
        if path.name == "optimizer.safetensors":
            real(path, tensors)
            path.write_bytes(path.read_bytes()[:20])  # half-written file, then the crash
            raise OSError("disk full")
        return real(path, tensors)

    monkeypatch.setattr(ckpt_mod, "_write_tensors", crash_on_optimizer)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "last", model, optimizer=opt, state={"step": 2})
    monkeypatch.undo()

    assert sorted(os.listdir(tmp_path)) == ["last"]  # the temp dir is gone
    restored = Tiny()
    out = load_checkpoint(tmp_path / "last", restored, torch.optim.Adam(restored.parameters()))
    assert out.state == {"step": 1}
    for k, v in restored.state_dict().items():
        assert torch.equal(v, old[k])


def test_crash_between_the_two_renames_falls_back_to_previous(tmp_path, monkeypatch):
    model = Tiny()
    save_checkpoint(tmp_path / "last", model, state={"step": 1})
    real_replace = os.replace
    calls = []

    def crash_on_second(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # target already moved to the backup; the new one not yet in place
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "last", model, state={"step": 2})
    monkeypatch.undo()

    assert not (tmp_path / "last").exists()
    assert read_checkpoint(tmp_path / "last").state == {"step": 1}
    assert CheckpointManager(tmp_path).latest() is not None
    save_checkpoint(tmp_path / "last", model, state={"step": 3})  # recovers, then replaces
    assert read_checkpoint(tmp_path / "last").state == {"step": 3}
    assert sorted(os.listdir(tmp_path)) == ["last"]


def test_mismatched_model_lists_differences(tmp_path):
    save_checkpoint(tmp_path / "c", Tiny(3, 5, 7), config=TinyConfig())
    with pytest.raises(CheckpointError, match=r"with different shapes: a\.weight: checkpoint \(5, 3\) vs model \(11, 3\)"):
        load_checkpoint(tmp_path / "c", Tiny(3, 11, 7))

    other = torch.nn.Module()
    other.a = torch.nn.Linear(3, 5)
    other.c = torch.nn.Linear(5, 7)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "c", other)
    msg = str(info.value)
    assert "2 missing from the checkpoint: c.weight; c.bias" in msg
    assert "3 in the checkpoint but not in the model: b.bias; b.weight; count" in msg
    assert "TinyConfig" in msg


def test_mismatch_listing_is_capped(tmp_path):
    big = torch.nn.Sequential(*[torch.nn.Linear(2, 2) for _ in range(5)])  # 10 tensors
    save_checkpoint(tmp_path / "c", big)
    with pytest.raises(CheckpointError, match=r"10 in the checkpoint but not in the model: .*\.\.\. and 5 more"):
        load_checkpoint(tmp_path / "c", Tiny())


def test_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at .*nowhere"):
        load_checkpoint(tmp_path / "nowhere", Tiny())
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="state.json is missing"):
        load_checkpoint(tmp_path / "empty")

    model = Tiny()
    save_checkpoint(tmp_path / "c", model, optimizer=trained(model))
    weights = tmp_path / "c" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # a flipped bit in the last weight
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt checkpoint .*weights.safetensors does not match"):
        load_checkpoint(tmp_path / "c", Tiny())

    state = tmp_path / "c" / "state.json"
    state.write_text(state.read_text()[:50])
    with pytest.raises(CheckpointError, match="corrupt checkpoint .*state.json is not valid JSON"):
        load_checkpoint(tmp_path / "c", Tiny())


def test_optimizer_that_does_not_fit(tmp_path):
    model = Tiny()
    save_checkpoint(tmp_path / "c", model, optimizer=trained(model))
    other = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))])
    with pytest.raises(CheckpointError, match="optimizer state .*does not fit the optimizer Adam"):
        load_checkpoint(tmp_path / "c", Tiny(), other)
    save_checkpoint(tmp_path / "d", model)
    with pytest.raises(CheckpointError, match="no optimizer state"):
        load_checkpoint(tmp_path / "d", Tiny(), torch.optim.SGD(model.parameters(), lr=0.1))


def test_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        save_checkpoint(tmp_path / "c", {"w": torch.zeros(1)})
    with pytest.raises(TypeError, match="config must be a dataclass instance or a dict"):
        save_checkpoint(tmp_path / "c", Tiny(), config="tiny")
    with pytest.raises(TypeError, match=r"state\.fn: cannot store a function"):
        save_checkpoint(tmp_path / "c", Tiny(), state={"fn": lambda: 0})
    assert not (tmp_path / "c").exists() and os.listdir(tmp_path) == []


def test_manager_keeps_best_and_last(tmp_path):
    manager = CheckpointManager(tmp_path)
    assert manager.latest() is None and manager.best() is None and manager.best_metric is None
    model = Tiny()
    assert manager.save_best(0.5, model, higher_is_better=False, state={"step": 1})
    assert not manager.save_best(0.7, model, higher_is_better=False, state={"step": 2})
    assert not manager.save_best(float("nan"), model, higher_is_better=False)
    assert manager.save_best(0.4, model, higher_is_better=False, state={"step": 3})
    manager.save_last(model, state={"step": 4})
    assert manager.latest() == tmp_path / "last" and manager.best() == tmp_path / "best"
    best = read_checkpoint(manager.best())
    assert best.state == {"step": 3, "best_metric": 0.4}
    # A new manager on the same root continues the comparison from disk.
    again = CheckpointManager(tmp_path)
    assert again.best_metric == 0.4
    assert not again.save_best(0.45, model, higher_is_better=False)
    assert again.save_best(0.3, model, higher_is_better=False)
    with pytest.raises(TypeError, match="higher_is_better must be a bool"):
        again.save_best(0.1, model, higher_is_better="max")


def test_average_weights_is_the_elementwise_mean_and_refuses_other_models(tmp_path):
    models = []
    for i in range(3):
        torch.manual_seed(i)
        m = Tiny()
        save_checkpoint(tmp_path / f"c{i}", m, config=TinyConfig())
        models.append(m)
    avg = average_weights([tmp_path / f"c{i}" for i in range(3)])
    for name, p in models[0].state_dict().items():
        if p.is_floating_point():
            expected = torch.stack([m.state_dict()[name] for m in models]).mean(0)
            torch.testing.assert_close(avg[name], expected)
            assert avg[name].dtype == p.dtype
        else:
            assert torch.equal(avg[name], p)  # the int buffer is kept
    assert set(avg) == set(models[0].state_dict())
    one = average_weights([tmp_path / "c1"])
    assert all(torch.equal(one[k], v) for k, v in models[1].state_dict().items())

    save_checkpoint(tmp_path / "wide", Tiny(d_hidden=6), config=TinyConfig())
    with pytest.raises(ValueError, match=r"a\.(weight|bias) is \(6,.*not the same model"):
        average_weights([tmp_path / "c0", tmp_path / "wide"])
    with pytest.raises(ValueError, match="at least one checkpoint"):
        average_weights([])
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        average_weights([tmp_path / "c0", tmp_path / "nowhere"])
