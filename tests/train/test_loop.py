import json
import math
import random
import signal

import numpy as np
import pytest
import torch

from attnlab.train.checkpoint import read_checkpoint
from attnlab.train.loop import (
    CosineSchedule,
    InverseSqrtSchedule,
    TrainConfig,
    Trainer,
    make_scheduler,
)

N, D_IN, D_HID, D_OUT, BATCH = 23, 3, 7, 2, 5  # 5 batches per epoch, the last one of 3

_g = torch.Generator().manual_seed(0)
X = torch.randn(N, D_IN, generator=_g)
Y = X @ torch.randn(D_IN, D_OUT, generator=_g) + 0.1 * torch.randn(N, D_OUT, generator=_g)
X_VALID, Y_VALID = X[:7] + 0.05, Y[:7]


def batches(epoch, seed):
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(1000 * seed + epoch))
    for i in range(0, N, BATCH):
        idx = perm[i : i + BATCH]
        yield X[idx], Y[idx]


def make_model(seed):
    # Set every global RNG: a resumed run must not depend on what this process did before.
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(D_IN, D_HID), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(D_HID, D_OUT)
    )


def loss_fn(model, batch):
    x, y = batch
    mse = (model(x) - y).pow(2).mean()
    # Draw from python's and numpy's global RNGs too, so resuming must restore all three.
    return mse * (1 + 0.01 * random.random() + 0.01 * float(np.random.rand())), x.shape[0]


def validate_fn(model):
    def validate():
        model.eval()
        with torch.no_grad():
            loss = (model(X_VALID) - Y_VALID).pow(2).mean().item()
        return {"loss": loss, "noise": torch.rand(()).item()}  # consumes torch's RNG

    return validate


def make_trainer(run_dir, max_steps, *, init_seed=0, loss=loss_fn, data=batches, **overrides):
    model = make_model(init_seed)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    sched = make_scheduler(opt, "cosine", warmup_steps=2, total_steps=20, min_ratio=0.1)
    settings = dict(max_steps=max_steps, log_every=1, eval_every=4, checkpoint_every=3, grad_clip=0.5, seed=3, quiet=True)
    settings.update(overrides)
    validate = settings.pop("validate", validate_fn(model))
    return Trainer(
        model, opt, loss, data, run_dir, TrainConfig(**settings), scheduler=sched, validate=validate,
        resume_hint="attnlab train tiny --resume",
    )


def records(run_dir, kind):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def train_losses(run_dir):
    return {r["step"]: r["loss"] for r in records(run_dir, "train")}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    trainer = make_trainer(run_dir, 13)
    result = trainer.fit()
    return run_dir, trainer.model, result


def assert_same_run(run_dir, model, reference):
    ref_dir, ref_model, _ = reference
    ref_losses, losses = train_losses(ref_dir), train_losses(run_dir)
    assert sorted(losses) == list(range(1, 14))
    for step in ref_losses:
        assert losses[step] == pytest.approx(ref_losses[step], abs=1e-6, rel=0), step
    for p, q in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0)
    scheduled = lambda d: [v for r in records(d, "valid") if not r["final"] for v in (r["step"], r["loss"], r["noise"])]  # noqa: E731
    assert scheduled(run_dir) == pytest.approx(scheduled(ref_dir), abs=1e-6)


def test_uninterrupted_run_trains_and_logs(uninterrupted):
    run_dir, _, result = uninterrupted
    assert result.stop_reason == "max_steps" and result.step == 13 and result.epoch == 2
    losses = train_losses(run_dir)
    assert sum(losses[s] for s in (11, 12, 13)) < sum(losses[s] for s in (1, 2, 3))
    train = records(run_dir, "train")[0]
    assert {"loss", "lr", "ex_per_s", "grad_norm", "train_seconds", "epoch"} <= set(train)
    assert [r["step"] for r in records(run_dir, "valid")] == [4, 8, 12, 13]  # 13: the final one
    assert records(run_dir, "valid")[-1]["final"] is True
    assert read_checkpoint(run_dir / "last").state["progress"]["step"] == 13
    assert read_checkpoint(run_dir / "best").state["best_metric"] == result.best_metric


