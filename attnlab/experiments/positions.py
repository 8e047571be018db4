"""``attnlab experiment positions``: which positional encoding extrapolates to longer inputs?

Press, Smith & Lewis (2022), "Train Short, Test Long: Attention with Linear Biases
Enables Input Length Extrapolation" (ALiBi), Figure 1 / §4: a causal language model
trained on sequences of ``L`` tokens and evaluated on longer ones keeps (even improves)
its perplexity with ALiBi; T5's bias extrapolates part of the way, rotary embeddings
a little, sinusoidal positions hardly at all. This experiment trains the same small
decoder-only model (:class:`attnlab.models.decoder_lm.DecoderLM`) once per scheme --
sinusoidal, learned absolute, Shaw relative, T5 bias, RoPE, ALiBi -- for the same
wall-clock minutes (or, with ``--steps``, the same number of steps: fairer on a shared
machine) on a token stream built from the English (or German) side of the
``trans-de-en`` sentence pairs, and measures test perplexity at ``L``, ``2L`` and ``4L``.

    attnlab experiment positions --minutes 3 --length 64
    attnlab experiment positions --minutes 10 --steps 750 --length 64

Corpus: the sentences of one side of :func:`attnlab.data.de_en.load_pairs`, split by
:func:`attnlab.data.de_en.split_pairs` (deterministic keyed hash), each encoded with a
BPE :class:`~attnlab.data.tokenizer.SubwordTokenizer` learned on the training split and
followed by ``</s>``, concatenated in file order into one stream per split.

Evaluation protocols (:data:`WINDOW_PROTOCOLS`); both score exactly the same test tokens
at every evaluation length ``W`` (a multiple of ``L`` up to the horizon ``H = 4L``), so the
numbers differ only by the context the model gets and the positions it sees:

- ``"nonoverlapping"`` (Press et al.'s main protocol): the stream cut into consecutive
  windows of ``W`` tokens, every token of every window scored. Only the first
  ``((n - 1) // H) * H`` targets are used, so each ``W`` scores the same tokens. At
  ``W = 2L`` half the scored tokens sit at positions the model never saw in training.
- ``"sliding"``: windows of ``W`` tokens moved by ``L``, only each window's last ``L``
  targets scored: every scored token sits at a position in ``[W - L, W)`` with at least
  ``W - L`` tokens of context -- all scored tokens are beyond the training length
  once ``W > L``, the harshest test.

Learned absolute positions beyond ``L``: the table has ``H = 4L`` rows, but training
sequences have ``L`` tokens, so rows ``L .. 4L-1`` never get a gradient and keep their
``N(0, 0.02^2)`` initial values (the optimizer has no weight decay, so they stay exactly
there; :func:`run_experiment` reports their norms next to the trained rows'). That is the
point of the comparison: an absolute table has nothing to offer past its training length.
Sinusoidal positions are defined everywhere but the model has only seen the first ``L``.
T5 buckets distances up to ``max_distance = L`` (with 32 buckets, or ``L`` if fewer), so
every bucket is trained and all longer distances share the last one (T5's own regime:
max_distance 128 below its training length 512); Shaw clips distances at ``k = 16``.

The plot shows each scheme's perplexity relative to its own at ``L`` (so unequal training
progress does not hide the trend) and, per position of the ``4L`` windows, how the loss on
the same tokens changes against windows of ``L`` (:func:`nll_change_by_position`).

Writes into ``--out`` (default ``runs/positions``): one run directory per scheme
(re-running resumes them to the same total minutes, so a finished experiment is only
re-evaluated), ``results.json``, the plot (``--plot``, default ``OUT/positions.png``) and
``positions.md``, a section ready for ``docs/experiments.md``.
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
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

if TYPE_CHECKING:
    import torch

# torch (and attnlab modules that import it) load inside the functions, so that building
# the `attnlab` parser (`attnlab --help`) stays instant.


def _positive_int(value, name: str) -> int:
    from .._checks import check_positive_int

    return check_positive_int(value, name)

__all__ = [
    "SCHEMES",
    "EVAL_FACTORS",
    "LANGUAGES",
    "MODEL_DEFAULTS",
    "WINDOW_PROTOCOLS",
    "Windows",
    "EvalScore",
    "PositionsResult",
    "nonoverlapping_plan",
    "sliding_plan",
    "make_windows",
    "token_stream",
    "TrainWindows",
    "lm_loss",
    "score_windows",
    "nll_change_by_position",
    "scheme_options",
    "markdown_tables",
    "plot_positions",
    "experiment_markdown",
    "run_experiment",
    "register",
]

#: The six schemes compared (any name of :data:`attnlab.nn.POSITIONAL` may be run, e.g. "none").
SCHEMES = ("sinusoidal", "learned", "shaw", "t5", "rope", "alibi")
#: Evaluation lengths as multiples of the training length L (the last one is the horizon H).
EVAL_FACTORS = (1, 2, 4)
#: Which side of the (German, English) pairs makes the corpus.
LANGUAGES = {"de": 0, "en": 1}
#: Model sizes of the experiment (the CLI exposes d_model, num_layers, num_heads).
MODEL_DEFAULTS = {"d_model": 128, "num_heads": 4, "num_layers": 2, "ffn_dim": 512, "dropout": 0.1,
                  "activation": "gelu"}
SETTINGS_FILE = "settings.json"
#: Settings that must match to resume runs in an existing --out (minutes/steps may grow,
#: schemes may be a different subset).
_FIXED_SETTINGS = ("length", "factors", "language", "vocab_size", "data", "model", "batch_size", "lr",
                   "warmup_steps", "seed")


# ----------------------------------------------------------------------------- windows


def _check_lengths(length: int, window: int, horizon: int) -> None:
    _positive_int(length, "length")
    _positive_int(window, "window")
    _positive_int(horizon, "horizon")
    if not length <= window <= horizon:
        raise ValueError(
            f"window must lie in [length, horizon] = [{length}, {horizon}], got window={window}"
        )


def nonoverlapping_plan(n: int, window: int, length: int, horizon: int) -> tuple[range, int]:
    """Consecutive windows of ``window`` tokens, all targets scored (Press et al. 2022 §4).

    The scored targets are ``stream[1 : M + 1]`` with ``M = ((n - 1) // horizon) * horizon``,
    the same for every window that divides ``horizon``.

    Returns:
        ``(ends, scored)``: window ``k`` reads ``stream[e - window : e]`` and predicts
        ``stream[e - window + 1 : e + 1]`` for ``e = ends[k]``; its last ``scored``
        targets count.
    """
    _check_lengths(length, window, horizon)
    if horizon % window:
        raise ValueError(
            f"window ({window}) must divide horizon ({horizon}) for nonoverlapping windows, "
            "else the lengths would score different tokens"
        )
    m = ((n - 1) // horizon) * horizon
    return range(window, m + 1, window), window


def sliding_plan(n: int, window: int, length: int, horizon: int) -> tuple[range, int]:
    """Windows of ``window`` tokens moved by ``length``; only the last ``length`` targets
    of each are scored. The scored targets are ``stream[horizon - length + 1 : e_last + 1]``
    for every window, each with at least ``window - length`` tokens of context.

    Returns: ``(ends, scored)`` as in :func:`nonoverlapping_plan`.
    """
    _check_lengths(length, window, horizon)
    return range(horizon, n, length), length


#: ``plan(n_tokens, window, length, horizon) -> (ends, scored)``; see :func:`make_windows`.
WINDOW_PROTOCOLS: dict[str, Callable[[int, int, int, int], tuple[range, int]]] = {
    "nonoverlapping": nonoverlapping_plan,
    "sliding": sliding_plan,
}


@dataclass(frozen=True)
class Windows:
    """Evaluation windows cut from one token stream.

    ``targets[k, t]`` is the token after ``inputs[k, t]``; only ``targets[:, -scored:]``
    count (``scored`` = W for nonoverlapping windows, L for sliding ones).

    Shape:
        inputs (N, W) long, targets (N, W) long.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    scored: int
    protocol: str

    @property
    def window(self) -> int:
        return self.inputs.shape[1]

    @property
    def num_scored(self) -> int:
        return self.inputs.shape[0] * self.scored

    def scored_targets(self) -> torch.Tensor:
        """The tokens that count. Shape: (N, scored)."""
        return self.targets[:, self.window - self.scored:]


def make_windows(stream: torch.Tensor, window: int, *, length: int, horizon: int,
                 protocol: str = "nonoverlapping") -> Windows:
    """Cut ``stream`` into evaluation windows of ``window`` tokens by ``protocol``
    (a name of :data:`WINDOW_PROTOCOLS`).

    Args:
        stream: the token ids, shape (n,), long.
        window: evaluation length W, ``length <= W <= horizon``.
        length: the training length L.
        horizon: the longest evaluation length H; every W of one experiment uses the same
            H, which makes the scored tokens the same for all of them.

    Shape:
        stream (n,) -> Windows with inputs / targets (N, W).
    """
    import torch

    from .._checks import fmt_shape

    if not isinstance(stream, torch.Tensor):
        raise TypeError(f"stream must be a 1-D long torch.Tensor of token ids, got {type(stream).__name__}")
    if stream.dim() != 1 or stream.dtype.is_floating_point or stream.dtype == torch.bool:
        raise ValueError(f"stream must be a 1-D integer tensor of token ids, got {stream.dtype} {fmt_shape(stream.shape)}")
    if protocol not in WINDOW_PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; valid protocols: {', '.join(WINDOW_PROTOCOLS)}")
    n = stream.shape[0]
    _check_lengths(length, window, horizon)
    if n < horizon + 1:
        raise ValueError(
            f"stream has {n} tokens; need at least horizon + 1 = {horizon + 1} for one window of {horizon} "
            "inputs and their next tokens (use a shorter --length or more held-out sentences)"
        )
    ends, scored = WINDOW_PROTOCOLS[protocol](n, window, length, horizon)
    index = torch.tensor(list(ends), dtype=torch.long)[:, None] - window + torch.arange(window + 1)  # (N, W + 1)
    tokens = stream.long()[index]  # (N, W + 1)
    return Windows(tokens[:, :-1], tokens[:, 1:], scored, protocol)


# ----------------------------------------------------------------------------- training data


def token_stream(sentences: Sequence[str], tokenizer) -> torch.Tensor:
    """Every sentence encoded and followed by ``</s>``, concatenated in the given order.

    Shape: -> (n,) long.
    """
    import torch

    if not sentences:
        raise ValueError("sentences is empty; need at least one sentence to make a token stream")
    ids = tokenizer.encode_batch(list(sentences), add_bos=False, add_eos=True)
    return torch.tensor([i for sent in ids for i in sent], dtype=torch.long)


class TrainWindows:
    """``batches(epoch, seed)`` for :class:`attnlab.train.loop.Trainer`: the training stream
    cut into windows of ``length + 1`` tokens (inputs and next tokens) at a random offset
    per epoch, shuffled, in batches of ``batch_size`` (the last partial batch dropped, unless
    the stream holds less than one batch). A pure function of ``(epoch, seed)``.

    Shape: yields (B, length + 1) long.
    """

    def __init__(self, stream: torch.Tensor, length: int, batch_size: int):
        self.length = _positive_int(length, "length")
        self.batch_size = _positive_int(batch_size, "batch_size")
        if stream.dim() != 1 or stream.shape[0] < 2 * length + 1:
            raise ValueError(
                f"the training stream has {stream.shape[0]} tokens; need at least 2 * length + 1 = "
                f"{2 * length + 1} (use a shorter --length)"
            )
        self.stream = stream.long()

    def __call__(self, epoch: int, seed: int):
        import torch

        g = torch.Generator().manual_seed(1_000_003 * seed + epoch)
        offset = int(torch.randint(self.length, (1,), generator=g))
        starts = torch.arange(offset, self.stream.shape[0] - self.length, self.length)  # start + L <= n - 1
        starts = starts[torch.randperm(len(starts), generator=g)]
        span = torch.arange(self.length + 1)
        last = len(starts) if len(starts) < self.batch_size else len(starts) - self.batch_size + 1
        for i in range(0, last, self.batch_size):
            yield self.stream[starts[i:i + self.batch_size, None] + span]  # (B, L + 1)


def lm_loss(model, batch: torch.Tensor):
    """Mean next-token cross-entropy and the number of tokens it averages over.

    Shape: batch (B, T + 1) -> (scalar, T * B).
    """
    import torch.nn.functional as F

    logits = model(batch[:, :-1])  # (B, T, V)
    targets = batch[:, 1:]  # (B, T)
    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    return loss, targets.numel()


# ----------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class EvalScore:
    """Summed negative log-likelihood (nats) of the scored tokens, its per-position mean
    over windows (``position_nll[t]``: targets at window position ``t``, NaN where nothing
    was scored) and the NLL of every scored token (window by window; for nonoverlapping
    windows that is stream order, the same tokens in the same order at every length).

    Shape: token_nll (N, scored) float64.
    """

    nll: float
    tokens: int
    position_nll: tuple
    token_nll: "torch.Tensor"

    @property
    def loss(self) -> float:
        return self.nll / self.tokens

    @property
    def ppl(self) -> float:
        return math.exp(self.loss)


def score_windows(model, windows: Windows, *, batch_size: int = 16, progress=None) -> EvalScore:
    """Next-token NLL of the scored targets of ``windows`` under ``model`` (in eval mode).

    Args:
        model: maps tokens (B, W) to logits (B, W, V).
        progress: optional callable ``progress(n_windows_done)`` (a progress bar's update).
    """
    import torch
    import torch.nn.functional as F

    _positive_int(batch_size, "batch_size")
    was_training = model.training
    model.eval()
    W, C = windows.window, windows.scored
    pos_sum = torch.zeros(W, dtype=torch.float64)
    scored = []
    try:
        for i in range(0, windows.inputs.shape[0], batch_size):
            x = windows.inputs[i:i + batch_size]  # (b, W)
            y = windows.targets[i:i + batch_size]  # (b, W)
            with torch.no_grad():
                logits = model(x).float()  # (b, W, V)
                nll = F.cross_entropy(logits.transpose(1, 2), y, reduction="none")  # (b, W)
            pos_sum += nll.double().sum(0)
            scored.append(nll[:, W - C:].double())  # (b, C)
            if progress is not None:
                progress(x.shape[0])
    finally:
        model.train(was_training)
    count = windows.inputs.shape[0]
    per_pos = pos_sum / max(count, 1)  # (W,)
    per_pos[: W - C] = float("nan")
    token_nll = torch.cat(scored) if scored else torch.zeros(0, C, dtype=torch.float64)  # (N, C)
    return EvalScore(float(token_nll.sum()), windows.num_scored, tuple(per_pos.tolist()), token_nll)


def nll_change_by_position(long: EvalScore, short: EvalScore) -> list[float]:
    """Mean over windows of ``NLL(token | its long window) - NLL(token | its short window)``
    at each position of the long window: how much the extra context and the unseen
    positions cost (> 0) or help (< 0) on the very same tokens. Both scores must come from
    nonoverlapping windows of one stream (same tokens, stream order); positions below the
    short length then have the same context in both and a change of 0 (up to float32
    rounding: the matrix products differ in shape).

    Shape: long.token_nll (N, W), short.token_nll (N * W / w, w) -> list of W floats.
    """
    a, b = long.token_nll.flatten(), short.token_nll.flatten()
    if a.shape != b.shape:
        raise ValueError(
            f"long and short must score the same tokens, got {a.numel()} and {b.numel()}; "
            "use nonoverlapping windows of one stream with the same horizon"
        )
    W = long.token_nll.shape[1]
    return (a - b).reshape(-1, W).mean(0).tolist()  # (W,)


# ----------------------------------------------------------------------------- reporting


def scheme_options(scheme: str, length: int) -> dict:
    """Constructor options of a scheme for training length ``length`` (see the module
    docstring): T5 buckets up to ``max_distance = length``; the others keep their defaults."""
    if scheme == "t5":
        return {"num_buckets": min(32, length), "max_distance": length} if length >= 2 else {}
    return {}


def _fmt(value, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:,.{digits}f}"


def markdown_tables(perplexity: Mapping[str, Mapping[str, Mapping[int, float]]], length: int) -> str:
    """One markdown table per protocol: rows = schemes, columns = evaluation lengths, and
    the ratio of the longest to the training length (< 1: longer inputs help).

    Args:
        perplexity: ``{protocol: {scheme: {window: ppl}}}``.
        length: the training length L (the column whose window equals it is marked).
    """
    if not perplexity:
        raise ValueError("perplexity is empty; need {protocol: {scheme: {window: ppl}}}")
    titles = {
        "nonoverlapping": "nonoverlapping windows, every token scored (Press et al. 2022 §4)",
        "sliding": f"sliding windows (stride L), only the last L = {length} tokens of each scored",
    }
    out = []
    for protocol, by_scheme in perplexity.items():
        if not by_scheme:
            raise ValueError(f"perplexity[{protocol!r}] is empty; need {{scheme: {{window: ppl}}}}")
        windows = sorted({int(w) for scores in by_scheme.values() for w in scores})
        heads = [f"{w} ({w // length}L)" if w % length == 0 else str(w) for w in windows]
        out.append(f"Test perplexity, {titles.get(protocol, protocol)}:")
        out.append("")
        out.append("| scheme | " + " | ".join(heads) + f" | {windows[-1] // length}L / L |")
        out.append("|---|" + "---:|" * (len(windows) + 1))
        for scheme, scores in by_scheme.items():
            scores = {int(w): v for w, v in scores.items()}
            ratio = scores.get(windows[-1]) / scores[length] if scores.get(length) and scores.get(windows[-1]) else None
            out.append(f"| {scheme} | " + " | ".join(_fmt(scores.get(w)) for w in windows) + f" | {_fmt(ratio, 2)} |")
        out.append("")
    return "\n".join(out)


def plot_positions(perplexity, nll_change, length: int, path=None, *, title: str | None = None):
    """Left: test perplexity at each evaluation length divided by that at the training
    length (1 = no change; one colour per scheme, solid: nonoverlapping, dashed: sliding).
    Right: :func:`nll_change_by_position` of the longest nonoverlapping windows, averaged
    over buckets of ``max(1, L // 8)`` positions, with the training length marked. Saves
    to ``path`` when given; returns the Figure.

    Args:
        perplexity: ``{protocol: {scheme: {window: ppl}}}`` (each with the window ``length``).
        nll_change: ``{scheme: per-position NLL change}`` (may be empty).
    """
    import torch
    from matplotlib.figure import Figure

    from ..viz.heatmap import save_figure

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax, ax2 = fig.subplots(1, 2)
    schemes = list(dict.fromkeys(s for by in perplexity.values() for s in by))
    colours = {s: f"C{i % 10}" for i, s in enumerate(schemes)}
    styles = {"nonoverlapping": "-", "sliding": "--"}
    markers = ("o", "s", "^", "D", "v", "P", "X")
    first = next(iter(perplexity), None)
    for protocol, by_scheme in perplexity.items():
        for scheme, scores in by_scheme.items():
            scores = {int(w): v for w, v in scores.items()}
            if length not in scores:
                raise ValueError(f"perplexity[{protocol!r}][{scheme!r}] has no score at the training length {length}")
            ws = sorted(scores)
            ax.plot(ws, [scores[w] / scores[length] for w in ws], styles.get(protocol, ":"), color=colours[scheme],
                    marker=markers[schemes.index(scheme) % len(markers)], label=scheme if protocol == first else None)
    all_ws = sorted({int(w) for by in perplexity.values() for s in by.values() for w in s})
    ax.set_xscale("log", base=2)
    ax.set_xticks(all_ws, labels=[f"{w}\n({w / length:g}L)" for w in all_ws])
    ax.minorticks_off()
    ax.axhline(1.0, color="0.5", lw=0.8)
    ax.set_xlabel(f"evaluation length in tokens (trained on L = {length})")
    ax.set_ylabel("test perplexity / perplexity at L")
    ax.grid(alpha=0.3)
    ax.legend(title="solid: nonoverlapping\ndashed: sliding", fontsize="small", title_fontsize="small")
    bucket = max(1, length // 8)
    for scheme, values in nll_change.items():
        v = torch.tensor([float(x) for x in values], dtype=torch.float64)
        n = (v.shape[0] // bucket) * bucket
        if n == 0:
            continue
        means = v[:n].reshape(-1, bucket).mean(1)  # (n / bucket,)
        centres = torch.arange(n).reshape(-1, bucket).double().mean(1)
        ax2.plot(centres.tolist(), means.tolist(), color=colours.get(scheme), label=scheme)
    if nll_change:
        ax2.axhline(0.0, color="0.5", lw=0.8)
        ax2.axvline(length - 0.5, color="0.4", lw=1, ls=":", label=f"training length L = {length}")
        ax2.set_xlabel(f"position in the longest window (mean over buckets of {bucket})")
        ax2.set_ylabel("NLL change on the same tokens (nats)")
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize="small")
        ax2.set_title("NLL(long window) - NLL(window of L), nonoverlapping", fontsize="medium")
    else:
        ax2.set_axis_off()
    if title:
        fig.suptitle(title)
    if path is not None:
        save_figure(fig, path)
    return fig


@dataclass
class PositionsResult:
    """What the markdown reports; ``results.json`` holds the same as JSON."""

    perplexity: dict  # protocol -> scheme -> {window: ppl}
    nll_change: dict  # scheme -> nll_change_by_position of the longest vs the shortest windows
    runs: dict  # scheme -> parameters, steps, minutes, best valid ppl ...
    settings: dict
    plot: Path | None = None
    markdown: Path | None = None


def _limit_text(minutes, steps) -> str:
    parts = []
    if minutes is not None and not (isinstance(minutes, float) and math.isnan(minutes)):
        parts.append(f"{minutes:g} min")
    if steps is not None:
        parts.append(f"at most {steps} steps")
    return " and ".join(parts) or "?"


def experiment_markdown(res: PositionsResult) -> str:
    """The section body for ``docs/experiments.md``: command, setup, tables, plot path."""
    s = res.settings
    L = s["length"]
    lines = ["### Perplexity at L, 2L, 4L (Press et al. 2022, Fig. 1)", ""]
    if s.get("command"):
        lines += ["```", s["command"], "```", ""]
    m = s["model"]
    lines.append(
        f"Corpus: the {s['language_name']} side of the `trans-de-en` sentence pairs as one token stream "
        f"(each sentence + `</s>`, file order); BPE vocabulary {s['vocab_size']} learned on the training split; "
        f"{s['train_tokens']:,} training tokens, test stream {s['test_tokens']:,} tokens "
        f"({s['test_sentences']} held-out sentences). Model: pre-LN decoder, {m['num_layers']} layers, "
        f"d_model {m['d_model']}, {m['num_heads']} heads, FFN {m['ffn_dim']}, dropout {m['dropout']}, tied "
        f"embeddings; trained on windows of L = {L} tokens, batch {s['batch_size']}, AdamW (no weight decay) "
        f"lr {s['lr']:g} with inverse-sqrt decay after {s['warmup_steps']} warm-up steps, "
        f"{_limit_text(s.get('minutes'), s.get('steps'))} per scheme, {s['threads']} torch thread(s) on "
        f"{s['cpu_count']} CPU(s); "
        f"the checkpoint with the best validation perplexity at L is evaluated."
    )
    lines += ["", "| scheme | parameters | steps | minutes | best valid ppl @ L (step) | 1-min load avg, "
              "start/end of training sessions |", "|---|---:|---:|---:|---:|---|"]
    for scheme, r in res.runs.items():
        lines.append(
            f"| {scheme} | {r['parameters']:,} | {r['steps']} | {r['minutes']} | "
            f"{_fmt(r['best_valid_ppl'], 2)} ({r['best_step']}) | {_load_text(r.get('load', []))} |"
        )
    lines.append("")
    lines.append(markdown_tables(res.perplexity, L))
    learned = res.runs.get("learned", {}).get("position_rows")
    if learned:
        lines.append(
            f"Learned positions: rows 0..{L - 1} (trained) have mean norm {learned['trained_mean_norm']:.2f}; "
            f"rows {L}..{learned['rows'] - 1} were never reached in training and keep their initial values "
            f"(mean norm {_fmt(learned['untrained_mean_norm'], 2)}): beyond L the model adds vectors it has never "
            f"seen. Both are added to scaled token embeddings of mean norm {learned['token_mean_norm']:.1f}."
        )
        lines.append("")
    if res.plot is not None:
        lines.append(
            f"![perplexity ratio and NLL change by position]({res.plot})\n\n"
            f"Plot `{res.plot}`: left, test perplexity at each length divided by that at L (solid: "
            "nonoverlapping, dashed: sliding); right, on the very same test tokens, NLL in a window of 4L "
            "minus NLL in a window of L, by position in the 4L window (0 below L, where both see the same "
            "context; above L the model has more context but positions it never trained on)."
        )
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- running


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - not on every platform
        return None


LOAD_FILE = "loadavg.json"


def _record_load(run_dir: Path, start: int, stop: int, before, after) -> list[dict]:
    """Append the load averages around a training session that advanced ``start -> stop``
    to ``run_dir/loadavg.json`` (a resumed, already finished run adds nothing) and return
    every session's record: the machine is shared, so the minutes mean little without them."""
    from .._io import write_json_atomic

    path = run_dir / LOAD_FILE
    sessions = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
    if stop > start and run_dir.is_dir():
        sessions.append({"steps": [start, stop], "load_before": before, "load_after": after})
        write_json_atomic(sessions, path)
    return sessions


def _load_text(sessions) -> str:
    """``"2.8–6.1"``: the range of the 1-minute load average around the training sessions."""
    ones = [x[0] for sess in sessions for x in (sess.get("load_before"), sess.get("load_after")) if x]
    if not ones:
        return "–"
    lo, hi = min(ones), max(ones)
    return f"{lo:.1f}" if lo == hi else f"{lo:.1f}–{hi:.1f}"


def _check_settings(out: Path, settings: dict) -> None:
    """Refuse to resume runs made with other settings (they would not load, or mean another thing)."""
    path = out / SETTINGS_FILE
    if not path.is_file():
        return
    saved = json.loads(path.read_text(encoding="utf-8"))
    now = json.loads(json.dumps(settings))  # tuples -> lists, as saved
    diff = [f"{k}={saved.get(k)!r} (now {now[k]!r})" for k in _FIXED_SETTINGS if saved.get(k) != now[k]]
    if diff:
        raise ValueError(
            f"--out {out} holds runs made with other settings: {'; '.join(diff)}. "
            "Use another --out, or the same settings to resume them"
        )


def _bar(total: int, desc: str, quiet: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="win", dynamic_ncols=True, file=sys.stderr, leave=False,
                disable=quiet or not sys.stderr.isatty())


def run_experiment(
    out="runs/positions",
    *,
    schemes: Sequence[str] = SCHEMES,
    minutes: float | None = 3.0,
    steps: int | None = None,
    length: int = 64,
    factors: Sequence[int] = EVAL_FACTORS,
    seed: int = 0,
    language: str = "en",
    vocab_size: int = 2000,
    batch_size: int = 32,
    lr: float = 1e-3,
    warmup_steps: int = 100,
    eval_every: int = 100,
    model: Mapping | None = None,
    data=None,
    plot=None,
    command: str | None = None,
    quiet: bool = False,
    print_fn=print,
) -> PositionsResult:
    """Train one :class:`~attnlab.models.decoder_lm.DecoderLM` per scheme, evaluate each at
    ``factors * length`` with both protocols, and write the outputs (see the module docstring).

    Args:
        out: output directory; run directories already in it are resumed (same settings
            required, see ``settings.json``) to the total ``minutes`` / ``steps``.
        schemes: names of :data:`attnlab.nn.POSITIONAL`.
        minutes, steps: training limits per scheme (totals over resumed runs; at least one).
        length: the training length L; factors: evaluation lengths as multiples of L,
            ascending, starting at 1; the last is the horizon H.
        model: overrides of :data:`MODEL_DEFAULTS` (d_model, num_heads, num_layers,
            ffn_dim, dropout, activation).
        data: a :class:`attnlab.translate.DataSettings` (which pairs; held-out sizes).
        plot: where to save the figure (default ``out/positions.png``).
    """
    import torch

    from ..data.tokenizer import SubwordTokenizer
    from ..models.decoder_lm import DecoderLM, DecoderLMConfig
    from ..nn import POSITIONAL
    from ..train.checkpoint import CheckpointManager, load_checkpoint, read_checkpoint
    from ..train.loop import Trainer, TrainConfig, make_scheduler
    from ..translate import DataSettings, load_splits
    from .._io import write_json_atomic, write_text_atomic

    schemes = list(schemes)
    if not schemes:
        raise ValueError(f"schemes is empty; name at least one of {', '.join(POSITIONAL)}")
    unknown = [s for s in schemes if s not in POSITIONAL]
    if unknown:
        raise ValueError(f"unknown scheme(s) {', '.join(map(repr, unknown))}; valid schemes: {', '.join(POSITIONAL)}")
    if len(set(schemes)) != len(schemes):
        raise ValueError(f"schemes must not repeat a name, got {', '.join(schemes)}")
    _positive_int(length, "length")
    factors = tuple(factors)
    if not factors or factors[0] != 1 or any(
        isinstance(f, bool) or not isinstance(f, int) or f < 1 for f in factors
    ) or list(factors) != sorted(set(factors)):
        raise ValueError(f"factors must be ascending distinct ints starting at 1 (e.g. 1, 2, 4), got {factors}")
    if any(factors[-1] % f for f in factors):
        raise ValueError(f"every factor must divide the largest ({factors[-1]}), got {factors}")
    if language not in LANGUAGES:
        raise ValueError(f"unknown language {language!r}; valid languages: {', '.join(LANGUAGES)}")
    if minutes is None and steps is None:
        raise ValueError("set minutes or steps (else training never stops)")
    unknown_sizes = sorted(set(model or {}) - set(MODEL_DEFAULTS))
    if unknown_sizes:
        raise ValueError(f"model: unknown size(s) {unknown_sizes}; valid: {', '.join(MODEL_DEFAULTS)}")
    sizes = {**MODEL_DEFAULTS, **(model or {})}
    horizon = factors[-1] * length
    windows_by_factor = [f * length for f in factors]
    data = data or DataSettings()

    out = Path(out)
    plot = Path(plot) if plot is not None else out / "positions.png"
    settings = {
        "length": length,
        "factors": list(factors),
        "language": language,
        "vocab_size": vocab_size,
        "data": dataclasses.asdict(data),
        "model": sizes,
        "batch_size": batch_size,
        "lr": lr,
        "warmup_steps": warmup_steps,
        "seed": seed,
    }
    _check_settings(out, settings)
    # Fail on a bad size before loading data or training anything.
    DecoderLMConfig(vocab_size=8, positional=schemes[0], max_len=horizon, **sizes)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(settings, out / SETTINGS_FILE)

    splits = load_splits(data)
    side = LANGUAGES[language]
    texts = {name: [pair[side] for pair in pairs] for name, pairs in splits.items()}
    if (out / "tokenizer.json").is_file():
        tokenizer = SubwordTokenizer.load(out)
    else:
        tokenizer = SubwordTokenizer.train(texts["train"], vocab_size=vocab_size)
        tokenizer.save(out)
    streams = {name: token_stream(t, tokenizer) for name, t in texts.items()}
    batches = TrainWindows(streams["train"], length, batch_size)
    valid_windows = make_windows(streams["valid"], length, length=length, horizon=length)
    test_windows = {
        protocol: [make_windows(streams["test"], w, length=length, horizon=horizon, protocol=protocol)
                   for w in windows_by_factor]
        for protocol in WINDOW_PROTOCOLS
    }

    def validate(m) -> dict:
        score = score_windows(m, valid_windows)
        return {"loss": score.loss, "ppl": score.ppl}

    perplexity = {protocol: {} for protocol in WINDOW_PROTOCOLS}
    nll_change, runs = {}, {}
    for scheme in schemes:
        config = DecoderLMConfig(
            vocab_size=tokenizer.vocab_size, positional=scheme, positional_options=scheme_options(scheme, length),
            max_len=horizon, **sizes,
        )
        torch.manual_seed(seed)
        net = DecoderLM(config)
        # No weight decay: rows of a learned table past L keep their initial values
        # (decay would shrink exactly the rows that never get a gradient).
        optimizer = torch.optim.AdamW(net.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
        scheduler = make_scheduler(optimizer, "inverse_sqrt", warmup_steps=warmup_steps)
        run_dir = out / scheme
        last = CheckpointManager(run_dir).latest()
        resume = last is not None
        start_step = read_checkpoint(last).state.get("progress", {}).get("step", 0) if resume else 0
        print_fn(f"== {scheme}: {net.num_parameters():,} parameters, {_limit_text(minutes, steps)} "
                 f"({'resuming' if resume else 'new run'} in {run_dir})")
        trainer = Trainer(
            net, optimizer, lm_loss, batches, run_dir,
            TrainConfig(max_minutes=minutes, max_steps=steps, grad_clip=1.0, log_every=50, eval_every=eval_every,
                        checkpoint_every=eval_every, seed=seed, unit="tok", quiet=quiet),
            scheduler=scheduler, validate=lambda: validate(net), resume_hint=command,
        )
        before = _loadavg()
        result = trainer.fit(resume=resume)
        loads = _record_load(run_dir, start_step, result.step, before, _loadavg())
        if result.stop_reason == "interrupted":
            raise KeyboardInterrupt
        best = CheckpointManager(run_dir).best() or CheckpointManager(run_dir).latest()
        ckpt = load_checkpoint(best, net, restore_rng=False)
        best_step = ckpt.state.get("progress", {}).get("step")
        total = sum(w.inputs.shape[0] for ws in test_windows.values() for w in ws)
        bar = _bar(total, f"evaluating {scheme}", quiet)
        for protocol, ws in test_windows.items():
            scores = [score_windows(net, w, progress=bar.update) for w in ws]
            perplexity[protocol][scheme] = {w.window: sc.ppl for w, sc in zip(ws, scores)}
            if protocol == "nonoverlapping":
                nll_change[scheme] = nll_change_by_position(scores[-1], scores[0])
        bar.close()
        runs[scheme] = {
            "parameters": net.num_parameters(),
            "steps": result.step,
            "minutes": round(result.train_seconds / 60, 2),
            "best_step": best_step,
            "best_valid_ppl": math.exp(result.best_metric) if result.best_metric is not None else None,
            "positional_options": dict(config.positional_options),
            "load": loads,
        }
        if scheme == "learned":
            rows = net.input_positional.weight.detach().norm(dim=1)  # (4L,)
            runs[scheme]["position_rows"] = {
                "rows": rows.shape[0],
                # what they are added to: E[x] * sqrt(d), averaged over the vocabulary
                "token_mean_norm": float(net.embed.weight.detach().norm(dim=1).mean() * net.embed_scale),
                "trained_mean_norm": float(rows[:length].mean()),
                "untrained_mean_norm": float(rows[length:].mean()) if rows.shape[0] > length else None,
            }
        print_fn(f"   {result.step} steps; best valid ppl @ {length}: {_fmt(runs[scheme]['best_valid_ppl'], 2)}; test ppl "
                 + ", ".join(f"{w}: {_fmt(v, 2)}" for w, v in perplexity['nonoverlapping'][scheme].items()))

    full_settings = {
        **settings,
        "language_name": {"de": "German", "en": "English"}[language],
        "schemes": schemes,
        "minutes": minutes,
        "steps": steps,
        "horizon": horizon,
        "train_tokens": int(streams["train"].shape[0]),
        "valid_tokens": int(streams["valid"].shape[0]),
        "test_tokens": int(streams["test"].shape[0]),
        "test_sentences": len(texts["test"]),
        "scored_tokens": {p: ws[0].num_scored for p, ws in test_windows.items()},
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "command": command,
    }
    res = PositionsResult(perplexity, nll_change, runs, full_settings)
    res.plot = plot
    plot_positions(perplexity, nll_change, length, plot,
                   title=f"{full_settings['language_name']} LM trained on L = {length} tokens")
    write_json_atomic(_to_json(res), out / "results.json")
    res.markdown = out / "positions.md"
    write_text_atomic(experiment_markdown(res), res.markdown)
    print_fn("")
    print_fn(markdown_tables(perplexity, length))
    print_fn(f"plot: {res.plot}\nmarkdown for docs/experiments.md: {res.markdown}")
    return res


def _to_json(res: PositionsResult) -> dict:
    return {
        "settings": res.settings,
        "runs": res.runs,
        "perplexity": {p: {s: {str(w): v for w, v in by.items()} for s, by in d.items()} for p, d in res.perplexity.items()},
        "nll_change_by_position": res.nll_change,
    }


# ----------------------------------------------------------------------------- CLI


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``experiment positions`` to the CLI."""
    from ..cli import command_group
    from .._argtypes import positive_float
    from .._argtypes import positive_int as _positive_count
    from .._argtypes import add_threads_argument as _add_threads_argument

    group = command_group(subparsers, "experiment", help="reproduce published claims: attnlab experiment TASK")
    p = group.add_parser(
        "positions",
        help="positional encodings: perplexity at L, 2L, 4L after training on L (Press et al. 2022)",
        description=(
            "Train the same small decoder-only LM with sinusoidal, learned, Shaw relative, T5 bias, RoPE and ALiBi\n"
            "positions on the English (or German) side of trans-de-en, on windows of L tokens, then measure test\n"
            "perplexity on windows of L, 2L and 4L tokens (two protocols scoring the same tokens at every length).\n"
            "The claim under test: ALiBi extrapolates to longer inputs; T5 partly, RoPE a little, sinusoidal not.\n"
            "Writes OUT/results.json, the plot and OUT/positions.md (for docs/experiments.md); re-running resumes\n"
            "the runs in OUT (a finished experiment is only re-evaluated)."
        ),
        epilog="example:\n  attnlab experiment positions --minutes 3 --length 64",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", metavar="DIR", type=Path, default=Path("runs/positions"),
                   help="output directory (default runs/positions)")
    p.add_argument("--schemes", default=",".join(SCHEMES),
                   help=f"comma-separated positional schemes (default {','.join(SCHEMES)}; 'none' is also valid)")
    p.add_argument("--minutes", type=positive_float, default=3.0, help="training minutes per scheme (default 3)")
    p.add_argument("--steps", type=_positive_count, default=None, metavar="N",
                   help="also stop each scheme after N optimizer steps (default: minutes only)")
    p.add_argument("--length", type=_positive_count, default=64, metavar="L",
                   help="training length L in tokens; evaluated at L, 2L, 4L (default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialization and data order (default 0)")
    p.add_argument("--language", choices=sorted(LANGUAGES), default="en", help="side of the pairs (default en)")
    p.add_argument("--vocab-size", type=_positive_count, default=2000, metavar="N", help="BPE vocabulary (default 2000)")
    p.add_argument("--batch-size", type=_positive_count, default=32, metavar="N", help="windows per step (default 32)")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="peak learning rate (default 1e-3)")
    p.add_argument("--d-model", type=_positive_count, default=MODEL_DEFAULTS["d_model"], metavar="N",
                   help=f"model width (default {MODEL_DEFAULTS['d_model']}; FFN is 4x)")
    p.add_argument("--layers", type=_positive_count, default=MODEL_DEFAULTS["num_layers"], metavar="N",
                   help=f"decoder layers (default {MODEL_DEFAULTS['num_layers']})")
    p.add_argument("--heads", type=_positive_count, default=MODEL_DEFAULTS["num_heads"], metavar="N",
                   help=f"attention heads (default {MODEL_DEFAULTS['num_heads']})")
    p.add_argument("--plot", metavar="PATH", type=Path, default=None,
                   help="where to save the plot (default OUT/positions.png)")
    _add_threads_argument(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``attnlab experiment positions`` with parsed arguments."""
    from .._io import check_output_path
    from ..nn import POSITIONAL

    schemes = [s.strip() for s in args.schemes.split(",") if s.strip()]
    unknown = [s for s in schemes if s not in POSITIONAL]
    if unknown or not schemes:
        raise ValueError(
            f"--schemes: unknown scheme(s) {', '.join(unknown) or '(none given)'}; valid schemes: {', '.join(POSITIONAL)}"
        )
    if args.length < 2:
        raise ValueError(f"--length must be at least 2 tokens, got {args.length}")
    if args.d_model % args.heads:
        raise ValueError(f"--d-model ({args.d_model}) must be divisible by --heads ({args.heads})")
    check_output_path(args.plot, "--plot")
    command = (
        f"attnlab experiment positions --out {args.out} --schemes {','.join(schemes)} --minutes {args.minutes:g} "
        + (f"--steps {args.steps} " if args.steps else "")
        + f"--length {args.length} --seed {args.seed} --language {args.language} --vocab-size {args.vocab_size} "
        f"--batch-size {args.batch_size} --lr {args.lr:g} --d-model {args.d_model} --layers {args.layers} "
        f"--heads {args.heads} --threads {args.threads}" + (f" --plot {args.plot}" if args.plot else "")
    )
    import torch

    torch.set_num_threads(args.threads)
    started = time.monotonic()
    model = {"d_model": args.d_model, "num_layers": args.layers, "num_heads": args.heads, "ffn_dim": 4 * args.d_model}
    run_experiment(args.out, schemes=schemes, minutes=args.minutes, steps=args.steps, length=args.length,
                   seed=args.seed, language=args.language, vocab_size=args.vocab_size, batch_size=args.batch_size,
                   lr=args.lr, model=model, plot=args.plot, command=command)
    print(f"done in {(time.monotonic() - started) / 60:.1f} min")
    return 0
