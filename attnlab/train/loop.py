"""A model-agnostic training loop that can stop anywhere and resume exactly.

Every ``attnlab train ...`` command builds a model, an optimizer, a ``loss_fn`` and a
``batches(epoch, seed)`` function, then hands them to :class:`Trainer`::

    trainer = Trainer(model, optimizer, loss_fn, batches, run_dir="runs/de-en",
                      config=TrainConfig(max_steps=20_000, grad_clip=1.0, eval_every=1000,
                                         select_metric="bleu", higher_is_better=True, patience=5),
                      scheduler=make_scheduler(optimizer, "inverse_sqrt", warmup_steps=4000),
                      validate=lambda: {"bleu": ..., "loss": ...})
    result = trainer.fit(resume=args.resume)

The run directory then holds ``last/`` and ``best/`` checkpoints (:mod:`.checkpoint`) and
``metrics.jsonl``: one JSON object per line, ``{"kind": "train" | "valid" | "event", "step": ...}``,
for reports and plots.

Exact resume. The data order of an epoch is a pure function ``batches(epoch, seed)``, so
the checkpointed position ``(epoch, batch_in_epoch)`` is enough to rebuild it and skip the
batches already trained on. Checkpoints are taken at step boundaries together with the
python/numpy/torch RNG states of that boundary, so a run stopped (by ``max_steps``,
``max_minutes`` or Ctrl-C) and resumed follows the same losses and reaches the same
weights as one that never stopped.

Ctrl-C: the optimizer/scheduler update and its bookkeeping are one critical section; a
Ctrl-C inside it is delivered right after it (a second Ctrl-C at once), so the model
never holds half an update. An interrupt anywhere else abandons the step (or validation)
in progress, rewinds the RNGs to the last step boundary, saves ``last/`` and returns with
``stop_reason == "interrupted"`` after printing how to resume.

Distributed data parallel. Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the
trainer joins the process group (:func:`attnlab.distributed.ddp.init_from_env`: gloo on
CPU, nccl on CUDA), wraps the model in ``DistributedDataParallel`` and gives each rank its
contiguous slice of every *global* batch (:func:`attnlab.distributed.ddp.shard_batch`), so
``batches`` stays the same function and N processes take the same steps as one. Each
rank's loss is weighted so that DDP's gradient average is the global mean: by
``count * world / global_count`` when ``loss_fn`` returns ``(loss, count)`` (a token-mean
over the whole batch), by ``rows * world / global_rows`` otherwise. The logged loss and
count are the global ones, so the log reads as the single-process run's would (to float
rounding). Everything that writes (log, progress bar, checkpoints, messages) goes through
``self.is_main`` (rank 0): ``validate`` runs on rank 0 only and its metrics are broadcast,
so early stopping agrees; checkpoints hold the unwrapped model and every rank's RNG
states, ``resume`` loads on all ranks. ``loss_fn`` must call ``model(...)`` (its forward)
for gradients to be averaged; a ``loss_fn`` that does not is an error under DDP.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import signal
import sys
import threading
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR

from .._checks import check_positive_int
from ..distributed import ddp as _ddp
from .checkpoint import (
    CheckpointManager,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)

__all__ = [
    "SCHEDULES",
    "ConstantSchedule",
    "CosineSchedule",
    "InverseSqrtSchedule",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "is_main_process",
    "make_scheduler",
]

METRICS_FILE = "metrics.jsonl"


def is_main_process() -> bool:
    """True unless this is a non-zero rank of an initialized ``torch.distributed`` group."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


# --------------------------------------------------------------------------------------
# Learning-rate schedules: multipliers of the optimizer's base lr, used through LambdaLR
# --------------------------------------------------------------------------------------


def _check_warmup(warmup_steps, *, allow_zero=True) -> None:
    check_positive_int(warmup_steps, "warmup_steps", allow_zero=allow_zero)


@dataclasses.dataclass(frozen=True)
class ConstantSchedule:
    """``lr(s) = base_lr * min(1, (s + 1) / warmup_steps)``: linear warmup, then constant."""

    warmup_steps: int = 0

    def __post_init__(self):
        _check_warmup(self.warmup_steps)

    def __call__(self, step: int) -> float:
        return 1.0 if self.warmup_steps == 0 else min(1.0, (step + 1) / self.warmup_steps)