def test_split_run_equals_uninterrupted(tmp_path, uninterrupted):
    first = make_trainer(tmp_path, 6).fit()  # stops mid-epoch 1, with a final validation
    assert (first.stop_reason, first.step, first.epoch) == ("max_steps", 6, 1)
    trainer = make_trainer(tmp_path, 13, init_seed=123)  # other init: the checkpoint must overwrite it
    result = trainer.fit(resume=True)
    assert result.step == 13
    assert_same_run(tmp_path, trainer.model, uninterrupted)
    assert [r["event"] for r in records(tmp_path, "event")].count("resume") == 1


def test_ctrl_c_mid_step_saves_and_resume_is_exact(tmp_path, uninterrupted, capsys):
    calls = 0

    def interrupted_loss(model, batch):
        nonlocal calls
        calls += 1
        if calls == 8:
            model(batch[0])  # the interrupted step has already drawn dropout masks ...
            raise KeyboardInterrupt  # ... the rewind to the step boundary undoes that
        return loss_fn(model, batch)

    result = make_trainer(tmp_path, 13, loss=interrupted_loss).fit()
    assert result.stop_reason == "interrupted" and result.step == 7
    err = capsys.readouterr().err
    assert "Interrupted at step 7" in err and "Resume with: attnlab train tiny --resume" in err
    assert read_checkpoint(tmp_path / "last").state["progress"]["step"] == 7

    trainer = make_trainer(tmp_path, 13, init_seed=5)
    trainer.fit(resume=True)
    assert_same_run(tmp_path, trainer.model, uninterrupted)


def test_ctrl_c_during_the_update_finishes_it_first(tmp_path):
    # Validations at 5, 10: the Ctrl-C after update 5 also cuts off that step's validation.
    reference = make_trainer(tmp_path / "ref", 13, eval_every=5)
    reference = (tmp_path / "ref", reference.model, reference.fit())
    trainer = make_trainer(tmp_path / "run", 13, eval_every=5)
    calls = []

    def sigint_after_update(optimizer, args, kwargs):
        calls.append(1)
        if len(calls) == 5:
            # Inside the critical section: Python runs the handler at the next bytecode;
            # the update and its bookkeeping (scheduler, counters) must still complete.
            signal.raise_signal(signal.SIGINT)

    trainer.optimizer.register_step_post_hook(sigint_after_update)
    # Python's own Ctrl-C handler, as in a terminal; a test run started as a background
    # job (`make test &`) inherits SIGINT ignored, which the trainer rightly leaves alone.
    before_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        result = trainer.fit()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    finally:
        signal.signal(signal.SIGINT, before_int)
    assert result.stop_reason == "interrupted" and result.step == 5
    assert records(tmp_path / "run", "valid") == []
    resumed = make_trainer(tmp_path / "run", 13, init_seed=9, eval_every=5)
    resumed.fit(resume=True)
    assert [r["step"] for r in records(tmp_path / "run", "valid")] == [5, 10, 13]
    assert_same_run(tmp_path / "run", resumed.model, reference)


def test_sigterm_stops_like_ctrl_c_and_a_background_jobs_ignored_sigint_stays_ignored(tmp_path):
    # `kill PID` (or a scheduler's stop) must save last/ like Ctrl-C. A shell starts
    # background jobs with SIGINT ignored: the trainer leaves that as it is.
    trainer = make_trainer(tmp_path, 13)
    calls = []

    def sigterm_after_update(optimizer, args, kwargs):
        calls.append(1)
        if len(calls) == 3:
            signal.raise_signal(signal.SIGTERM)

    trainer.optimizer.register_step_post_hook(sigterm_after_update)
    before_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        result = trainer.fit()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # never touched
    finally:
        signal.signal(signal.SIGINT, before_int)
    assert result.stop_reason == "interrupted" and result.step == 3
    assert read_checkpoint(tmp_path / "last").state["progress"]["step"] == 3


def test_ctrl_c_during_validation_redoes_it_on_resume(tmp_path, uninterrupted):
    trainer = make_trainer(tmp_path, 13)
    inner, calls = trainer.validate, []

    def validate():
        calls.append(1)
        if len(calls) == 2:  # the step-8 validation
            torch.rand(5)
            raise KeyboardInterrupt
        return inner()

    trainer.validate = validate
    result = trainer.fit()
    assert result.stop_reason == "interrupted" and result.step == 8
    assert read_checkpoint(tmp_path / "last").state["progress"]["last_validated_step"] == 4
    resumed = make_trainer(tmp_path, 13, init_seed=9)
    resumed.fit(resume=True)
    assert_same_run(tmp_path, resumed.model, uninterrupted)


