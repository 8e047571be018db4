"""Data-parallel training: 2 gloo processes reproduce the single-process run.

The toy task is token-level (padded rows, a loss averaged over the real tokens), global
batches of 7 rows (4 + 3 per rank) whose shards hold different numbers of tokens, so
only the count-weighted loss gives the single-process gradient.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections import namedtuple

import pytest
import torch

from attnlab.distributed import ddp
from attnlab.train.checkpoint import read_checkpoint
from attnlab.train.loop import TrainConfig, Trainer, make_scheduler

V, D, T, ROWS, BATCH = 11, 5, 7, 23, 7  # vocabulary, width, max length, rows, global batch


@dataclasses.dataclass(frozen=True)
class Batch:
    tokens: torch.Tensor  # (B, T) int64, 0 = padding
    targets: torch.Tensor  # (B, T) int64
    name: str = "toy"  # a non-tensor field: every rank gets it unchanged


def _data():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, V, (ROWS, T), generator=g)
    lengths = torch.randint(1, T + 1, (ROWS,), generator=g)
    tokens[torch.arange(T)[None, :] >= lengths[:, None]] = 0  # (ROWS, T) padded
    return tokens, (tokens * 3 + 1) % V


TOKENS, TARGETS = _data()


def batches(epoch, seed):
    perm = torch.randperm(ROWS, generator=torch.Generator().manual_seed(1000 * seed + epoch))
    for i in range(0, ROWS, BATCH):  # 7, 7, 7, 2 rows: the last one splits 1 + 1
        idx = perm[i : i + BATCH]
        yield Batch(TOKENS[idx], TARGETS[idx])


def token_loss(model, batch):
    logits = model(batch.tokens)  # (B, T, V)
    real = batch.tokens != 0  # (B, T)
    nll = torch.nn.functional.cross_entropy(logits[real], batch.targets[real], reduction="sum")
    count = int(real.sum())
    return nll / max(count, 1), count


def row_loss(model, batch):
    return model(batch.tokens).float().pow(2).mean()  # a mean over rows, no count


def make_trainer(run_dir, max_steps, loss=token_loss, **overrides):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(V, D), torch.nn.Tanh(), torch.nn.Linear(D, V))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    sched = make_scheduler(opt, "cosine", warmup_steps=2, total_steps=20, min_ratio=0.1)

    def validate():
        model.eval()
        with torch.no_grad():
            nll, count = token_loss(model, Batch(TOKENS[:5], TARGETS[:5]))
        return {"loss": float(nll)}

    settings = dict(max_steps=max_steps, log_every=1, eval_every=4, checkpoint_every=4, grad_clip=0.5, seed=3, quiet=True)
    settings.update(overrides)
    return Trainer(model, opt, loss, batches, run_dir, TrainConfig(**settings), scheduler=sched, validate=validate)


def records(run_dir, kind):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def weights(run_dir, which="last"):
    from safetensors.torch import load_file

    return load_file(str(run_dir / which / "weights.safetensors"))


def _assert_same_run(got_dir, want_dir, *, tol=1e-6):
    got, want = records(got_dir, "train"), records(want_dir, "train")
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for a, b in zip(got, want):
        assert a["loss"] == pytest.approx(b["loss"], rel=tol, abs=tol), (a, b)
        assert set(a) == set(b)  # the same fields (ex_per_s when counted, steps_per_s otherwise)
    # Scheduled validations (a run stopped early also validates where it stopped).
    got_v, want_v = ([r["loss"] for r in records(d, "valid") if not r["final"]] for d in (got_dir, want_dir))
    assert got_v == pytest.approx(want_v, rel=tol)
    wa, wb = weights(got_dir), weights(want_dir)
    assert sorted(wa) == sorted(wb) and not any(k.startswith("module.") for k in wa)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)


def _ddp_body(rank, world, root):
    root = pathlib.Path(root)
    # 1. Eight steps over two epochs (the 2-row last batch splits 1 + 1).
    result = make_trainer(root / "ddp", 8).fit()
    assert (result.step, result.epoch, result.stop_reason) == (8, 1, "max_steps")
    # 2. Stop at step 5 and resume to 8 on the same ranks.
    make_trainer(root / "part", 5).fit()
    make_trainer(root / "part", 8).fit(resume=True)
    # 3. A loss without count: rows weight the shards.
    make_trainer(root / "rows", 4, loss=row_loss).fit()
    # 4. A loss_fn that never calls the model's forward cannot be averaged: an error on every rank.
    def bypass(model, batch):
        emb, out = getattr(model, "0"), getattr(model, "2")  # reads pass through to the wrapped module
        return out(emb(batch.tokens)).pow(2).mean()

    with pytest.raises(ValueError, match="loss_fn must call model"):
        make_trainer(root / "bypass", 2, loss=bypass).fit()
    # 5. validate() failing on rank 0 fails every rank (no hang).
    t = make_trainer(root / "badval", 3, eval_every=1)
    t.validate = lambda: 1 / 0
    with pytest.raises((ZeroDivisionError, RuntimeError), match="division by zero"):
        t.fit()


def test_two_ranks_reproduce_the_single_process_run(ranks, tmp_path):
    make_trainer(tmp_path / "single", 8).fit()
    make_trainer(tmp_path / "single_rows", 4, loss=row_loss).fit()
    ranks(_ddp_body, 2, str(tmp_path))

    _assert_same_run(tmp_path / "ddp", tmp_path / "single")
    _assert_same_run(tmp_path / "part", tmp_path / "single")  # resumed at step 5
    _assert_same_run(tmp_path / "rows", tmp_path / "single_rows")
    # Only rank 0 wrote: one start event, and the rank states of both ranks in last/.
    events = [r["event"] for r in records(tmp_path / "ddp", "event")]
    assert events.count("start") == 1 and events[-1] == "stop"
    state = read_checkpoint(tmp_path / "ddp" / "last").state
    assert len(state["rng_by_rank"]) == 2
    assert not torch.equal(state["rng_by_rank"][0]["torch"], state["rng_by_rank"][1]["torch"])
    # A DDP checkpoint resumes in one process (no "module." prefix; another world size).
    make_trainer(tmp_path / "part", 10).fit(resume=True)
    make_trainer(tmp_path / "single", 10).fit(resume=True)
    _assert_same_run(tmp_path / "part", tmp_path / "single")


# --------------------------------------------------------------------------- helpers, one process


def test_shard_bounds_follow_tensor_split():
    for rows in (2, 3, 7, 11):
        for world in (1, 2, 3):
            if rows < world:
                continue
            pieces = torch.arange(rows).tensor_split(world)
            for r in range(world):
                start, stop = ddp.shard_bounds(rows, r, world)
                assert torch.arange(rows)[start:stop].tolist() == pieces[r].tolist()
    with pytest.raises(ValueError, match="a global batch of 1 rows cannot be split across 2 ranks"):
        ddp.shard_bounds(1, 0, 2)


def test_shard_batch_recurses_and_concatenates_back():
    Pair = namedtuple("Pair", "x y")
    batch = {"a": Pair(torch.arange(7), torch.ones(7, 3)), "b": [Batch(torch.zeros(7, 2), torch.ones(7, 2))], "n": 5,
             "scale": torch.tensor(2.0)}
    shards = [ddp.shard_batch(batch, r, 3) for r in range(3)]
    assert [s["a"].x.tolist() for s in shards] == [[0, 1, 2], [3, 4], [5, 6]]
    assert all(isinstance(s["a"], Pair) and isinstance(s["b"][0], Batch) and s["b"][0].name == "toy" for s in shards)
    assert all(s["n"] == 5 and s["scale"].item() == 2.0 for s in shards)
    assert torch.equal(torch.cat([s["a"].y for s in shards]), batch["a"].y)
    assert ddp.shard_batch(batch, 0, 1) is batch
    assert ddp.batch_rows(batch) == 7


def test_shard_batch_bad_input():
    with pytest.raises(ValueError, match=r"batch\[1\] has 3 rows \(dim 0\) but batch\[0\] has 7"):
        ddp.shard_batch((torch.zeros(7), torch.zeros(3)), 0, 2)
    with pytest.raises(ValueError, match="holds no tensor with a batch dimension"):
        ddp.batch_rows({"n": 3, "s": torch.tensor(1.0)})


def test_init_from_env_outside_a_launcher(monkeypatch):
    for name in ddp.TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)
    assert ddp.init_from_env() is False
    assert (ddp.get_rank(), ddp.get_world_size(), ddp.is_main_process(), ddp.is_distributed()) == (0, 1, True, False)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")
    assert ddp.init_from_env() is False  # a world of one needs no group
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="RANK and WORLD_SIZE must be integers"):
        ddp.init_from_env()
    assert ddp.broadcast_object({"x": 1}) == {"x": 1}
    ddp.barrier()  # a no-op outside a group


def test_default_backend_on_this_machine():
    assert ddp.default_backend() == ("nccl" if torch.cuda.is_available() else "gloo")


def test_python_dash_m_attnlab_runs_the_cli():
    import subprocess
    import sys

    from attnlab import __version__

    out = subprocess.run([sys.executable, "-m", "attnlab", "--version"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "WORLD_SIZE": "1"})
    assert out.returncode == 0 and out.stdout.strip() == f"attnlab {__version__}"