@dataclasses.dataclass(frozen=True)
class InverseSqrtSchedule:
    """Linear warmup then inverse square-root decay (Vaswani et al., 2017, eq. 3):
    ``lr(s) = base_lr * min((s + 1) / w, sqrt(w / (s + 1)))``, peaking at ``base_lr``
    when ``s + 1 = w``. The paper's ``d_model^-0.5 * min(n^-0.5, n * w^-1.5)`` is this with
    ``base_lr = (d_model * w)^-0.5``."""

    warmup_steps: int

    def __post_init__(self):
        _check_warmup(self.warmup_steps, allow_zero=False)

    def __call__(self, step: int) -> float:
        n = step + 1
        return min(n / self.warmup_steps, math.sqrt(self.warmup_steps / n))


@dataclasses.dataclass(frozen=True)
class CosineSchedule:
    """Linear warmup then cosine decay to ``min_ratio * base_lr`` at ``total_steps``
    (Loshchilov & Hutter, 2017, without restarts):
    ``lr(s) = base_lr * (m + (1 - m) * (1 + cos(pi * p)) / 2)``, ``p = (s - w) / (total - w)``
    clipped to [0, 1]."""

    warmup_steps: int
    total_steps: int
    min_ratio: float = 0.0

    def __post_init__(self):
        _check_warmup(self.warmup_steps)
        check_positive_int(self.total_steps, "total_steps")
        if self.total_steps <= self.warmup_steps:
            raise ValueError(
                f"total_steps must be > warmup_steps, got total_steps={self.total_steps}, warmup_steps={self.warmup_steps}"
            )
        if not 0.0 <= float(self.min_ratio) <= 1.0:
            raise ValueError(f"min_ratio must be in [0, 1], got {self.min_ratio}")

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


#: Schedule classes by name (``make_scheduler(optimizer, "cosine", warmup_steps=..., total_steps=...)``).
SCHEDULES: dict[str, type] = {
    "constant": ConstantSchedule,
    "inverse_sqrt": InverseSqrtSchedule,
    "cosine": CosineSchedule,
}


def make_scheduler(optimizer: torch.optim.Optimizer, schedule="constant", **kwargs) -> LambdaLR:
    """A ``LambdaLR`` stepping once per optimizer step.

    Args:
        schedule: a name in :data:`SCHEDULES` (built with ``**kwargs``), or a schedule
            object ``step -> multiplier``. Its attributes are checkpointed (LambdaLR
            saves a callable object's ``__dict__``), so use the dataclasses here or an
            object with JSON-valued attributes, not a lambda.
    """
    if isinstance(schedule, str):
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; valid schedules: {', '.join(sorted(SCHEDULES))}")
        schedule = SCHEDULES[schedule](**kwargs)
    elif not callable(schedule):
        raise TypeError(f"schedule must be a name in {sorted(SCHEDULES)} or a callable, got {type(schedule).__name__}")
    elif kwargs:
        raise TypeError("keyword arguments apply only to a schedule given by name")
    return LambdaLR(optimizer, schedule)


