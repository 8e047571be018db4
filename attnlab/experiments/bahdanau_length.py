"""``attnlab experiment bahdanau-length``: does attention keep BLEU up on long sentences?

Bahdanau, Cho & Bengio (2014), "Neural Machine Translation by Jointly Learning to Align
and Translate", Figure 2: the BLEU of the RNN encoder-decoder (RNNenc, Cho et al. 2014),
which compresses the source into one fixed-length vector, falls sharply as sentences get
longer, while RNNsearch, which attends over all encoder states at every step, holds up.
This experiment trains RNNenc, RNNsearch and a Transformer (Vaswani et al. 2017) with the
same parameter budget (:func:`attnlab.models.registry.sizes_for_budget`) for the same
wall-clock minutes on the German-English pairs of ``trans-de-en``, decodes the test split
and scores each source-length bin (German words) with sacreBLEU.

    attnlab experiment bahdanau-length --minutes 10 --params 2000000

writes into ``--out`` (default ``runs/bahdanau-length``): one run directory per model
(re-running resumes them, so a finished experiment only re-scores), ``results.json``,
``bleu_by_length.png`` and ``bahdanau_length.md``, a section ready for ``docs/experiments.md``.

Differences from the paper, which the markdown repeats: everyday dictionary sentences
(3 to ~30 words, mostly under 12) instead of WMT'14 news (up to 60+), models of a few
million parameters trained for minutes on a CPU instead of days on a GPU, and BPE pieces
instead of a 30k-word vocabulary.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

__all__ = [
    "DEFAULT_BINS",
    "EXPERIMENT_MODELS",
    "LengthBin",
    "BinScore",
    "ExperimentResult",
    "parse_bins",
    "assign_bins",
    "bleu_by_length",
    "retention",
    "markdown_table",
    "plot_bleu_by_length",
    "experiment_markdown",
    "run_experiment",
    "register",
]

EXPERIMENT_MODELS = ("rnnenc", "rnnsearch", "transformer")
DEFAULT_BINS = "1-5,6-8,9-11,12-14,15-"
#: Fixed Transformer depth; the parameter budget sets its width.
TRANSFORMER_FIXED = {"num_encoder_layers": 2, "num_decoder_layers": 2, "num_heads": 4}


# ----------------------------------------------------------------------------- binning


@dataclass(frozen=True)
class LengthBin:
    """Source lengths ``lo <= n <= hi`` (``hi=None``: no upper end)."""

    lo: int
    hi: int | None = None

    def __post_init__(self):
        if isinstance(self.lo, bool) or not isinstance(self.lo, int) or self.lo < 0:
            raise ValueError(f"lo must be an int >= 0, got {self.lo!r}")
        if self.hi is not None and (isinstance(self.hi, bool) or not isinstance(self.hi, int) or self.hi < self.lo):
            raise ValueError(f"hi must be None or an int >= lo={self.lo}, got {self.hi!r}")

    @property
    def label(self) -> str:
        """``"6-8"``, ``"7"`` or ``"15+"``."""
        if self.hi is None:
            return f"{self.lo}+"
        return str(self.lo) if self.hi == self.lo else f"{self.lo}-{self.hi}"

    def __contains__(self, n: int) -> bool:
        return n >= self.lo and (self.hi is None or n <= self.hi)


def parse_bins(text: str) -> tuple[LengthBin, ...]:
    """``"1-5,6-8,9-"`` -> bins 1-5, 6-8, 9+. Bins must be ascending and must not overlap;
    only the last may be open (``"9-"``)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f'bins must be comma-separated ranges like "{DEFAULT_BINS}", got {text!r}')
    bins: list[LengthBin] = []
    parts = [p.strip() for p in text.split(",")]
    for i, part in enumerate(parts):
        lo_text, sep, hi_text = part.partition("-")
        try:
            lo = int(lo_text)
            hi = (None if not hi_text.strip() else int(hi_text)) if sep else lo
            b = LengthBin(lo, hi)
        except ValueError:
            raise ValueError(
                f'bins: cannot read {part!r}; expected ranges like "{DEFAULT_BINS}" (ascending, the last may be open)'
            ) from None
        if b.hi is None and i != len(parts) - 1:
            raise ValueError(f"bins: only the last bin may be open-ended, got {part!r} before the end")
        if bins and b.lo <= bins[-1].hi:
            raise ValueError(f"bins: {part!r} overlaps or precedes {bins[-1].label}; bins must be ascending")
        bins.append(b)
    return tuple(bins)