def test_early_stopping_with_patience(tmp_path):
    values = iter([1.0, 0.5, 0.6, 0.5, 0.7, 0.1])  # best at the 2nd; then 3 not strictly better
    trainer = make_trainer(
        tmp_path, 100, eval_every=2, patience=3, validate=lambda: {"loss": next(values)}, checkpoint_every=None
    )
    result = trainer.fit()
    assert result.stop_reason == "early_stopping"
    assert (result.step, result.best_step, result.best_metric) == (10, 4, 0.5)
    assert [r["best"] for r in records(tmp_path, "valid")] == [True, True, False, False, False]
    assert read_checkpoint(tmp_path / "best").state["progress"]["step"] == 4
    # Resuming an early-stopped run stops at once.
    again = make_trainer(tmp_path, 100, eval_every=2, patience=3, validate=lambda: {"loss": 0.0})
    assert again.fit(resume=True).step == 10


def test_higher_is_better_metric_selects_best(tmp_path):
    values = iter([10.0, 30.0, 20.0])
    result = make_trainer(
        tmp_path, 6, eval_every=2, select_metric="bleu", higher_is_better=True,
        validate=lambda: {"bleu": next(values), "loss": 1.0},
    ).fit()
    assert (result.best_metric, result.best_step) == (30.0, 4)


def test_epochs_validate_at_epoch_end(tmp_path):
    result = make_trainer(tmp_path, None, max_epochs=2, eval_every=None, checkpoint_every=None).fit()
    assert (result.stop_reason, result.step, result.epoch) == ("max_epochs", 10, 2)
    assert [r["step"] for r in records(tmp_path, "valid")] == [5, 10]  # no extra final one


def test_wall_clock_budget_is_a_total_over_resumes(tmp_path, monkeypatch):
    from attnlab.train import loop

    clock = iter(range(0, 10**6, 1))  # every reading of the clock advances it by 1 s
    monkeypatch.setattr(loop.time, "monotonic", lambda: float(next(clock)))
    result = make_trainer(tmp_path, 100, max_minutes=0.5).fit()
    assert result.stop_reason == "max_minutes" and 1 < result.step < 30 <= result.train_seconds
    again = make_trainer(tmp_path, 100, max_minutes=0.5).fit(resume=True)
    assert again.stop_reason == "max_minutes" and again.step == result.step


def test_unscheduled_stop_leaves_the_log_whole(tmp_path):
    make_trainer(tmp_path, 3, validate=None).fit()
    # A crash after step 3's checkpoint leaves a tail in the log; resuming drops it.
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"kind": "train", "step": 4, "loss": 9.0}) + "\n" + '{"kind": "tr')
    make_trainer(tmp_path, 5, validate=None).fit(resume=True)
    assert [r["step"] for r in records(tmp_path, "train")] == [1, 2, 3, 4, 5]
    assert train_losses(tmp_path)[4] != 9.0


def test_run_directory_guards(tmp_path):
    with pytest.raises(FileNotFoundError, match="cannot resume: no checkpoint"):
        make_trainer(tmp_path, 3).fit(resume=True)
    make_trainer(tmp_path, 2).fit()
    with pytest.raises(FileExistsError, match="already holds checkpoints; pass resume=True"):
        make_trainer(tmp_path, 3).fit()


def test_resume_detects_changed_data(tmp_path):
    make_trainer(tmp_path, 4, validate=None).fit()
    shorter = lambda epoch, seed: list(batches(epoch, seed))[:2]  # noqa: E731
    with pytest.raises(ValueError, match="now yields only 2 batches; the data or batching changed"):
        make_trainer(tmp_path, 6, data=shorter, validate=None).fit(resume=True)