# --------------------------------------------------------------------------------------
# Configuration and result
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How long and how to train; every count is in optimizer steps unless named otherwise.

    Stopping: ``max_steps``, ``max_epochs`` and ``max_minutes`` (training wall-clock time,
    summed over resumed runs) are totals for the run; training stops at the first one
    reached (at least one is required), or after ``patience`` validations in a row without
    a strictly better ``select_metric``.

    Validation runs every ``eval_every`` steps (None: at the end of each epoch) and once
    more when training stops; ``last/`` is saved every ``checkpoint_every`` steps (None: at
    the end of each epoch) and when training stops. ``log_every`` steps go to the log as
    one ``train`` record (mean loss, lr, throughput). ``unit`` names what the count
    returned by ``loss_fn`` counts (``"tok"``, ``"ex"``), for the throughput column.
    ``quiet`` hides the progress bar (also hidden when stderr is not a terminal) and
    informational messages. ``autocast="bfloat16"`` runs ``loss_fn`` under
    ``torch.autocast`` (mixed precision: matmuls in bfloat16, weights, gradients and the
    optimizer in float32); the backward runs outside it, as torch recommends.
    """

    max_steps: int | None = None
    max_epochs: int | None = None
    max_minutes: float | None = None
    grad_clip: float | None = None
    log_every: int = 50
    eval_every: int | None = None
    checkpoint_every: int | None = None
    select_metric: str = "loss"
    higher_is_better: bool = False
    patience: int | None = None
    seed: int = 0
    unit: str = "ex"
    quiet: bool = False
    autocast: str | None = None

    def __post_init__(self):
        if self.autocast not in AUTOCAST_DTYPES:
            raise ValueError(
                f"autocast must be one of {', '.join(repr(k) for k in AUTOCAST_DTYPES)}, got {self.autocast!r}"
            )
        for name in ("max_steps", "max_epochs", "eval_every", "checkpoint_every", "patience"):
            if getattr(self, name) is not None:
                check_positive_int(getattr(self, name), name)
        check_positive_int(self.log_every, "log_every")
        check_positive_int(self.seed, "seed", allow_zero=True)
        for name in ("max_minutes", "grad_clip"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
                raise ValueError(f"{name} must be a positive number or None, got {value!r}")
        if self.max_steps is None and self.max_epochs is None and self.max_minutes is None:
            raise ValueError("set at least one of max_steps, max_epochs, max_minutes (else training never stops)")
        if not isinstance(self.higher_is_better, bool):
            raise TypeError(f"higher_is_better must be a bool, got {self.higher_is_better!r}")
        if not isinstance(self.select_metric, str) or not self.select_metric:
            raise ValueError(f"select_metric must be a metric name, got {self.select_metric!r}")


#: ``TrainConfig.autocast`` values: None (float32 throughout) or a torch.autocast dtype.
AUTOCAST_DTYPES = {None: None, "bfloat16": torch.bfloat16}


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """Where :meth:`Trainer.fit` stopped and why (``stop_reason``: ``"max_steps"``,
    ``"max_epochs"``, ``"max_minutes"``, ``"early_stopping"`` or ``"interrupted"``)."""

    stop_reason: str
    step: int
    epoch: int
    best_metric: float | None
    best_step: int | None
    last_metrics: dict | None
    train_seconds: float
    run_dir: Path


@dataclasses.dataclass
class _Progress:
    """The trainer's checkpointed position; everything else is rebuilt from the inputs."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of `epoch` already trained on
    best_metric: float | None = None
    best_step: int | None = None
    bad_evals: int = 0  # validations in a row without improvement
    # The work after a step (log, scheduled validation) is skipped when already done for
    # that step, so a resumed run can redo what an interrupt cut short, and only that.
    last_logged_step: int = 0
    last_validated_step: int | None = None  # scheduled validations
    final_validated_step: int | None = None  # the extra validation when a run stops
    train_seconds: float = 0.0
    # The log interval in progress, so a resumed run logs the same means.
    interval_loss: float = 0.0
    interval_count: float = 0.0
    interval_steps: int = 0


# --------------------------------------------------------------------------------------
# Ctrl-C handling
# --------------------------------------------------------------------------------------


class _InterruptGuard:
    """Defers SIGINT (Ctrl-C) and SIGTERM (``kill``, a job scheduler's stop) raised inside
    :meth:`critical` to the end of that block; either one stops training like Ctrl-C, so
    the trainer saves ``last/`` and the run can resume.

    Installed only in the main thread and only over the default handlers (Python's for
    SIGINT, the system's for SIGTERM), so it never replaces a handler someone else set,
    nor un-ignores a SIGINT that a shell ignores for a background job.
    """

    _DEFAULTS = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}

    def __init__(self):
        self._depth = 0
        self._pending = False
        self._previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig, default in self._DEFAULTS.items():
                if signal.getsignal(sig) is default:
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}
        return False

    def _handle(self, signum, frame):
        if self._depth and not self._pending:
            self._pending = True  # a second Ctrl-C in the same block interrupts at once
            return
        self._pending = False
        raise KeyboardInterrupt

    @contextmanager
    def critical(self):
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        if self._depth == 0 and self._pending:
            self._pending = False
            raise KeyboardInterrupt