def assign_bins(lengths: Sequence[int], bins: Sequence[LengthBin]) -> list[int | None]:
    """The index of the bin holding each length (``None`` when no bin does)."""
    out: list[int | None] = []
    for n in lengths:
        out.append(next((i for i, b in enumerate(bins) if n in b), None))
    return out


@dataclass(frozen=True)
class BinScore:
    """Corpus BLEU and chrF of the sentences in one length bin (``None`` for an empty bin)."""

    bin: LengthBin
    sentences: int
    bleu: float | None
    chrf: float | None


def bleu_by_length(
    lengths: Sequence[int], hypotheses: Sequence[str], references: Sequence[str], bins: Sequence[LengthBin]
) -> list[BinScore]:
    """sacreBLEU corpus BLEU and chrF per source-length bin.

    Args:
        lengths: the source length of each sentence (e.g. German words).
        hypotheses, references: detokenized outputs and references, one per sentence.
        bins: from :func:`parse_bins`; sentences outside every bin are not counted.
    """
    from ..train.metrics import corpus_bleu, corpus_chrf

    if not (len(lengths) == len(hypotheses) == len(references)):
        raise ValueError(
            f"lengths, hypotheses and references must have one entry per sentence, got "
            f"{len(lengths)}, {len(hypotheses)} and {len(references)}"
        )
    where = assign_bins(lengths, bins)
    scores = []
    for i, b in enumerate(bins):
        rows = [k for k, w in enumerate(where) if w == i]
        if not rows:
            scores.append(BinScore(b, 0, None, None))
            continue
        hyps = [hypotheses[k] for k in rows]
        refs = [references[k] for k in rows]
        scores.append(BinScore(b, len(rows), corpus_bleu(hyps, refs).score, corpus_chrf(hyps, refs).score))
    return scores


_METRICS = {"bleu": "BLEU", "chrf": "chrF"}


def _check_metric(metric: str) -> str:
    if metric not in _METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid metrics: {', '.join(_METRICS)}")
    return metric


def retention(scores: Sequence[BinScore], metric: str = "bleu") -> float | None:
    """Score of the longest non-empty bin divided by that of the shortest: 1 = no drop
    with length, 0.5 = half the score left. ``None`` when undefined (fewer than two
    non-empty bins, or a zero score in the shortest). ``metric``: "bleu" or "chrf"."""
    _check_metric(metric)
    filled = [s for s in scores if s.sentences > 0 and getattr(s, metric) is not None]
    if len(filled) < 2 or getattr(filled[0], metric) <= 0:
        return None
    return getattr(filled[-1], metric) / getattr(filled[0], metric)


def _fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def markdown_table(
    results: Mapping[str, Sequence[BinScore]], overall: Mapping[str, float] | None = None, metric: str = "bleu"
) -> str:
    """A markdown table: one row per length bin (with its sentence count), one column per
    model with its ``metric`` ("bleu" or "chrf"), then the overall score (if given) and
    the retention (last bin / first bin)."""
    _check_metric(metric)
    names = list(results)
    if not names:
        raise ValueError("results is empty; need the bin scores of at least one model")
    bins = [s.bin for s in results[names[0]]]
    for n in names[1:]:
        if [s.bin for s in results[n]] != bins:
            raise ValueError(f"results[{n!r}] has other bins than results[{names[0]!r}]; score all with the same bins")
    label = _METRICS[metric]
    lines = [
        "| source words | sentences | " + " | ".join(f"{n} {label}" for n in names) + " |",
        "|---|---:|" + "---:|" * len(names),
    ]
    for i, b in enumerate(bins):
        count = results[names[0]][i].sentences
        lines.append(
            f"| {b.label} | {count} | " + " | ".join(_fmt(getattr(results[n][i], metric)) for n in names) + " |"
        )
    if overall is not None:
        total = sum(s.sentences for s in results[names[0]])
        lines.append(f"| **all** | {total} | " + " | ".join(_fmt(overall.get(n)) for n in names) + " |")
    lines.append(
        "| **last bin / first bin** | | " + " | ".join(_fmt(retention(results[n], metric), 2) for n in names) + " |"
    )
    return "\n".join(lines) + "\n"


