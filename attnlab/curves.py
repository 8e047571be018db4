"""``attnlab curves``: validation curves of training runs, side by side.

    attnlab curves runs/full/rnnsearch runs/full/rnnenc --x minutes --out curves.png
    attnlab curves runs/sum --metric rouge_l

Every ``attnlab train ...`` run writes ``metrics.jsonl`` (:mod:`attnlab.train.loop`): one
JSON object per line, ``"kind": "train"`` lines with ``step`` and ``train_seconds`` and
``"kind": "valid"`` lines with ``step`` and the task's scores (BLEU and chrF for
translation, ROUGE for summarization, accuracy for vision, NDCG for recommendation, and
usually the validation ``nll``). This command reads the validation points, prints a table
(best and last value of each run) and plots them against the step or the training
minutes, the axis on which models of different speed compare fairly (Bahdanau et al.
2014 compare RNNenc and RNNsearch at equal training time too).

A resumed run appends to its log; a run resumed from a checkpoint older than its last
logged step re-logs the steps in between, and the later values win.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ._io import check_output_path

__all__ = ["Curve", "read_curve", "plot_curves", "register", "run"]

METRICS_FILE = "metrics.jsonl"  # the name attnlab.train.loop writes (not imported: no torch here)
_NOT_METRICS = {"kind", "step", "epoch", "best", "final"}
_PRETTY = {"bleu": "BLEU", "chrf": "chrF", "nll": "NLL", "rouge_l": "ROUGE-L", "accuracy": "accuracy"}


@dataclass(frozen=True)
class Curve:
    """The validation points of one run.

    ``steps[i]``, ``minutes[i]`` (training minutes at that step, interpolated between the
    logged training lines; NaN where the log has none) and ``values[name][i]`` line up.
    """

    label: str
    path: Path
    steps: list[int]
    minutes: list[float]
    values: dict[str, list[float]]

    def best(self, metric: str, *, lower_is_better: bool = False) -> tuple[float, int]:
        """(value, step) of the best point of ``metric``."""
        pts = [(v, s) for v, s in zip(self.values[metric], self.steps) if not math.isnan(v)]
        if not pts:
            raise ValueError(f"run {self.label}: no {metric!r} values")
        return (min if lower_is_better else max)(pts, key=lambda p: p[0])


def _read_lines(path: Path) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                # The last line of a log cut by a crash may be partial: skip it, say so.
                raise ValueError(f"{path}: line {n} is not JSON ({line[:60]!r})") from None
            if isinstance(row, dict):
                rows.append(row)
    return rows


def _latest_per_step(rows: list[dict]) -> list[dict]:
    """Keep, for each step, the row logged last; when the log goes back (a resume from an
    older checkpoint) drop the superseded rows after that step."""
    kept: list[dict] = []
    for row in rows:
        while kept and kept[-1]["step"] >= row["step"]:
            kept.pop()
        kept.append(row)
    return kept


def _interp(x: float, xs: list[float], ys: list[float]) -> float:
    """Piecewise-linear ``y(x)`` through (0, 0) and the points. Past the last point the
    last segment is extended by up to two of its lengths (a final validation a few steps
    after the last logged training line); further out: NaN."""
    px, py = [0.0] + xs, [0.0] + ys
    if x > px[-1]:
        if len(px) < 2 or px[-1] == px[-2] or x - px[-1] > 2 * (px[-1] - px[-2]):
            return math.nan
        return py[-1] + (py[-1] - py[-2]) * (x - px[-1]) / (px[-1] - px[-2])
    for i in range(1, len(px)):
        if x <= px[i]:
            x0, x1, y0, y1 = px[i - 1], px[i], py[i - 1], py[i]
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return math.nan


def read_curve(run_dir, label: str | None = None) -> Curve:
    """Read the validation points of a run directory (one with ``metrics.jsonl``).

    Raises:
        ValueError: no such directory, no log, or a log without validation points.
    """
    run_dir = Path(run_dir)
    path = run_dir / METRICS_FILE
    if not run_dir.is_dir():
        raise ValueError(f"RUN {str(run_dir)!r}: no such directory (give the --out folder of an attnlab train run)")
    if not path.is_file():
        raise ValueError(f"RUN {str(run_dir)!r}: no {METRICS_FILE} in it (give the --out folder of an attnlab train run)")
    rows = [r for r in _read_lines(path) if isinstance(r.get("step"), int)]
    valid = _latest_per_step([r for r in rows if r.get("kind") == "valid"])
    if not valid:
        raise ValueError(f"RUN {str(run_dir)!r}: {METRICS_FILE} has no validation points yet")
    train = _latest_per_step([r for r in rows if r.get("kind") == "train" and isinstance(r.get("train_seconds"), (int, float))])
    t_steps = [float(r["step"]) for r in train]
    t_min = [r["train_seconds"] / 60.0 for r in train]
    names: list[str] = []
    for r in valid:
        for k, v in r.items():
            if k not in _NOT_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool) and k not in names:
                names.append(k)
    values = {k: [float(r[k]) if isinstance(r.get(k), (int, float)) else math.nan for r in valid] for k in names}
    steps = [int(r["step"]) for r in valid]
    minutes = [_interp(float(s), t_steps, t_min) for s in steps]
    return Curve(label or run_dir.name, run_dir, steps, minutes, values)


def _lower_is_better(metric: str) -> bool:
    return metric in ("nll", "loss", "perplexity", "ppl", "wer", "cer") or metric.endswith(("_loss", "_nll"))


def _check_metrics(curves: Sequence[Curve], metrics: Sequence[str]) -> None:
    for c in curves:
        for m in metrics:
            if m not in c.values:
                raise ValueError(
                    f"--metric {m!r}: run {c.label} ({c.path}) logs {', '.join(c.values) or 'no scores'}"
                )


def table(curves: Sequence[Curve], metrics: Sequence[str]) -> str:
    """One line per run: points, last step and minutes, best and last value of each metric."""
    head = f"{'run':<16}{'points':>7}{'steps':>8}{'minutes':>9}"
    for m in metrics:
        head += f"  {('best ' + m):>22}  {('last ' + m):>12}"
    lines = [head]
    for c in curves:
        mins = c.minutes[-1]
        line = f"{c.label:<16}{len(c.steps):>7}{c.steps[-1]:>8}{'-' if math.isnan(mins) else f'{mins:.1f}':>9}"
        for m in metrics:
            v, s = c.best(m, lower_is_better=_lower_is_better(m))
            line += f"  {f'{v:.2f} (step {s})':>22}  {c.values[m][-1]:>12.2f}"
        lines.append(line)
    return "\n".join(lines)


def plot_curves(curves: Sequence[Curve], metrics: Sequence[str], out, *, x: str = "minutes", title: str | None = None):
    """One panel per metric, one line per run, against ``x`` ("minutes" or "step");
    saved atomically to ``out``. Returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .viz.heatmap import save_figure

    if x not in ("minutes", "step"):
        raise ValueError(f"--x must be 'minutes' or 'step', got {x!r}")
    _check_metrics(curves, metrics)
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 3.8), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        for c in curves:
            xs = c.minutes if x == "minutes" else c.steps
            pts = [(a, b) for a, b in zip(xs, c.values[m]) if not (math.isnan(a) or math.isnan(b))]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=c.label)
        ax.set_xlabel("training minutes" if x == "minutes" else "step")
        ax.set_ylabel(f"validation {_PRETTY.get(m, m)}")
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        return save_figure(fig, out)
    finally:
        plt.close(fig)