# --------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------


def _jsonable(value):
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return str(value)


class Trainer:
    """Trains ``model`` on ``batches`` with ``optimizer``; see the module docstring.

    Args:
        model: any ``nn.Module``.
        optimizer: a ``torch.optim.Optimizer`` over the model's parameters.
        loss_fn: ``loss_fn(model, batch) -> loss`` or ``-> (loss, count)``: a scalar loss
            tensor to minimize (a mean) and, optionally, how many items (tokens,
            examples) it averages over, which weights the logged mean and gives the
            throughput.
        batches: ``batches(epoch, seed) -> iterable of batches``, a pure function of its
            arguments (shuffle with a generator seeded from them, not the global RNG):
            resuming calls it again and skips the batches already consumed.
        run_dir: where ``last/``, ``best/`` and ``metrics.jsonl`` go.
        config: :class:`TrainConfig`.
        scheduler: optional LR scheduler stepped after every optimizer step (see
            :func:`make_scheduler`); it is checkpointed.
        validate: optional ``validate() -> {metric name: number}``; must contain
            ``config.select_metric``. The model is put back in train mode afterwards.
        model_config: saved with every checkpoint (default: ``model.config`` if present).
        resume_hint: the command that resumes this run, shown after Ctrl-C (e.g.
            ``"attnlab train translation ... --resume"``).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable[[torch.nn.Module, Any], Any],
        batches: Callable[[int, int], Iterable],
        run_dir,
        config: TrainConfig,
        *,
        scheduler=None,
        validate: Callable[[], Mapping[str, float]] | None = None,
        model_config=None,
        resume_hint: str | None = None,
    ):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        for name, fn in (("loss_fn", loss_fn), ("batches", batches)):
            if not callable(fn):
                raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
        if validate is not None and not callable(validate):
            raise TypeError(f"validate must be callable or None, got {type(validate).__name__}")
        if config.patience is not None and validate is None:
            raise ValueError("config.patience (early stopping) needs a validate callback")
        self.model = model
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.batches = batches
        self.run_dir = Path(run_dir)
        self.config = config
        self.scheduler = scheduler
        self.validate = validate
        self.model_config = model_config if model_config is not None else getattr(model, "config", None)
        self.resume_hint = resume_hint
        self.checkpoints = CheckpointManager(self.run_dir)
        _ddp.init_from_env()  # under torchrun: join the process group (idempotent)
        self.is_main = is_main_process()
        self.world = _ddp.get_world_size()
        self.rank = _ddp.get_rank()
        # Every rank builds the wrapper (a collective that broadcasts rank 0's weights);
        # self.model stays the plain module, so checkpoints have no "module." prefix.
        self._ddp_model = _ddp.wrap_model(model) if self.world > 1 else None
        self._agreed_seconds = 0.0  # train seconds all ranks agree on (max_minutes)
        self.progress = _Progress()
        self.last_metrics: dict | None = None
        self._guard = _InterruptGuard()
        self._snapshot: dict | None = None  # RNG states at the last step boundary
        self._counted = True
        self._step_lr = float("nan")
        self._step_grad_norm: float | None = None
        self._log_file = None
        self._bar = None

    # ---------------------------------------------------------------- public entry point

    def fit(self, resume: bool = False) -> TrainResult:
        """Train until a stop condition; ``resume=True`` continues ``run_dir/last`` exactly."""
        self._start(resume)
        reason = None
        try:
            with self._guard:
                try:
                    if resume and self.progress.step > 0:
                        self._catch_up()
                    reason = self._loop()
                    p = self.progress
                    if self.validate is not None and p.step not in (p.last_validated_step, p.final_validated_step):
                        self._validate(scheduled=False)
                    self._save_last()
                    self._event("stop", reason=reason)
                    self._say(f"training stopped ({reason}) at step {self.progress.step}; checkpoints in {self.run_dir}")
                except KeyboardInterrupt:
                    reason = "interrupted"
                    self._on_interrupt()
        finally:
            self._close()
        p = self.progress
        return TrainResult(
            stop_reason=reason,
            step=p.step,
            epoch=p.epoch,
            best_metric=p.best_metric,
            best_step=p.best_step,
            last_metrics=self.last_metrics,
            train_seconds=p.train_seconds,
            run_dir=self.run_dir,
        )

    # ---------------------------------------------------------------- setup / teardown

    def _start(self, resume: bool) -> None:
        cfg = self.config
        last = self.checkpoints.latest()
        if resume:
            if last is None:
                raise FileNotFoundError(
                    f"cannot resume: no checkpoint in {self.checkpoints.last_dir}; start without resume"
                )
            ckpt = load_checkpoint(last, self.model, self.optimizer, self.scheduler, restore_rng=True)
            saved = ckpt.state.get("progress")
            if not isinstance(saved, dict):
                raise ValueError(f"checkpoint {last} was not written by Trainer (no 'progress' in its state)")
            self.progress = _Progress(**saved)
            if self.world > 1:
                self._restore_rank_rng(ckpt.state.get("rng_by_rank"))
        else:
            if last is not None or self.checkpoints.best() is not None:
                raise FileExistsError(
                    f"{self.run_dir} already holds checkpoints; pass resume=True to continue that run, "
                    "or use another (or an emptied) run directory"
                )
            self.progress = _Progress()
            # Each rank its own stream (dropout differs per shard, as it would across the
            # rows of one process's batch); rank 0 matches a single-process run.
            seed = cfg.seed + self.rank
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed)
        self._snapshot = capture_rng_state()
        self._t0 = time.monotonic()
        self._seconds0 = self.progress.train_seconds
        self._agreed_seconds = self.progress.train_seconds
        self._interval_t0 = self._t0
        self.model.train()

        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            log_path = self.run_dir / METRICS_FILE
            if resume:
                self._truncate_log(log_path, self.progress.step)
            self._log_file = open(log_path, "a" if resume else "w", encoding="utf-8")
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=cfg.max_steps,
                initial=self.progress.step,
                unit="step",
                dynamic_ncols=True,
                file=sys.stderr,
                disable=cfg.quiet or not sys.stderr.isatty(),
            )
        self._event("resume" if resume else "start", config=dataclasses.asdict(cfg))
        if resume:
            self._say(
                f"resumed from {last} at step {self.progress.step} "
                f"(epoch {self.progress.epoch}, batch {self.progress.batch_in_epoch})"
            )

    @staticmethod
    def _truncate_log(path: Path, step: int) -> None:
        """Drop records written after the checkpoint we resume from (a crash's tail), so
        the log reads as one run."""
        if not path.exists():
            return
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except (json.JSONDecodeError, AttributeError):
                continue  # a line cut short by the crash
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        tmp.replace(path)

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    # ---------------------------------------------------------------- the loop

    def _stop_reason(self) -> str | None:
        cfg, p = self.config, self.progress
        if cfg.max_steps is not None and p.step >= cfg.max_steps:
            return "max_steps"
        if cfg.max_epochs is not None and p.epoch >= cfg.max_epochs:
            return "max_epochs"
        seconds = self._train_seconds() if self.world == 1 else self._agreed_seconds
        if cfg.max_minutes is not None and seconds >= 60.0 * cfg.max_minutes:
            return "max_minutes"
        if cfg.patience is not None and p.bad_evals >= cfg.patience:
            return "early_stopping"
        return None

    def _loop(self) -> str:
        p = self.progress
        while (reason := self._stop_reason()) is None:
            epoch, skip = p.epoch, p.batch_in_epoch
            it = iter(self.batches(epoch, self.config.seed))
            # The order is a pure function of (epoch, seed): skip what the checkpoint consumed.
            for i in range(skip):
                if next(it, _END) is _END:
                    raise ValueError(
                        f"cannot resume at batch {skip} of epoch {epoch}: batches({epoch}, {self.config.seed}) "
                        f"now yields only {i} batches; the data or batching changed since the checkpoint"
                    )
            trained = 0
            for batch in it:
                self._train_step(batch)
                trained += 1
                self._after_step()
                if (reason := self._stop_reason()) is not None:
                    return reason
            if trained == 0 and skip == 0:
                raise ValueError(f"batches({epoch}, {self.config.seed}) yielded no batches")
            self._end_epoch()
        return reason

    def _train_step(self, batch) -> None:
        p, cfg = self.progress, self.config
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            if self.world == 1:
                loss, count = self._split_loss(self.loss_fn(self.model, batch))
                value = loss.item()
            else:
                loss, value, count = self._distributed_loss(batch)
        if not math.isfinite(value):
            raise FloatingPointError(
                f"loss is {value} at step {p.step + 1} (epoch {p.epoch}); the update was not applied. "
                f"Lower the learning rate, set grad_clip, or check the batch; last checkpoint: "
                f"{self.checkpoints.latest()}"
            )
        loss.backward()
        grad_norm = None
        if cfg.grad_clip is not None:
            params = [q for q in self.model.parameters() if q.grad is not None]
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
        lr = self.optimizer.param_groups[0]["lr"]
        with self._guard.critical():
            self.optimizer.step()
            if self.scheduler is not None:
                self.scheduler.step()
            p.step += 1
            p.batch_in_epoch += 1
            p.interval_loss += value * count
            p.interval_count += count
            p.interval_steps += 1
            self._snapshot = capture_rng_state()
        self._step_lr, self._step_grad_norm = lr, grad_norm
        if self._bar is not None:
            self._bar.update(1)
            if not self._bar.disable:
                self._bar.set_postfix_str(self._postfix(), refresh=False)

    def _autocast(self):
        """``torch.autocast`` on the model's device type for ``config.autocast``, else a no-op."""
        dtype = AUTOCAST_DTYPES[self.config.autocast]
        if dtype is None:
            return nullcontext()
        device = next(self.model.parameters(), torch.empty(0)).device.type
        return torch.autocast(device_type=device, dtype=dtype)

    def _distributed_loss(self, batch) -> tuple[torch.Tensor, float, float]:
        """This rank's share of the global batch: ``(weighted local loss, global loss
        value, global count)``. DDP averages gradients over ranks, so weighting the local
        mean by ``local_count * world / global_count`` makes that average the gradient of
        the mean over the whole global batch (one all_reduce of three numbers)."""
        rows = _ddp.batch_rows(batch)
        start, stop = _ddp.shard_bounds(rows, self.rank, self.world)
        local = _ddp.shard_batch(batch, self.rank, self.world)
        ddp_model = self._ddp_model
        calls = ddp_model.forward_calls
        loss, count = self._split_loss(self.loss_fn(ddp_model, local), allow_zero_count=True)
        if ddp_model.forward_calls == calls:
            raise ValueError(
                "under torchrun, loss_fn must call model(...) (its forward): DistributedDataParallel averages the "
                "gradients of what runs through forward only, and this loss_fn never called it"
            )
        if not self._counted:
            count = float(stop - start)  # rows: the loss is a mean over examples
        stats = torch.tensor([loss.item() * count if count > 0 else 0.0, count, self._train_seconds()], dtype=torch.float64)  # sums over ranks
        torch.distributed.all_reduce(stats)
        total_loss, total_count, total_seconds = stats.tolist()
        if not total_count > 0:
            raise ValueError(f"the count returned by loss_fn must be > 0 over the global batch, got {total_count}")
        self._agreed_seconds = total_seconds / self.world
        weighted = loss * (count * self.world / total_count)
        if self._counted:
            return weighted, total_loss / total_count, total_count
        return weighted, total_loss / total_count, 1.0

    def _split_loss(self, out, *, allow_zero_count: bool = False) -> tuple[torch.Tensor, float]:
        if isinstance(out, tuple) and len(out) == 2:
            loss, count = out
            self._counted = True
        else:
            loss, count = out, 1.0
            self._counted = False
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            got = f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise ValueError(f"loss_fn must return a scalar (0-dim) loss tensor or (loss, count), got {got}")
        if not loss.requires_grad:
            raise ValueError("the loss returned by loss_fn does not require grad (computed under no_grad or detached?)")
        count = float(count.item() if isinstance(count, torch.Tensor) else count)
        if not (count > 0 or (allow_zero_count and count == 0)):
            raise ValueError(f"the count returned by loss_fn must be > 0, got {count}")
        return loss, count

    def _rate_name(self) -> str:
        return f"{self.config.unit}_per_s" if self._counted else "steps_per_s"

    def _postfix(self) -> str:
        p = self.progress
        if not p.interval_steps:
            return ""
        rate = p.interval_count / max(time.monotonic() - self._interval_t0, 1e-9)
        unit = self.config.unit if self._counted else "step"
        return f"loss={p.interval_loss / p.interval_count:.4f} {unit}/s={rate:,.0f} lr={self._step_lr:.2e}"

    def _after_step(self, *, save: bool = True) -> None:
        p, cfg = self.progress, self.config
        if p.step % cfg.log_every == 0 and p.last_logged_step != p.step:
            self._log_train()
        if (
            self.validate is not None
            and cfg.eval_every is not None
            and p.step % cfg.eval_every == 0
            and p.last_validated_step != p.step
        ):
            self._validate(scheduled=True)
        if save and cfg.checkpoint_every is not None and p.step % cfg.checkpoint_every == 0:
            self._save_last()

    def _end_epoch(self) -> None:
        p = self.progress
        with self._guard.critical():
            p.epoch += 1
            p.batch_in_epoch = 0
            self._snapshot = capture_rng_state()
        self._event("epoch_end", epoch_done=p.epoch - 1)
        self._after_epoch()

    def _after_epoch(self, *, save: bool = True) -> None:
        p, cfg = self.progress, self.config
        if self.validate is not None and cfg.eval_every is None and p.last_validated_step != p.step:
            self._validate(scheduled=True)
        if save and cfg.checkpoint_every is None:
            self._save_last()

    def _catch_up(self) -> None:
        """After a resume: finish the boundary work an interrupt cut short (a Ctrl-C right
        after an update, or during a validation); done work is skipped."""
        self._after_step(save=False)
        if self.progress.batch_in_epoch == 0:
            self._after_epoch(save=False)

    def _train_seconds(self) -> float:
        return self._seconds0 + (time.monotonic() - self._t0)

    # ---------------------------------------------------------------- validation

    def _validate(self, *, scheduled: bool) -> None:
        """Scheduled validations count for early stopping. The final, unscheduled one (at
        a stop) is logged and may update ``best/``, but leaves patience and the RNGs as
        they were, so a run stopped there and resumed matches one that never stopped."""
        p, cfg = self.progress, self.config
        metrics = self._run_validate()
        self.model.train()
        if not isinstance(metrics, Mapping):
            raise TypeError(f"validate() must return a dict of metrics, got {type(metrics).__name__}")
        if cfg.select_metric not in metrics:
            raise ValueError(
                f"validate() returned no {cfg.select_metric!r} (config.select_metric); "
                f"it returned: {', '.join(map(str, metrics)) or 'nothing'}"
            )
        value = float(metrics[cfg.select_metric])
        # The trainer's own best (restored from last/) decides, so a resumed run makes the
        # same choices as an uninterrupted one; NaN never improves.
        best = p.best_metric
        improved = not math.isnan(value) and (
            best is None or (value > best if cfg.higher_is_better else value < best)
        )
        with self._guard.critical():
            if improved and self.is_main:
                save_checkpoint(
                    self.checkpoints.best_dir,
                    self.model,
                    state={"best_metric": value, "progress": dataclasses.asdict(p), "metrics": dict(metrics)},
                    config=self.model_config,
                )
            if improved:
                p.best_metric, p.best_step = value, p.step
                p.bad_evals = 0
            elif scheduled:
                p.bad_evals += 1
            if scheduled:
                p.last_validated_step = p.step
            else:
                p.final_validated_step = p.step
            self.last_metrics = dict(metrics)
            self._log({"kind": "valid", "step": p.step, "epoch": p.epoch, **metrics, "best": improved, "final": not scheduled})
            if scheduled:
                self._snapshot = capture_rng_state()
            else:
                restore_rng_state(self._snapshot)
        marker = " (best)" if improved else ""
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, (int, float)) else f"{k}={v}" for k, v in metrics.items())
        self._say(f"step {p.step} valid: {shown}{marker}")

    def _run_validate(self):
        """``validate()`` on rank 0; under DDP its result (or its failure) is broadcast so
        that every rank makes the same best/patience decisions."""
        if self.world == 1:
            return self.validate()
        outcome = None
        if self.is_main:
            try:
                outcome = ("ok", self.validate())
            except BaseException as exc:  # noqa: BLE001 - re-raised below on every rank
                _ddp.broadcast_object(("error", f"{type(exc).__name__}: {exc}"))
                raise
        kind, value = _ddp.broadcast_object(outcome)
        if kind == "error":
            raise RuntimeError(f"validate() failed on rank 0: {value}")
        return value

    def _restore_rank_rng(self, states) -> None:
        """Each rank resumes its own RNG stream when the checkpoint has one for it (same
        number of processes); otherwise ranks > 0 start a fresh stream from (seed, step)."""
        if isinstance(states, list) and len(states) == self.world:
            restore_rng_state(states[self.rank])
        elif self.rank > 0:
            seed = (self.config.seed + self.rank) * 1_000_003 + self.progress.step
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)

    # ---------------------------------------------------------------- saving and logging

    def _save_last(self, *, collective: bool = True) -> None:
        """Rank 0 writes ``last/``; under DDP (``collective``) it gathers every rank's RNG
        state first and the others wait at a barrier until the checkpoint is complete.
        After Ctrl-C (``collective=False``: other ranks may be gone) rank 0 saves alone."""
        p = self.progress
        p.train_seconds = self._train_seconds()
        state = {"progress": dataclasses.asdict(p), "train_config": dataclasses.asdict(self.config)}
        distributed = self.world > 1 and collective
        if distributed:
            states = [None] * self.world
            torch.distributed.all_gather_object(states, self._snapshot)
            state["rng_by_rank"] = states
        if self.is_main:
            self.checkpoints.save_last(
                self.model,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                state=state,
                config=self.model_config,
            )
        if distributed:
            _ddp.barrier()

    def _on_interrupt(self) -> None:
        """Rewind to the last step boundary (the step in progress is dropped) and save."""
        p = self.progress
        restore_rng_state(self._snapshot)
        self._save_last(collective=False)
        self._event("interrupt")
        hint = self.resume_hint or "Trainer.fit(resume=True) with the same run_dir"
        if self.is_main:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            print(
                f"\nInterrupted at step {p.step} (epoch {p.epoch}); checkpoint saved to "
                f"{self.checkpoints.last_dir}. Resume with: {hint}",
                file=sys.stderr,
            )

    def _log_train(self) -> None:
        p = self.progress
        if not p.interval_steps:
            return
        now = time.monotonic()
        record = {
            "kind": "train",
            "step": p.step,
            "epoch": p.epoch,
            "loss": p.interval_loss / p.interval_count,
            "lr": self._step_lr,
            self._rate_name(): p.interval_count / max(now - self._interval_t0, 1e-9),
            "train_seconds": self._train_seconds(),
        }
        if self._step_grad_norm is not None:
            record["grad_norm"] = self._step_grad_norm
        self._log(record)
        p.interval_loss = p.interval_count = 0.0
        p.interval_steps = 0
        p.last_logged_step = p.step
        self._interval_t0 = now

    def _event(self, event: str, **fields) -> None:
        self._log({"kind": "event", "event": event, "step": self.progress.step, "epoch": self.progress.epoch, **fields})

    def _log(self, record: dict) -> None:
        if self._log_file is not None:
            self._log_file.write(json.dumps(record, default=_jsonable) + "\n")
            self._log_file.flush()

    def _say(self, message: str) -> None:
        if self.is_main and not self.config.quiet:
            if self._bar is not None and not self._bar.disable:
                self._bar.write(message, file=sys.stderr)
            else:
                print(message, file=sys.stderr)


_END = object()