def plot_bleu_by_length(results: Mapping[str, Sequence[BinScore]], path=None, *, title: str | None = None):
    """BLEU (left) and chrF (right) against the source-length bin, one line per model (the
    shape of Bahdanau et al.'s Fig. 2); empty bins are left out. Saves to ``path`` when
    given; returns the Figure."""
    from matplotlib.figure import Figure

    from ..viz.heatmap import save_figure

    fig = Figure(figsize=(10.0, 4.0), layout="constrained")
    axes = fig.subplots(1, 2)
    markers = ("o", "s", "^", "D", "v")
    first = next(iter(results.values()), [])
    ticks = [f"{s.bin.label}\n({s.sentences})" for s in first]
    for ax, metric in zip(axes, _METRICS):
        for k, (name, scores) in enumerate(results.items()):
            xs = [i for i, s in enumerate(scores) if getattr(s, metric) is not None]
            ax.plot(xs, [getattr(scores[i], metric) for i in xs], marker=markers[k % len(markers)], label=name)
        ax.set_xticks(range(len(ticks)), labels=ticks)
        ax.set_xlabel("source sentence length in words (sentences)")
        ax.set_ylabel(_METRICS[metric])
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    if path is not None:
        save_figure(fig, path)
    return fig


# ----------------------------------------------------------------------------- running


@dataclass
class ExperimentResult:
    """Everything the markdown reports; ``results.json`` holds the same as JSON."""

    bins: tuple
    scores: dict  # model -> list[BinScore]
    overall: dict  # model -> {"bleu", "chrf"}
    runs: dict  # model -> {"parameters", "steps", "minutes", "sizes", "load_before", "load_after"}
    settings: dict
    plot: Path | None = None
    markdown: Path | None = None