# --------------------------------------------------------------------------- CLI


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "curves",
        help="plot the validation curves of training runs side by side",
        description=(
            "Read the metrics.jsonl of one or more `attnlab train` runs, print the best and last validation\n"
            "score of each, and plot the validation curves against training minutes or steps."
        ),
        epilog=(
            "examples:\n"
            "  attnlab curves runs/full/rnnsearch runs/full/rnnenc --out curves.png\n"
            "  attnlab curves runs/a runs/b --metric bleu,chrf --x step --labels small,large"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (the --out of attnlab train)")
    p.add_argument("--metric", default=None,
                   help="validation score(s) to show, comma-separated (default: the first one each run logs, "
                        "e.g. bleu for translation)")
    p.add_argument("--x", choices=("minutes", "step"), default="minutes", help="horizontal axis (default minutes)")
    p.add_argument("--labels", default=None, help="comma-separated names for the runs (default: folder names)")
    p.add_argument("--out", default="curves.png", help="the picture to write (default curves.png; .png/.svg/.pdf)")
    p.add_argument("--title", default=None, help="a title over the plot")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    labels = None
    if args.labels is not None:
        labels = [s.strip() for s in args.labels.split(",")]
        if len(labels) != len(args.runs) or not all(labels):
            raise ValueError(f"--labels: give {len(args.runs)} non-empty names, one per RUN; got {args.labels!r}")
    check_output_path(args.out, "--out")
    curves = [read_curve(r, None if labels is None else labels[i]) for i, r in enumerate(args.runs)]
    if args.metric is None:
        metrics = [next(iter(curves[0].values))] if curves[0].values else []
    else:
        metrics = [s.strip() for s in args.metric.split(",") if s.strip()]
    if not metrics:
        raise ValueError(f"--metric: run {curves[0].label} logs no validation scores")
    _check_metrics(curves, metrics)
    print(table(curves, metrics))
    path = plot_curves(curves, metrics, args.out, x=args.x, title=args.title)
    print(f"wrote {path}")
    return 0
