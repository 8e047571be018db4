"""Image classification on Fashion-MNIST: ``attnlab train vision`` and ``attnlab experiment cnn-vs-vit``.

    attnlab train vision --model vit --out runs/vit --steps 1000
    attnlab train vision --out runs/vit --resume --steps 2000        # 1000 more steps
    attnlab experiment cnn-vs-vit --out runs/cnn-vs-vit              # 12 runs of 200 steps (see docs/vision.md)
    attnlab experiment cnn-vs-vit --quick                            # 6 runs of 30 steps

Models (:data:`VISION_MODELS`): ``vit`` (:class:`attnlab.models.vit.ViT`, global
attention), ``local-vit`` (the same ViT, each patch attending only its 3 x 3
neighbourhood of patches) and ``cnn`` (:class:`attnlab.models.cnn.CNN`), all about
0.13-0.14 M parameters at their defaults.

A run directory holds::

    run.json          model name and config, data selection, training options
    last/  best/      checkpoints (best/: highest validation accuracy; none without validation)
    metrics.jsonl     the training log (loss, images/s, validation accuracy per evaluation)
    results.json      test accuracy (overall and per class) of the final weights
    rollout.png       attention rollout (Abnar & Zuidema 2020) over chosen test images (ViTs)

Data: :func:`attnlab.data.fashion_mnist.load_fashion_mnist` (the Debian package
``dataset-fashion-mnist``, or ``--data DIR``). The 60,000 training images are put in one
fixed random order (``split_seed``); the first ``valid_size`` are the validation set and
the next ``train_size`` the training set, so smaller training sets are subsets of larger
ones. The test set is the official 10,000 (or its first ``test_size``). No augmentation.

The experiment trains every model on every training-set size for the SAME number of
optimizer steps (batches of 128), so a small set is seen for many epochs and the full
set for less than one: the budget is compute, not epochs. It tests the claim that a
convolution is self-attention restricted to a small receptive field (Cordonnier et al.
2020), so with little data the CNN's built-in locality wins and with more data
self-attention catches up (Dosovitskiy et al. 2021, §4.3/Fig. 3).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Sequence

from ._argtypes import add_precision_argument, autocast_of, nonnegative_int, positive_float, positive_int
from ._io import check_output_path, write_json_atomic, write_text_atomic

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .train.loop import TrainResult

__all__ = [
    "RUN_FILE",
    "RESULTS_FILE",
    "ROLLOUT_FILE",
    "VISION_MODELS",
    "MODEL_NAMES",
    "EXPERIMENT_SIZES",
    "VisionData",
    "VisionOptions",
    "VisionRun",
    "ExperimentResult",
    "build_vision_model",
    "load_vision_data",
    "evaluate_accuracy",
    "draw_rollout",
    "train_vision",
    "crossings",
    "run_cnn_vs_vit",
    "register",
]

RUN_FILE = "run.json"
RESULTS_FILE = "results.json"
ROLLOUT_FILE = "rollout.png"
POINT_FILE = "point.json"  # an experiment point's result, so a re-run need not re-evaluate it
#: model name -> (config module path, config class, model class, fixed config fields)
VISION_MODELS = {
    "cnn": ("attnlab.models.cnn", "CNNConfig", "CNN", {}),
    "local-vit": ("attnlab.models.vit", "ViTConfig", "ViT", {"attention": "local"}),
    "vit": ("attnlab.models.vit", "ViTConfig", "ViT", {"attention": "global"}),
}
MODEL_NAMES = tuple(VISION_MODELS)
#: Training-set sizes of the experiment (the last is the whole training set).
EXPERIMENT_SIZES = (1000, 5000, 20000, 60000)
EXPERIMENT_STEPS = 200
QUICK = {"sizes": (500, 2000), "steps": 30, "test_size": 1000}
_LIMITS = ("steps", "epochs", "minutes")
_DEFAULT_ROLLOUT = tuple(range(8))
_EVAL_BATCH = 500


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class VisionData:
    """Which images a run uses (saved in ``run.json``).

    Args:
        root: folder with the four ``*-ubyte.gz`` files; ``None``: the Debian package's.
        train_size: training images (``None``: all left after the validation set).
        valid_size: validation images, taken from the training split (0: no validation).
        test_size: test images, the first of the official test split (``None``: all).
        split_seed: seed of the fixed order of the training split.
    """

    root: str | None = None
    train_size: int | None = None
    valid_size: int = 5000
    test_size: int | None = None
    split_seed: int = 0


@dataclass(frozen=True)
class VisionOptions:
    """How a model is trained (limits are totals over resumed runs; at least one is needed).

    AdamW (Loshchilov & Hutter 2019) at ``lr`` with ``weight_decay``, linear warmup over
    ``warmup`` steps, then constant or cosine decay to 0 at ``steps`` ("cosine" needs
    ``steps``). Validation (when the data has a validation set) and ``last/`` every
    ``eval_every`` steps and at the end.
    """

    steps: int | None = None
    epochs: int | None = None
    minutes: float | None = None
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 50
    schedule: str = "cosine"
    grad_clip: float = 1.0
    eval_every: int = 200
    seed: int = 0
    quiet: bool = False
    precision: str = "float32"


class VisionRun(NamedTuple):
    """What :func:`train_vision` returns."""

    out: Path
    model_name: str
    parameters: int
    result: "TrainResult"
    test_accuracy: float
    test_loss: float
    valid_accuracy: float | None
    rollout_path: Path | None
    record: dict


def _check_run_record(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path.parent} holds no vision run ({RUN_FILE} missing)")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(record, dict) or record.get("task") != "vision":
        raise ValueError(f"{path} was not written by `attnlab train vision` (no \"task\": \"vision\")")
    return record


# ----------------------------------------------------------------------------- models


def build_vision_model(name: str, **fields):
    """``(config, model)`` of model ``name`` in :data:`VISION_MODELS` with config ``fields``.

    Raises ValueError for an unknown name, a field the model does not have, or a field
    its name fixes (``attention`` of "vit"/"local-vit").
    """
    import importlib

    if name not in VISION_MODELS:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(MODEL_NAMES)}")
    module_name, config_name, model_name, fixed = VISION_MODELS[name]
    module = importlib.import_module(module_name)
    config_cls, model_cls = getattr(module, config_name), getattr(module, model_name)
    valid = {f.name for f in dataclasses.fields(config_cls)} - {"name"} - set(fixed)
    unknown = sorted(set(fields) - valid)
    if unknown:
        raise ValueError(
            f"model {name!r} has no setting {', '.join(unknown)}; its settings: {', '.join(sorted(valid))}"
        )
    config = config_cls(**{**fields, **fixed})
    return config, model_cls(config)


def _logits(model, images):
    out = model(images)
    return out.logits if hasattr(out, "logits") else out  # ViT -> ViTOutput, CNN -> tensor


# ----------------------------------------------------------------------------- data


class _Split(NamedTuple):
    images: "torch.Tensor"  # (N, 1, H, W) float32, normalized
    labels: "torch.Tensor"  # (N,) int64
    raw: object  # (N, H, W) uint8 numpy, for pictures


def load_vision_data(data: VisionData) -> dict[str, _Split]:
    """``{"train", "valid", "test"}`` splits of ``data`` (see the module docstring)."""
    import numpy as np
    import torch

    from .data.fashion_mnist import load_fashion_mnist, normalize_images

    train = load_fashion_mnist("train", data.root)
    test = load_fashion_mnist("test", data.root)
    n = train.images.shape[0]
    for name, value in (("valid_size", data.valid_size), ("train_size", data.train_size), ("test_size", data.test_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    if data.valid_size >= n:
        raise ValueError(f"valid_size ({data.valid_size}) must be smaller than the {n} training images")
    left = n - data.valid_size
    train_size = left if data.train_size is None else data.train_size
    if train_size < 1 or train_size > left:
        raise ValueError(
            f"train_size must be in [1, {left}] ({n} training images minus valid_size={data.valid_size}), "
            f"got {train_size}"
        )
    test_size = test.images.shape[0] if data.test_size is None else data.test_size
    if not 1 <= test_size <= test.images.shape[0]:
        raise ValueError(f"test_size must be in [1, {test.images.shape[0]}], got {test_size}")
    order = np.random.default_rng(data.split_seed).permutation(n)
    parts = {
        "valid": (train, order[: data.valid_size]),
        "train": (train, order[data.valid_size : data.valid_size + train_size]),
        "test": (test, np.arange(test_size)),
    }
    out = {}
    for split, (source, idx) in parts.items():
        raw = source.images[idx]  # (n, H, W) uint8
        out[split] = _Split(normalize_images(raw), torch.as_tensor(source.labels[idx]), raw)
    return out


# ----------------------------------------------------------------------------- evaluation


def evaluate_accuracy(model, images, labels, *, batch_size: int = _EVAL_BATCH, num_classes: int | None = None) -> dict:
    """Accuracy, mean cross-entropy and per-class accuracy of ``model`` (put in eval mode).

    Shape: images (N, C, H, W) float, labels (N,) int64.
    """
    import torch
    import torch.nn.functional as F

    if images.shape[0] != labels.shape[0] or images.shape[0] == 0:
        raise ValueError(f"images and labels must hold the same number (>= 1) of examples, got "
                         f"{images.shape[0]} and {labels.shape[0]}")
    model.eval()
    correct = 0
    loss = 0.0
    preds = []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            x, y = images[start : start + batch_size], labels[start : start + batch_size]
            logits = _logits(model, x)  # (b, num_classes)
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            pred = logits.argmax(-1)  # (b,)
            correct += int((pred == y).sum())
            preds.append(pred)
    pred = torch.cat(preds)
    k = num_classes or int(labels.max()) + 1
    per_class = []
    for c in range(k):
        sel = labels == c
        per_class.append(float((pred[sel] == c).float().mean()) if bool(sel.any()) else None)
    n = images.shape[0]
    return {"accuracy": correct / n, "loss": loss / n, "per_class": per_class, "examples": n}


def draw_rollout(model, split: _Split, indices: Sequence[int], path, *, title: str | None = None):
    """Attention rollout of a ViT over the test images ``indices``, saved to ``path``."""
    import torch

    from .data.fashion_mnist import CLASSES
    from .viz.rollout import attention_rollout, plot_rollout, rollout_patch_maps

    n = split.images.shape[0]
    bad = [i for i in indices if not 0 <= i < n]
    if bad:
        raise ValueError(f"--rollout-images: index {bad[0]} is out of range; the test set has {n} images (0..{n - 1})")
    idx = torch.as_tensor(list(indices), dtype=torch.long)
    model.eval()
    with torch.no_grad():
        out = model(split.images[idx], need_weights=True)  # logits (n, K), attentions (n, L, H, T, T)
    grid = model.config.grid
    maps = rollout_patch_maps(attention_rollout(out.attentions), grid, grid)  # (n, grid, grid)
    pred = out.logits.argmax(-1).tolist()
    true = split.labels[idx].tolist()
    name = lambda c: CLASSES[c] if c < len(CLASSES) else str(c)  # noqa: E731
    titles = [f"{name(t)}\n(pred: {name(p)})" if p != t else name(t) for t, p in zip(true, pred)]
    plot_rollout(split.raw[idx.numpy()], maps, titles, path, suptitle=title)
    return Path(path)


# ----------------------------------------------------------------------------- training


def _holds_run(out: Path) -> bool:
    return (out / RUN_FILE).exists() or (out / "last").exists()


def train_vision(
    out,
    model: str | None = "vit",
    *,
    sizes: dict | None = None,
    options: VisionOptions = VisionOptions(steps=1000),
    data: VisionData = VisionData(),
    resume: bool = False,
    rollout: Sequence[int] | None = _DEFAULT_ROLLOUT,
    splits: dict | None = None,
    resume_hint: str | None = None,
) -> VisionRun:
    """Train a vision model into the run directory ``out`` and score it on the test set.

    A new run writes ``run.json`` and trains; ``resume=True`` continues the run in ``out``
    exactly where it stopped (model, data and options from ``run.json``; only the limits
    ``steps``/``epochs``/``minutes`` and ``quiet`` of ``options`` are taken, as new totals).
    A finished run resumed with the same limits is only re-evaluated.

    Args:
        out: the run directory.
        model: a name of :data:`MODEL_NAMES` (when resuming: ``None`` or the run's own).
        sizes: config fields for :func:`build_vision_model` (e.g. ``{"d_model": 32}``).
        options, data: see :class:`VisionOptions`, :class:`VisionData`.
        rollout: test-image indices for ``rollout.png`` (ViT models only); ``None`` or
            empty: none.
        splits: already loaded :func:`load_vision_data` of ``data``, to share between runs.

    Returns:
        :class:`VisionRun` (``result.stop_reason`` is ``"interrupted"`` after Ctrl-C; the
        test accuracy is then that of the weights so far).
    """
    import torch
    import torch.nn.functional as F

    from .models.registry import count_parameters
    from .train.loop import TrainConfig, Trainer, make_scheduler

    out = Path(out)
    limits = {k: getattr(options, k) for k in _LIMITS}
    if resume:
        record = _check_run_record(out / RUN_FILE)
        if model is not None and model != record["model"]:
            raise ValueError(f"--model {model}: the run in {out} trains {record['model']}; leave --model out to resume it")
        model = record["model"]
        data = VisionData(**record["data"])
        options = dataclasses.replace(VisionOptions(**record["train"]), **limits, quiet=options.quiet)
        sizes = {k: v for k, v in record["config"].items() if k != "name" and k not in VISION_MODELS[model][3]}
    else:
        if _holds_run(out):
            raise FileExistsError(
                f"--out {out} already holds a training run; add --resume to continue it, or choose another directory"
            )
        if model is None:
            raise ValueError("model is required for a new run")
        if model not in VISION_MODELS:
            raise ValueError(f"unknown model {model!r}; valid models: {', '.join(MODEL_NAMES)}")
    if all(v is None for v in limits.values()):
        raise ValueError("give a training limit: --steps, --epochs or --minutes")
    if options.schedule not in ("constant", "cosine"):
        raise ValueError(f"unknown schedule {options.schedule!r}; valid schedules: constant, cosine")
    if options.schedule == "cosine" and options.steps is None:
        raise ValueError("--schedule cosine needs --steps (the length of its decay); or use --schedule constant")
    if splits is None:
        splits = load_vision_data(data)
    train, valid, test = splits["train"], splits["valid"], splits["test"]
    _, channels, height, width = train.images.shape
    if height != width:
        raise ValueError(f"images must be square, got {height} x {width}")
    num_classes = 10
    fields = {"image_size": height, "in_channels": channels, "num_classes": num_classes, **(sizes or {})}

    torch.manual_seed(options.seed)  # fixes the initial weights; the trainer seeds the rest
    config, net = build_vision_model(model, **fields)
    n_params = count_parameters(net)
    record = {
        "task": "vision",
        "model": model,
        "config": dataclasses.asdict(config),
        "parameters": n_params,
        "data": dataclasses.asdict(data),
        "train": dataclasses.asdict(options),
        "train_images": int(train.images.shape[0]),
        "valid_images": int(valid.images.shape[0]),
        "test_images": int(test.images.shape[0]),
        "threads": torch.get_num_threads(),
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(record, out / RUN_FILE)

    x_train, y_train = train.images, train.labels
    batch_size = options.batch_size

    def batches(epoch: int, seed: int):
        # A pure function of (epoch, seed): the trainer rebuilds it to resume mid-epoch.
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        perm = torch.randperm(x_train.shape[0], generator=g)
        for start in range(0, x_train.shape[0], batch_size):
            idx = perm[start : start + batch_size]
            yield x_train[idx], y_train[idx]  # (b, C, H, W), (b,)

    def loss_fn(m, batch):
        x, y = batch
        return F.cross_entropy(_logits(m, x), y), int(y.shape[0])

    def validate_accuracy() -> dict:
        r = evaluate_accuracy(net, valid.images, valid.labels, num_classes=num_classes)
        return {"accuracy": r["accuracy"], "loss": r["loss"]}

    validate = validate_accuracy if valid.images.shape[0] else None

    optimizer = torch.optim.AdamW(net.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    sched_kwargs = {"warmup_steps": options.warmup}
    if options.schedule == "cosine":
        sched_kwargs["total_steps"] = max(options.steps, options.warmup + 1)
    scheduler = make_scheduler(optimizer, options.schedule, **sched_kwargs)
    train_config = TrainConfig(
        max_steps=options.steps,
        max_epochs=options.epochs,
        max_minutes=options.minutes,
        grad_clip=options.grad_clip,
        log_every=min(50, options.eval_every),
        eval_every=options.eval_every,
        checkpoint_every=options.eval_every,
        select_metric="accuracy",
        higher_is_better=True,
        seed=options.seed,
        unit="img",
        quiet=options.quiet,
        autocast=autocast_of(options.precision),
    )
    trainer = Trainer(net, optimizer, loss_fn, batches, out, train_config, scheduler=scheduler, validate=validate,
                      model_config=config, resume_hint=resume_hint or f"attnlab train vision --out {out} --resume")
    result = trainer.fit(resume=resume)

    scores = evaluate_accuracy(net, test.images, test.labels, num_classes=num_classes)
    valid_acc = None if result.last_metrics is None else result.last_metrics.get("accuracy")
    rollout_path = None
    if rollout and model != "cnn":
        rollout_path = draw_rollout(
            net, test, list(rollout), out / ROLLOUT_FILE,
            title=f"{model}: attention rollout, step {result.step}, test accuracy {scores['accuracy']:.3f}",
        )
    results = {
        "model": model,
        "parameters": n_params,
        "step": result.step,
        "epoch": result.epoch,
        "stop_reason": result.stop_reason,
        "train_images": record["train_images"],
        "train_seconds": round(result.train_seconds, 1),
        "test_accuracy": scores["accuracy"],
        "test_loss": scores["loss"],
        "test_images": scores["examples"],
        "test_per_class": scores["per_class"],
        "valid_accuracy": valid_acc,
        "weights": "final (last/)",
    }
    write_json_atomic(results, out / RESULTS_FILE)
    return VisionRun(out, model, n_params, result, scores["accuracy"], scores["loss"], valid_acc, rollout_path, record)


# ----------------------------------------------------------------------------- experiment


class ExperimentResult(NamedTuple):
    """``accuracy[model][size]`` test accuracy; ``seconds[model][size]`` wall time of that
    point; ``crossings``: :func:`crossings` of every pair; ``wall_seconds``: the whole run."""

    accuracy: dict
    seconds: dict
    crossings: list
    wall_seconds: float
    out: Path


def crossings(sizes: Sequence[int], a: Sequence[float], b: Sequence[float]) -> list[float]:
    """Training-set sizes where curve ``a - b`` changes sign, interpolated linearly in
    ``log(size)`` between the two measured sizes around each change (a tie at a measured
    size counts as a crossing there).

    Shape: sizes, a, b of equal length, sizes increasing.
    """
    if not (len(sizes) == len(a) == len(b)):
        raise ValueError(f"sizes, a and b must have the same length, got {len(sizes)}, {len(a)}, {len(b)}")
    if any(s1 >= s2 for s1, s2 in zip(sizes, sizes[1:])) or any(s <= 0 for s in sizes):
        raise ValueError(f"sizes must be positive and increasing, got {list(sizes)}")
    d = [x - y for x, y in zip(a, b)]
    out: list[float] = []
    for i in range(len(d)):
        if d[i] == 0 and (i == 0 or d[i - 1] != 0):
            out.append(float(sizes[i]))
        if i + 1 < len(d) and d[i] * d[i + 1] < 0:
            la, lb = math.log(sizes[i]), math.log(sizes[i + 1])
            t = d[i] / (d[i] - d[i + 1])
            out.append(math.exp(la + t * (lb - la)))
    return out


def _describe(sizes, acc, m1: str, m2: str) -> dict:
    a = [acc[m1][s] for s in sizes]
    b = [acc[m2][s] for s in sizes]
    cross = crossings(sizes, a, b)
    diffs = [round(100 * (x - y), 2) for x, y in zip(a, b)]
    if cross:
        where = ", ".join(f"~{c:,.0f}" for c in cross)
        text = f"{m1} - {m2} changes sign near {where} training images (differences in points: {diffs})"
    else:
        lead = m1 if diffs[0] > 0 else m2
        text = f"no crossing: {lead} is ahead at every size (differences {m1} - {m2} in points: {diffs})"
    return {"pair": [m1, m2], "crossings": cross, "difference_points": diffs, "text": text}


def plot_experiment(sizes, accuracy: dict, path, *, title: str | None = None):
    """Test accuracy against training-set size (log scale), one line per model."""
    from matplotlib.figure import Figure

    from .viz.heatmap import save_figure

    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    styles = {"cnn": ("tab:blue", "s"), "local-vit": ("tab:green", "^"), "vit": ("tab:orange", "o")}
    for name, acc in accuracy.items():
        color, marker = styles.get(name, (None, "o"))
        ys = [100 * acc[s] for s in sizes]
        ax.plot(sizes, ys, marker=marker, color=color, label=name)
        for s, y in zip(sizes, ys):
            ax.annotate(f"{y:.1f}", (s, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7,
                        color=color)
    ax.set_xscale("log")
    ax.set_xticks(list(sizes), labels=[f"{s:,}" for s in sizes])
    ax.minorticks_off()
    ax.set_xlabel("training images (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title, fontsize="medium")
    save_figure(fig, path)
    return fig


def experiment_markdown(sizes, res: ExperimentResult, command: str, steps: int, batch_size: int, params: dict) -> str:
    models = list(res.accuracy)
    lines = [
        "| training images | " + " | ".join(f"{m} ({params[m] / 1e3:.0f} k params)" for m in models) + " |",
        "|---:|" + "---:|" * len(models),
    ]
    for s in sizes:
        best = max(res.accuracy[m][s] for m in models)
        cells = [(f"**{100 * res.accuracy[m][s]:.2f}**" if res.accuracy[m][s] == best else f"{100 * res.accuracy[m][s]:.2f}")
                 for m in models]
        lines.append(f"| {s:,} | " + " | ".join(cells) + " |")
    epochs = ", ".join(f"{s:,}: {steps * batch_size / s:.1f}" for s in sizes)
    total = sum(v for sec in res.seconds.values() for v in sec.values())
    text = [
        f"Test accuracy (%) on Fashion-MNIST test images after {steps} optimizer steps of {batch_size} images "
        f"for every point (epochs per size: {epochs}).",
        "",
        *lines,
        "",
        *[f"- {c['text']}" for c in res.crossings],
        "",
        f"Command: `{command}`; the points took {total / 60:.1f} min of wall time in all "
        f"(per point: train + test evaluation).",
    ]
    return "\n".join(text) + "\n"


def run_cnn_vs_vit(
    out="runs/cnn-vs-vit",
    *,
    sizes: Sequence[int] = EXPERIMENT_SIZES,
    models: Sequence[str] = MODEL_NAMES,
    steps: int = EXPERIMENT_STEPS,
    options: VisionOptions | None = None,
    root: str | None = None,
    test_size: int | None = None,
    split_seed: int = 0,
    plot=None,
    rollout: Sequence[int] | None = _DEFAULT_ROLLOUT,
    command: str = "attnlab experiment cnn-vs-vit",
    print_fn=print,
) -> ExperimentResult:
    """Train every model on every training-set size for ``steps`` steps; test accuracy table and plot.

    One run directory per point, ``OUT/<model>-<size>``; existing ones are resumed (a
    finished one is only re-evaluated). Writes ``OUT/results.json``, ``OUT/cnn_vs_vit.md``
    and the plot (``plot``, default ``OUT/cnn_vs_vit.png``). No validation set (``60000``
    is the whole training split); every point reports its final weights.
    """
    import torch

    out = Path(out)
    sizes = sorted({int(s) for s in sizes})
    if not sizes or sizes[0] < 1:
        raise ValueError(f"sizes must be positive training-set sizes, got {sizes}")
    bad = [m for m in models if m not in VISION_MODELS]
    if bad or not models:
        raise ValueError(f"unknown model(s) {', '.join(bad) or '(none given)'}; valid models: {', '.join(MODEL_NAMES)}")
    options = dataclasses.replace(options or VisionOptions(), steps=steps, epochs=None, minutes=None)
    plot = out / "cnn_vs_vit.png" if plot is None else Path(plot)
    out.mkdir(parents=True, exist_ok=True)
    check_output_path(plot, "--plot")
    started = time.monotonic()
    load_before = _loadavg()
    accuracy: dict = {m: {} for m in models}
    seconds: dict = {m: {} for m in models}
    params: dict = {}
    full = VisionData(root=root, train_size=None, valid_size=0, test_size=test_size, split_seed=split_seed)
    base = load_vision_data(full)
    n_all = base["train"].images.shape[0]
    n_test = int(base["test"].images.shape[0])
    if sizes[-1] > n_all:
        raise ValueError(f"--sizes: {sizes[-1]} is more than the {n_all} training images")
    for size in sizes:
        data = dataclasses.replace(full, train_size=size)
        # The fixed order makes every size the first `size` images of the full one.
        splits = {**base, "train": _Split(*(part[:size] for part in base["train"]))}
        for m in models:
            run_dir = out / f"{m}-{size}"
            want = {"model": m, "steps": steps, "train_images": size, "test_images": n_test}
            point = _read_point(run_dir / POINT_FILE)
            if point is not None and all(point.get(k) == v for k, v in want.items()):
                # Finished earlier with the same settings (e.g. by a run of one size at a time).
                accuracy[m][size], seconds[m][size], params[m] = point["accuracy"], point["seconds"], point["parameters"]
                print_fn(f"{m:>9} {size:>6,} images: test accuracy {100 * point['accuracy']:.2f}% (done before, "
                         f"{point['seconds']:.0f} s)")
                continue
            t0 = time.monotonic()
            run = train_vision(run_dir, m, options=options, data=data, resume=_holds_run(run_dir), splits=splits,
                               rollout=rollout, resume_hint=command)
            if run.result.stop_reason == "interrupted":
                raise KeyboardInterrupt
            accuracy[m][size] = run.test_accuracy
            seconds[m][size] = round(time.monotonic() - t0, 1)
            params[m] = run.parameters
            write_json_atomic({**want, "accuracy": run.test_accuracy, "seconds": seconds[m][size],
                               "parameters": run.parameters}, run_dir / POINT_FILE)
            print_fn(f"{m:>9} {size:>6,} images: test accuracy {100 * run.test_accuracy:.2f}% "
                     f"({run.result.step} steps, {seconds[m][size]:.0f} s)")
    pairs = [(a, b) for i, a in enumerate(models) for b in models[i + 1:]]
    found = [_describe(sizes, accuracy, a, b) for a, b in pairs]
    result = ExperimentResult(accuracy, seconds, found, time.monotonic() - started, out)
    plot_experiment(sizes, accuracy, plot,
                    title=f"Fashion-MNIST, {steps} steps of {options.batch_size} images per point")
    record = {
        "command": command,
        "sizes": sizes,
        "steps": steps,
        "batch_size": options.batch_size,
        "options": dataclasses.asdict(options),
        "test_images": int(base["test"].images.shape[0]),
        "parameters": params,
        "accuracy": {m: {str(s): v for s, v in acc.items()} for m, acc in accuracy.items()},
        "seconds": {m: {str(s): v for s, v in sec.items()} for m, sec in seconds.items()},
        "crossings": found,
        "wall_seconds": round(result.wall_seconds, 1),
        "point_seconds_total": round(sum(v for sec in seconds.values() for v in sec.values()), 1),
        "threads": torch.get_num_threads(),
        "loadavg_before": load_before,
        "loadavg_after": _loadavg(),
    }
    write_json_atomic(record, out / "results.json")
    write_text_atomic(experiment_markdown(sizes, result, command, steps, options.batch_size, params),
                      out / "cnn_vs_vit.md")
    for c in found:
        print_fn(c["text"])
    print_fn(f"wrote {out / 'results.json'}, {out / 'cnn_vs_vit.md'}, {plot} ({result.wall_seconds / 60:.1f} min)")
    return result


def _read_point(path: Path) -> dict | None:
    try:
        point = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return point if isinstance(point, dict) else None


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - not on every platform
        return None


# ----------------------------------------------------------------------------- CLI


def _int_list(text: str) -> list[int]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        values = [int(t) for t in items]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    return values


def _rollout_list(text: str) -> list[int]:
    if text.strip().lower() == "none":
        return []
    values = _int_list(text)
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected test-image indices >= 0, got {text!r}")
    return values


def _size_list(text: str) -> list[int]:
    values = _int_list(text)
    if any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive sizes, got {text!r}")
    return values


def _model_list(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in VISION_MODELS]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown model(s) {', '.join(bad) or '(none given)'}; valid models: {', '.join(MODEL_NAMES)}"
        )
    return names


#: CLI size flags -> config fields, and the models they apply to.
_SIZE_FLAGS = {
    "d_model": ("d_model", ("vit", "local-vit")),
    "layers": ("num_layers", ("vit", "local-vit")),
    "heads": ("num_heads", ("vit", "local-vit")),
    "ffn_dim": ("ffn_dim", ("vit", "local-vit")),
    "patch_size": ("patch_size", ("vit", "local-vit")),
    "positional": ("positional", ("vit", "local-vit")),
    "window": ("window", ("local-vit",)),
    "channels": ("channels", ("cnn",)),
}


def _sizes_from_args(args, model: str) -> dict:
    sizes = {}
    for flag, (field, applies) in _SIZE_FLAGS.items():
        value = getattr(args, flag)
        if value is None:
            continue
        if model not in applies:
            raise ValueError(f"--{flag.replace('_', '-')} applies to {' and '.join(applies)}, not to {model}")
        sizes[field] = tuple(value) if field == "channels" else value
    return sizes


def _add_training_arguments(p: argparse.ArgumentParser):
    from ._argtypes import add_threads_argument as _add_threads_argument

    d = VisionOptions()
    g = p.add_argument_group("training")
    g.add_argument("--batch-size", type=positive_int, default=d.batch_size, help=f"images per step (default {d.batch_size})")
    g.add_argument("--lr", type=positive_float, default=d.lr, help=f"peak learning rate of AdamW (default {d.lr:g})")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay,
                   help=f"AdamW weight decay (default {d.weight_decay:g})")
    g.add_argument("--warmup", type=nonnegative_int, default=d.warmup, metavar="STEPS",
                   help=f"linear warmup steps (default {d.warmup})")
    g.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the initial weights and data order (default 0)")
    g.add_argument("--quiet", action="store_true", help="no progress bar or messages")
    add_precision_argument(g)
    _add_threads_argument(g)
    return g


def _add_data_argument(p: argparse.ArgumentParser) -> None:
    from .data.fashion_mnist import FASHION_MNIST_DIR, FASHION_MNIST_PACKAGE

    p.add_argument("--data", metavar="DIR", default=None,
                   help=f"folder with the Fashion-MNIST *-ubyte.gz files (default {FASHION_MNIST_DIR}, from the "
                        f"Debian package {FASHION_MNIST_PACKAGE}, installed on demand when root)")


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``train vision`` and ``experiment cnn-vs-vit`` to the CLI."""
    from .cli import command_group

    train = command_group(subparsers, "train", help="train a model: attnlab train TASK (see 'attnlab train --help')")
    p = train.add_parser(
        "vision",
        help="train an image classifier (ViT, local ViT or CNN) on Fashion-MNIST",
        description=(
            "Train a Vision Transformer, a ViT with local attention, or a small CNN on Fashion-MNIST and report\n"
            "its test accuracy. DIR receives run.json, last/ and best/ checkpoints, metrics.jsonl, results.json\n"
            "and (ViTs) rollout.png, the attention rollout over chosen test images. Ctrl-C saves last/;\n"
            "--resume continues exactly."
        ),
        epilog="example:\n  attnlab train vision --model vit --out runs/vit --steps 1000\n"
        "  attnlab train vision --out runs/vit --resume --steps 2000   # 1000 more steps",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", choices=MODEL_NAMES, default=None,
                   help="vit (global attention, default), local-vit (3x3 patch neighbourhoods), cnn")
    p.add_argument("--out", metavar="DIR", type=Path, required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in DIR (model and data from its run.json)")
    g = p.add_argument_group("limits (totals over resumed runs; default --steps 1000)")
    g.add_argument("--steps", type=positive_int, help="optimizer steps")
    g.add_argument("--epochs", type=positive_int, help="passes over the training images")
    g.add_argument("--minutes", type=positive_float, help="training minutes")
    g = _add_training_arguments(p)
    g.add_argument("--schedule", choices=("cosine", "constant"), default=None,
                   help="after the warmup: cosine decay to 0 at --steps (default with --steps) or constant")
    g.add_argument("--eval-every", type=positive_int, default=VisionOptions.eval_every, metavar="STEPS",
                   help=f"validate and save last/ every STEPS steps (default {VisionOptions.eval_every})")
    s = p.add_argument_group("model size (default: the model's defaults; ViT d_model 64, 4 layers, 4 heads)")
    s.add_argument("--d-model", type=positive_int, help="ViT token width")
    s.add_argument("--layers", type=positive_int, help="ViT blocks")
    s.add_argument("--heads", type=positive_int, help="ViT attention heads")
    s.add_argument("--ffn-dim", type=positive_int, help="ViT feed-forward width")
    s.add_argument("--patch-size", type=positive_int, help="ViT patch size in pixels (divides 28)")
    s.add_argument("--positional", choices=("learned", "sincos2d", "none"), help="ViT patch positions")
    s.add_argument("--window", type=nonnegative_int, help="local-vit neighbourhood radius in patches (default 1)")
    s.add_argument("--channels", type=_size_list, help="CNN channels per stage, e.g. 24,48,80")
    d = p.add_argument_group("data")
    _add_data_argument(d)
    d.add_argument("--train-size", type=positive_int, metavar="N",
                   help="training images (default: all 55,000 left after the validation set)")
    d.add_argument("--valid-size", type=nonnegative_int, default=VisionData.valid_size, metavar="N",
                   help=f"validation images taken from the training split (default {VisionData.valid_size}; 0: none)")
    d.add_argument("--test-size", type=positive_int, metavar="N", help="score the first N test images (default all)")
    d.add_argument("--split-seed", type=nonnegative_int, default=0, help="seed of the training split's order")
    p.add_argument("--rollout-images", type=_rollout_list, default=list(_DEFAULT_ROLLOUT), metavar="I,J,...",
                   help="test images to draw the attention rollout of (ViTs; default 0-7; 'none' to skip)")
    p.set_defaults(func=run_train)

    group = command_group(subparsers, "experiment", help="reproduce published claims: attnlab experiment TASK")
    p = group.add_parser(
        "cnn-vs-vit",
        help="CNN vs local ViT vs ViT test accuracy against training-set size (Fashion-MNIST)",
        description=(
            "Train a CNN, a ViT restricted to local windows of patches and a global ViT (similar parameter\n"
            "counts) on growing subsets of Fashion-MNIST, each for the same number of optimizer steps, and\n"
            "compare their test accuracy. The claim under test: a CNN is self-attention restricted to a small\n"
            "receptive field, so with little data the CNN wins and with more data self-attention catches up.\n"
            "Writes OUT/results.json, OUT/cnn_vs_vit.md and the plot; re-running resumes the runs in OUT."
        ),
        epilog="example:\n  attnlab experiment cnn-vs-vit                 # 12 runs of 200 steps\n"
        "  attnlab experiment cnn-vs-vit --quick --out runs/cnn-vs-vit-quick",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", metavar="DIR", type=Path, default=None,
                   help="output directory (default runs/cnn-vs-vit, runs/cnn-vs-vit-quick with --quick)")
    p.add_argument("--quick", action="store_true",
                   help=f"a tiny run: sizes {','.join(map(str, QUICK['sizes']))}, {QUICK['steps']} steps, "
                        f"{QUICK['test_size']} test images")
    p.add_argument("--sizes", type=_size_list, default=None, metavar="N,N,...",
                   help=f"training-set sizes (default {','.join(map(str, EXPERIMENT_SIZES))})")
    p.add_argument("--models", type=_model_list, default=list(MODEL_NAMES), metavar="M,M,...",
                   help=f"models (default {','.join(MODEL_NAMES)})")
    p.add_argument("--steps", type=positive_int, default=None,
                   help=f"optimizer steps per point (default {EXPERIMENT_STEPS})")
    p.add_argument("--test-size", type=positive_int, default=None, metavar="N", help="first N test images (default all)")
    p.add_argument("--plot", metavar="PATH", type=Path, default=None, help="plot file (default OUT/cnn_vs_vit.png)")
    p.add_argument("--rollout-images", type=_rollout_list, default=list(_DEFAULT_ROLLOUT), metavar="I,J,...",
                   help="test images for each ViT run's rollout.png (default 0-7; 'none' to skip)")
    _add_data_argument(p)
    _add_training_arguments(p)
    p.set_defaults(func=run_experiment_command)
    return p


def run_train(args: argparse.Namespace) -> int:
    """``attnlab train vision``."""
    from ._argtypes import set_threads as _set_threads

    limits_given = any(getattr(args, k) is not None for k in _LIMITS)
    steps = args.steps if limits_given else 1000
    schedule = args.schedule or ("cosine" if steps is not None else "constant")
    options = VisionOptions(
        steps=steps, epochs=args.epochs, minutes=args.minutes, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, warmup=args.warmup, schedule=schedule, eval_every=args.eval_every,
        seed=args.seed, quiet=args.quiet, precision=args.precision,
    )
    data = VisionData(root=args.data, train_size=args.train_size, valid_size=args.valid_size,
                      test_size=args.test_size, split_seed=args.split_seed)
    sizes = None
    if args.resume:
        given = [f"--{k.replace('_', '-')}" for k in _SIZE_FLAGS if getattr(args, k) is not None]
        if given:
            raise ValueError(f"{', '.join(given)}: a resumed run keeps its model; leave these out with --resume")
    else:
        sizes = _sizes_from_args(args, args.model or "vit")
    _set_threads(args)
    run = train_vision(args.out, args.model if args.resume else (args.model or "vit"), sizes=sizes, options=options,
                       data=data, resume=args.resume, rollout=args.rollout_images)
    r = run.result
    valid = "" if run.valid_accuracy is None else f", valid accuracy {100 * run.valid_accuracy:.2f}%"
    print(f"{run.model_name}: {run.parameters / 1e3:.0f} k parameters, {r.step} steps in {r.train_seconds / 60:.1f} min "
          f"(stopped: {r.stop_reason}){valid}; test accuracy {100 * run.test_accuracy:.2f}% "
          f"on {run.record['test_images']:,} test images; {run.out / RESULTS_FILE}")
    if run.rollout_path is not None:
        print(f"attention rollout: {run.rollout_path}")
    return 130 if r.stop_reason == "interrupted" else 0


def run_experiment_command(args: argparse.Namespace) -> int:
    """``attnlab experiment cnn-vs-vit``."""
    from ._argtypes import set_threads as _set_threads

    sizes = args.sizes or list(QUICK["sizes"] if args.quick else EXPERIMENT_SIZES)
    steps = args.steps or (QUICK["steps"] if args.quick else EXPERIMENT_STEPS)
    test_size = args.test_size or (QUICK["test_size"] if args.quick else None)
    out = args.out or Path("runs/cnn-vs-vit-quick" if args.quick else "runs/cnn-vs-vit")
    check_output_path(args.plot, "--plot")
    warmup = min(args.warmup, max(steps // 5, 1))
    options = VisionOptions(batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, warmup=warmup,
                            schedule="cosine", eval_every=max(steps, 1), seed=args.seed, quiet=args.quiet,
                            precision=args.precision)
    command = (
        f"attnlab experiment cnn-vs-vit --out {out} --sizes {','.join(map(str, sizes))} --models "
        f"{','.join(args.models)} --steps {steps}" + (f" --test-size {test_size}" if test_size else "")
        + f" --batch-size {args.batch_size} --lr {args.lr:g} --seed {args.seed} --threads {args.threads}"
        + (f" --plot {args.plot}" if args.plot else "")
        + (f" --precision {args.precision}" if args.precision != "float32" else "")
    )
    _set_threads(args)
    try:
        run_cnn_vs_vit(out, sizes=sizes, models=args.models, steps=steps, options=options, root=args.data,
                       test_size=test_size, plot=args.plot, rollout=args.rollout_images, command=command)
    except KeyboardInterrupt:
        print(f"interrupted; re-run `{command}` to resume", file=sys.stderr)
        return 130
    return 0