def run_experiment(
    out="runs/bahdanau-length",
    *,
    models: Sequence[str] = EXPERIMENT_MODELS,
    minutes: float = 10.0,
    params: int = 2_000_000,
    dropout: float = 0.2,
    vocab_size: int = 2000,
    beam: int = 1,
    bins: str = DEFAULT_BINS,
    data=None,
    options=None,
    command: str | None = None,
    jobs_at_once: int = 1,
    print_fn=print,
) -> ExperimentResult:
    """Train ``models`` (same budget, same minutes), score by length bin, write the outputs.

    Every model gets ``params`` parameters (its width scaled to the budget; the
    Transformer has 2 + 2 layers and 4 heads), the same joint vocabulary, the same
    training data and options, and ``dropout`` (0.2: without it a 2 M-parameter RNNenc
    overfits this corpus within 10 minutes).

    Run directories already in ``out`` are resumed to the same total minutes, so a finished
    experiment is re-scored without training again.
    """
    import torch

    from ..data.tokenizer import SubwordTokenizer
    from ..translate import (
        RUN_FILE,
        DataSettings,
        TrainOptions,
        Translator,
        evaluate_translator,
        load_splits,
        model_sizes,
        _loadavg,
        train_many,
        train_tokenizer,
    )

    bin_list = parse_bins(bins)
    models = list(models)
    if not models:
        raise ValueError("models is empty; name at least one model")
    data = data or DataSettings()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    splits = load_splits(data)
    if (out / "tokenizer.json").is_file():
        tokenizer = SubwordTokenizer.load(out)
    else:
        tokenizer = train_tokenizer(splits["train"], vocab_size)
        tokenizer.save(out)
    base = dataclasses.replace(options or TrainOptions(), minutes=minutes, steps=None, epochs=None)
    test = splits["test"]
    lengths = [len(de.split()) for de, _ in test]
    refs = [en for _, en in test]
    jobs = {}
    for name in models:
        fixed = {**(TRANSFORMER_FIXED if name == "transformer" else {}), "dropout": dropout}
        run_dir = out / name
        jobs[name] = dict(
            out=run_dir, model=name, sizes=model_sizes(name, tokenizer.vocab_size, params=params, overrides=fixed),
            options=base, data=data, resume=(run_dir / RUN_FILE).is_file(), resume_hint=command,
        )
        print_fn(f"== {name}: {minutes:g} min, budget {params:,} parameters "
                 f"({'resuming' if jobs[name]['resume'] else 'new run'} in {run_dir})")
    load_before = _loadavg()
    trained = train_many(jobs, splits=splits, tokenizer=tokenizer, jobs_at_once=jobs_at_once, print_fn=print_fn)
    load_after = _loadavg()
    if len(trained) < len(jobs) or any(r.result.stop_reason == "interrupted" for r in trained.values()):
        raise KeyboardInterrupt
    scores, overall, runs = {}, {}, {}
    for name, run in trained.items():
        translator = Translator.load(run.out)
        result = evaluate_translator(translator, test, beam=beam)
        scores[name] = bleu_by_length(lengths, result["hypotheses"], refs, bin_list)
        overall[name] = {"bleu": result["bleu"], "chrf": result["chrf"]}
        runs[name] = {
            "parameters": run.parameters,
            "steps": run.result.step,
            "minutes": round(run.result.train_seconds / 60, 2),
            "sizes": {k: v for k, v in run.record["config"].items() if k not in ("src_vocab", "tgt_vocab", "pad_id", "name")},
            "best_valid_bleu": run.result.best_metric,
            "load_before": run.load_before,
            "load_after": run.load_after,
        }
        print_fn(f"   {name}: {run.parameters:,} parameters, {run.result.step} steps; test BLEU {result['bleu']:.2f}, "
                 f"chrF {result['chrf']:.2f}; by length: "
                 + ", ".join(f"{s.bin.label}: {_fmt(s.bleu)}" for s in scores[name]))
    settings = {
        "mode": "train",
        "minutes": minutes,
        "params": params,
        "dropout": dropout,
        "vocab_size": tokenizer.vocab_size,
        "beam": beam,
        "bins": bins,
        "test_sentences": len(test),
        "train_pairs": len(splits["train"]),
        "threads": torch.get_num_threads(),
        "jobs_at_once": jobs_at_once,
        "load_before": load_before,
        "load_after": load_after,
        "cpu_count": os.cpu_count(),
        "command": command,
        "bleu_signature": result["bleu_signature"],
    }
    return _finish(out, ExperimentResult(tuple(bin_list), scores, overall, runs, settings), print_fn)


def _finish(out: Path, res: ExperimentResult, print_fn) -> ExperimentResult:
    """Write the plot, ``results.json`` and the markdown of ``res`` into ``out``, and print the tables."""
    scores, overall = res.scores, res.overall
    res.plot = out / "bleu_by_length.png"
    plot_bleu_by_length(scores, res.plot, title="Scores by source length (test split)")
    (out / "results.json").write_text(json.dumps(_to_json(res), indent=1) + "\n", encoding="utf-8")
    res.markdown = out / "bahdanau_length.md"
    res.markdown.write_text(experiment_markdown(res), encoding="utf-8")
    print_fn("")
    print_fn(markdown_table(scores, {n: o["bleu"] for n, o in overall.items()}, "bleu"))
    print_fn(markdown_table(scores, {n: o["chrf"] for n, o in overall.items()}, "chrf"))
    print_fn(f"plot: {res.plot}\nmarkdown for docs/experiments.md: {res.markdown}")
    return res