def test_bad_inputs_have_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="set at least one of max_steps, max_epochs, max_minutes"):
        TrainConfig()
    with pytest.raises(ValueError, match="log_every must be > 0"):
        TrainConfig(max_steps=1, log_every=0)
    with pytest.raises(ValueError, match="grad_clip must be a positive number"):
        TrainConfig(max_steps=1, grad_clip=-1.0)
    with pytest.raises(ValueError, match="patience .* needs a validate callback"):
        make_trainer(tmp_path / "a", 3, patience=2, validate=None)
    with pytest.raises(ValueError, match="validate\\(\\) returned no 'bleu' .*it returned: loss, noise"):
        make_trainer(tmp_path / "b", 5, select_metric="bleu").fit()
    with pytest.raises(ValueError, match="loss_fn must return a scalar .*shape \\(5, 2\\)"):
        make_trainer(tmp_path / "c", 3, loss=lambda m, b: m(b[0])).fit()
    with pytest.raises(ValueError, match="does not require grad"):
        make_trainer(tmp_path / "d", 3, loss=lambda m, b: torch.tensor(1.0)).fit()
    with pytest.raises(FloatingPointError, match="loss is nan at step 1 .*not applied"):
        make_trainer(tmp_path / "e", 3, loss=lambda m, b: m(b[0]).sum() * float("nan")).fit()
    with pytest.raises(ValueError, match=r"batches\(0, 3\) yielded no batches"):
        make_trainer(tmp_path / "f", 3, data=lambda e, s: []).fit()


def test_bfloat16_autocast_runs_the_loss_in_mixed_precision(tmp_path):
    seen = []

    def loss(model, batch):
        x, y = batch
        out = model(x)  # the Linear layers run in bfloat16 under autocast
        seen.append((torch.is_autocast_enabled("cpu"), out.dtype))
        return (out.float() - y).pow(2).mean(), x.shape[0]

    trainer = make_trainer(tmp_path / "bf16", 20, loss=loss, autocast="bfloat16")
    result = trainer.fit()
    assert result.step == 20 and seen and all(s == (True, torch.bfloat16) for s in seen)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # weights stay float32
    assert not torch.is_autocast_enabled("cpu")
    losses = [r["loss"] for r in records(tmp_path / "bf16", "train")]
    assert sum(losses[-5:]) < 0.8 * sum(losses[:5])  # it learns
    plain = []
    make_trainer(tmp_path / "fp32", 1, loss=lambda m, b: (plain.append(torch.is_autocast_enabled("cpu")),
                                                        loss_fn(m, b))[1]).fit()
    assert plain == [False]
    with pytest.raises(ValueError, match="autocast must be one of None, 'bfloat16', got 'float16'"):
        TrainConfig(max_steps=1, autocast="float16")


def test_schedules():
    inv = InverseSqrtSchedule(warmup_steps=4)
    assert [inv(s) for s in (0, 3, 15)] == [0.25, 1.0, 0.5]  # (s+1)/4, peak, sqrt(4/16)
    cos = CosineSchedule(warmup_steps=2, total_steps=12, min_ratio=0.1)
    assert cos(0) == 0.5 and cos(2) == 1.0 and cos(12) == pytest.approx(0.1) and cos(50) == pytest.approx(0.1)
    assert cos(7) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = make_scheduler(opt, "inverse_sqrt", warmup_steps=4)
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.0 * math.sqrt(4 / 5)])
    with pytest.raises(ValueError, match="unknown schedule 'noam'; valid schedules: constant, cosine, inverse_sqrt"):
        make_scheduler(opt, "noam")
    with pytest.raises(ValueError, match="total_steps must be > warmup_steps"):
        CosineSchedule(warmup_steps=5, total_steps=5)
    with pytest.raises(ValueError, match="warmup_steps must be > 0"):
        InverseSqrtSchedule(warmup_steps=0)


def test_progress_bar_on_a_terminal_shows_loss_rate_and_lr(tmp_path, monkeypatch):
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    make_trainer(tmp_path / "a", 4, quiet=False, validate=None).fit()
    shown = screen.getvalue()
    assert "4/4" in shown and "loss=" in shown and "ex/s=" in shown and "lr=" in shown
    assert "training stopped (max_steps) at step 4" in shown

    quiet = Terminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    make_trainer(tmp_path / "b", 4, quiet=True, validate=None).fit()
    assert quiet.getvalue() == ""