def score_checkpoints(
    checkpoints: Mapping[str, str | Path],
    out="runs/bahdanau-length-checkpoints",
    *,
    beam: int = 1,
    length_penalty: float | None = None,
    bins: str = DEFAULT_BINS,
    command: str | None = None,
    print_fn=print,
) -> ExperimentResult:
    """Score models that are already trained (no training) by source length, on the test split
    they share, and write the same outputs as :func:`run_experiment`.

    Args:
        checkpoints: label -> run directory, checkpoint directory or shipped model name
            (anything ``attnlab translate --checkpoint`` takes).
        beam, length_penalty: decoding (``length_penalty`` None: each model's own default).
        bins: source-length bins in words, as in :func:`parse_bins`.

    Every run must hold the same test split (the same data settings); a mismatch is an
    error, since scores on different sentences do not compare.
    """
    import torch

    from ..train.checkpoint import read_checkpoint
    from ..translate import DataSettings, Translator, _resolve_checkpoint, evaluate_translator, load_splits, read_run

    bin_list = parse_bins(bins)
    if not checkpoints:
        raise ValueError("checkpoints is empty; name at least one trained model")
    # (checkpoint dir, run dir) each; shipped model names resolve too; a clear error if missing
    resolved = {name: _resolve_checkpoint(path) for name, path in checkpoints.items()}
    test, first = None, None
    for name, (_, run_dir) in resolved.items():
        held_out = load_splits(DataSettings(**read_run(run_dir)["data"]), held_out_only=True)["test"]
        if test is None:
            test, first = held_out, name
        elif held_out != test:
            raise ValueError(f"--checkpoints: {name} was trained with another test split than {first} "
                             "(other data settings); scores on different sentences do not compare")
    lengths = [len(de.split()) for de, _ in test]
    refs = [en for _, en in test]
    scores, overall, runs = {}, {}, {}
    for name, (ckpt_dir, run_dir) in resolved.items():
        translator = Translator.load(ckpt_dir)
        result = evaluate_translator(translator, test, beam=beam, length_penalty=length_penalty)
        scores[name] = bleu_by_length(lengths, result["hypotheses"], refs, bin_list)
        overall[name] = {"bleu": result["bleu"], "chrf": result["chrf"]}
        record = read_run(run_dir)
        progress = (read_checkpoint(ckpt_dir).state or {}).get("progress") or {}
        runs[name] = {
            "parameters": sum(p.numel() for p in translator.model.parameters()),
            "steps": progress.get("step"),
            "minutes": round(progress["train_seconds"] / 60, 2) if "train_seconds" in progress else None,
            "sizes": {k: v for k, v in record["config"].items() if k not in ("src_vocab", "tgt_vocab", "pad_id", "name")},
            "best_valid_bleu": progress.get("best_metric"),
            "load_before": None,
            "load_after": None,
            "checkpoint": str(ckpt_dir),
            "length_penalty": translator.length_penalty if length_penalty is None else length_penalty,
        }
        print_fn(f"   {name} ({ckpt_dir}): test BLEU {result['bleu']:.2f}, chrF {result['chrf']:.2f}; by length: "
                 + ", ".join(f"{s.bin.label}: {_fmt(s.bleu)}" for s in scores[name]))
    settings = {
        "mode": "checkpoints",
        "beam": beam,
        "bins": bins,
        "test_sentences": len(test),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "command": command,
        "bleu_signature": result["bleu_signature"],
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return _finish(out, ExperimentResult(tuple(bin_list), scores, overall, runs, settings), print_fn)


def _to_json(res: ExperimentResult) -> dict:
    return {
        "settings": res.settings,
        "runs": res.runs,
        "overall": res.overall,
        "by_length": {
            n: [{"bin": s.bin.label, "sentences": s.sentences, "bleu": s.bleu, "chrf": s.chrf} for s in scores]
            for n, scores in res.scores.items()
        },
    }


def experiment_markdown(res: ExperimentResult) -> str:
    """The section for ``docs/experiments.md``: command, setup, table, where the plot is."""
    s = res.settings
    lines = ["### BLEU by source-sentence length (Bahdanau et al. 2014, Fig. 2)", ""]
    if s.get("command"):
        lines += ["```", s["command"], "```", ""]
    if s.get("mode") == "checkpoints":
        return _checkpoints_markdown(res, lines)
    lines.append(
        f"Test split of {s['test_sentences']} sentence pairs; models trained on {s['train_pairs']} pairs for "
        f"{s['minutes']:g} min each with a budget of {s['params']:,} parameters, joint BPE vocabulary "
        f"{s['vocab_size']}, {'greedy decoding' if s['beam'] == 1 else 'beam ' + str(s['beam'])}, "
        f"{s['threads']} torch thread(s) per model, {s['jobs_at_once']} model(s) training at a time, on "
        f"{s['cpu_count']} CPU(s). sacreBLEU `{s['bleu_signature']}`."
    )
    lines.append("")
    lines.append("| model | parameters | sizes | steps | minutes | best valid BLEU | load avg (1/5/15 min) start → end |")
    lines.append("|---|---:|---|---:|---:|---:|---|")
    for n, r in res.runs.items():
        # the sizes only (ints), not the switches or max_len
        sizes = ", ".join(
            f"{k}={v}" for k, v in r["sizes"].items()
            if isinstance(v, int) and not isinstance(v, bool) and k not in ("max_len", "align_layer")
        )
        load = f"{r['load_before']} → {r['load_after']}" if r["load_before"] else "–"
        lines.append(
            f"| {n} | {r['parameters']:,} | {sizes} | {r['steps']} | {r['minutes']} | {_fmt(r['best_valid_bleu'])} | {load} |"
        )
    return _with_tables(res, lines)


def _checkpoints_markdown(res: ExperimentResult, lines: list[str]) -> str:
    s = res.settings
    lines.append(
        f"Already trained models scored on the {s['test_sentences']} sentence pairs of their shared test split, "
        f"{'greedy decoding' if s['beam'] == 1 else 'beam ' + str(s['beam'])}. sacreBLEU `{s['bleu_signature']}`."
    )
    lines += ["", "| model | checkpoint | parameters | steps | training minutes | best valid BLEU |", "|---|---|---:|---:|---:|---:|"]
    for n, r in res.runs.items():
        steps = "–" if r["steps"] is None else r["steps"]
        lines.append(f"| {n} | `{r['checkpoint']}` | {r['parameters']:,} | {steps} | {_fmt(r['minutes'])} | "
                     f"{_fmt(r['best_valid_bleu'])} |")
    return _with_tables(res, lines)


def _with_tables(res: ExperimentResult, lines: list[str]) -> str:
    """``lines`` followed by the BLEU and chrF tables by length and where the plot is."""
    lines += ["", "BLEU by source length:", "",
              markdown_table(res.scores, {n: o["bleu"] for n, o in res.overall.items()}, "bleu"),
              "chrF by source length (character n-grams: steadier than BLEU at low scores):", "",
              markdown_table(res.scores, {n: o["chrf"] for n, o in res.overall.items()}, "chrf")]
    if res.plot is not None:
        lines.append(f"Plot: `{res.plot}`.")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- CLI


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``experiment bahdanau-length`` to the CLI."""
    from .._argtypes import positive_float, positive_int, probability
    from ..translate import DEFAULT_VOCAB, _add_threads_argument, add_length_penalty_argument
    from ..cli import command_group

    group = command_group(subparsers, "experiment", help="reproduce published claims: attnlab experiment TASK")
    p = group.add_parser(
        "bahdanau-length",
        help="BLEU by sentence length: RNNenc vs RNNsearch vs Transformer (Bahdanau et al. 2014, Fig. 2)",
        description=(
            "Train RNNenc, RNNsearch and a Transformer with the same parameter budget for the same minutes on\n"
            "German-English (trans-de-en), then score the test split by source length (German words).\n"
            "The claim under test: attention's BLEU falls much less with length than RNNenc's.\n"
            "Writes OUT/results.json, OUT/bleu_by_length.png and OUT/bahdanau_length.md (for docs/experiments.md);\n"
            "re-running resumes the runs in OUT (a finished experiment is only re-scored)."
        ),
        epilog="example:\n  attnlab experiment bahdanau-length --minutes 10 --params 2000000",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", metavar="DIR", type=Path, default=Path("runs/bahdanau-length"),
                   help="output directory (default runs/bahdanau-length)")
    p.add_argument("--models", default=",".join(EXPERIMENT_MODELS),
                   help=f"comma-separated models (default {','.join(EXPERIMENT_MODELS)})")
    p.add_argument("--minutes", type=positive_float, default=10.0, help="training minutes per model (default 10)")
    p.add_argument("--params", type=positive_int, default=2_000_000, metavar="N",
                   help="parameter budget of every model (default 2000000)")
    p.add_argument("--dropout", type=probability, default=0.2, help="dropout of every model (default 0.2)")
    p.add_argument("--vocab-size", type=positive_int, default=DEFAULT_VOCAB, metavar="N",
                   help=f"joint BPE vocabulary (default {DEFAULT_VOCAB})")
    p.add_argument("--beam", type=positive_int, default=1, help="beam size for the test translations (default 1)")
    p.add_argument("--bins", default=DEFAULT_BINS, help=f"source-length bins in words (default {DEFAULT_BINS})")
    p.add_argument("--checkpoints", metavar="NAME=DIR", nargs="+",
                   help="score these already trained models instead of training (DIR: a run, a checkpoint or a "
                        "shipped model name); --out, --beam, --length-penalty and --bins apply, the training "
                        "options do not; default --out runs/bahdanau-length-checkpoints)")
    add_length_penalty_argument(p)
    p.add_argument("--jobs", type=positive_int, default=1, metavar="N",
                   help="models trained at the same time, one process each (default 1: one after the other, "
                        "so each model has the machine to itself)")
    _add_threads_argument(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``attnlab experiment bahdanau-length`` with parsed arguments."""
    from ..models.registry import MODELS

    parse_bins(args.bins)  # a typo fails before any training
    if args.checkpoints:
        return _run_checkpoints(args)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        raise ValueError(f"--models: unknown model(s) {', '.join(unknown) or '(none given)'}; valid models: {', '.join(MODELS)}")
    command = (
        f"attnlab experiment bahdanau-length --out {args.out} --models {','.join(models)} --minutes {args.minutes:g} "
        f"--params {args.params} --dropout {args.dropout:g} --vocab-size {args.vocab_size} --beam {args.beam} --bins {args.bins} "
        f"--jobs {args.jobs} --threads {args.threads}"
    )
    import torch

    torch.set_num_threads(args.threads)
    started = time.monotonic()
    run_experiment(args.out, models=models, minutes=args.minutes, params=args.params, dropout=args.dropout,
                   vocab_size=args.vocab_size,
                   beam=args.beam, bins=args.bins, command=command, jobs_at_once=args.jobs)
    print(f"done in {(time.monotonic() - started) / 60:.1f} min")
    return 0


def _parse_checkpoints(items: Sequence[str]) -> dict[str, str]:
    """``["RNNenc=runs/full/rnnenc", ...]`` -> ``{"RNNenc": "runs/full/rnnenc", ...}``."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ValueError(f"--checkpoints: expected NAME=DIR (e.g. RNNenc=runs/full/rnnenc), got {item!r}")
        if name.strip() in out:
            raise ValueError(f"--checkpoints: the name {name.strip()!r} is given twice")
        out[name.strip()] = path.strip()
    return out


def _run_checkpoints(args: argparse.Namespace) -> int:
    import torch

    checkpoints = _parse_checkpoints(args.checkpoints)
    out = Path("runs/bahdanau-length-checkpoints") if args.out == Path("runs/bahdanau-length") else args.out
    command = (f"attnlab experiment bahdanau-length --checkpoints {' '.join(args.checkpoints)} --out {out} "
               f"--beam {args.beam} --bins {args.bins}"
               + ("" if args.length_penalty is None else f" --length-penalty {args.length_penalty:g}"))
    torch.set_num_threads(args.threads)
    score_checkpoints(checkpoints, out, beam=args.beam, length_penalty=args.length_penalty, bins=args.bins,
                      command=command)
    return 0
