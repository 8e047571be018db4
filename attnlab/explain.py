"""``attnlab explain``: self-attention on a real sentence, one step at a time.

The walkthrough follows the order textbooks teach (Raschka, *Machine Learning Q and AI*,
ch. 16; Hung-yi Lee's lecture on self-attention; Vaswani et al., 2017):

1. tokens and their embeddings ``X`` (MiniLM's pretrained WordPiece embeddings, or
   seeded random vectors),
2. queries, keys and values: ``Q = K = V = X`` in the weight-free form,
   ``Q = X W_q, K = X W_k, V = X W_v`` in the projected form,
3. raw scores ``S = Q K^T``,
4. scaling by ``1 / sqrt(d_k)`` (projected form; the weight-free form is unscaled),
5. ``A = softmax(S)`` row by row, each row a distribution over the sentence,
6. outputs ``Z = A V``, each row a weighted average of the value rows.

Every matrix comes from :mod:`attnlab.functional` (``dot_score``, ``softmax``), and the
walkthrough checks itself: its step-by-step ``A`` and ``Z`` must equal
:func:`attnlab.functional.attend` and torch's ``scaled_dot_product_attention``.

Heavy libraries (torch, rich, matplotlib) are imported inside functions so that
``attnlab --help`` does not pay for them.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ._argtypes import nonnegative_int, positive_int
from ._io import check_output_path, write_json_atomic

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from rich.console import Console

__all__ = [
    "FORMS",
    "FORM_CHOICES",
    "EMBEDDING_SOURCES",
    "FormResult",
    "Walkthrough",
    "build_walkthrough",
    "find_focus",
    "render",
    "plot_walkthrough",
    "walkthrough_to_dict",
    "register",
    "run",
]

EMBEDDING_SOURCES = ("pretrained", "random")
FORM_CHOICES = ("both", "simple", "projected")
DEFAULT_D_K = 4
DEFAULT_RANDOM_DIM = 384
_SELF_CHECK_ATOL = 1e-10  # everything runs in float64
_PRONOUNS = ("it", "he", "she", "they", "him", "her", "them", "its", "his", "their", "this", "that")


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class FormResult:
    """One form of self-attention worked through on ``X`` (all tensors float64).

    Shape:
        q, k ``(T, d_k)``; v ``(T, d_v)``; w_q, w_k ``(D, d_k)``, w_v ``(D, d_v)`` (``None``
        in the weight-free form); scores, scaled_scores, weights ``(T, T)``; output ``(T, d_v)``.
    """

    name: str  # key in FORMS
    title: str
    equation: str
    score: str  # the attnlab.functional score name this form uses
    q: "torch.Tensor"
    k: "torch.Tensor"
    v: "torch.Tensor"
    w_q: "torch.Tensor | None"
    w_k: "torch.Tensor | None"
    w_v: "torch.Tensor | None"
    scores: "torch.Tensor"
    scale: float
    scaled_scores: "torch.Tensor"
    weights: "torch.Tensor"
    output: "torch.Tensor"
    check: dict  # max |difference| against each reference, and row-sum error


@dataclass(frozen=True)
class Walkthrough:
    """Everything the walkthrough prints, as data (see :func:`walkthrough_to_dict`).

    Shape: x ``(T, D)``; one :class:`FormResult` per form shown.
    """

    sentence: str
    tokens: list
    source: str  # "pretrained" or "random" (what was actually used)
    source_detail: str
    note: str | None  # set when the pretrained embeddings were asked for but missing
    special_tokens: bool
    x: "torch.Tensor"
    seed: int
    d_k: int
    forms: dict = field(default_factory=dict)  # name -> FormResult
    scaling_demo: list = field(default_factory=list)  # rows of the step-4 table
    heads_note: str = ""

    @property
    def labels(self) -> list[str]:
        """Token labels; a token that occurs more than once gets a subscript (``the₁``, ``the₂``)."""
        return _unique_labels(self.tokens)


_SUBSCRIPTS = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")


def _unique_labels(tokens: list[str]) -> list[str]:
    counts: dict[str, int] = {}
    for t in tokens:
        counts[t] = counts.get(t, 0) + 1
    seen: dict[str, int] = {}
    out = []
    for t in tokens:
        if counts[t] > 1:
            seen[t] = seen.get(t, 0) + 1
            out.append(t + str(seen[t]).translate(_SUBSCRIPTS))
        else:
            out.append(t)
    return out


# ----------------------------------------------------------------------------- step 1


def _plural(n: int, desc: str) -> str:
    word, _, rest = desc.partition(" (")
    return f"{n} {word}{'' if n == 1 else 's'}" + (f" ({rest}" if rest else "")


def _regex_tokens(sentence: str) -> list[str]:
    # Used only when MiniLM's tokenizer is not installed: words and punctuation, lower-cased.
    return re.findall(r"\w+|[^\w\s]", sentence.lower())


def _random_embeddings(tokens: list[str], dim: int, seed: int) -> "torch.Tensor":
    """One N(0, 1/dim) vector per distinct token (rows of length ~1, like MiniLM's).

    Each vector depends only on (seed, token), so a token gets the same vector in every
    sentence and repeated tokens share a row, as with a real embedding table.
    """
    import torch

    rows = []
    for t in tokens:
        g = torch.Generator().manual_seed(((seed & 0x7FFFFFFF) << 32) | zlib.crc32(t.encode("utf-8")))
        rows.append(torch.randn(dim, generator=g, dtype=torch.float64) / math.sqrt(dim))
    return torch.stack(rows)  # (T, dim)


def _tokens_and_embeddings(sentence: str, *, embeddings: str, seed: int, dim: int, special_tokens: bool):
    """Returns ``(tokens, x (T, D) float64, source, source_detail, note, heads_note)``."""
    import torch

    from .data import minilm

    note = None
    tokenizer = None
    try:
        tokenizer = minilm.load_tokenizer()
    except minilm.MiniLMNotAvailable as exc:
        if embeddings == "pretrained":
            note = f"{exc}. Using seeded random embeddings instead."
            embeddings = "random"

    if tokenizer is not None:
        enc = tokenizer.encode(sentence, add_special_tokens=special_tokens)
        tokens, ids = list(enc.tokens), list(enc.ids)
        tok_desc = "WordPiece token (MiniLM's uncased tokenizer)"
    else:
        tokens, ids = _regex_tokens(sentence), None
        if special_tokens:
            tokens = ["[CLS]", *tokens, "[SEP]"]
        tok_desc = "token (words and punctuation, lower-cased)"
    if not tokens:
        raise ValueError(f"sentence {sentence!r} has no tokens; give a sentence with at least one word")

    if embeddings == "pretrained":
        vocab, table = minilm.load_word_embeddings()  # (V, D)
        x = table[torch.tensor(ids)].to(torch.float64)  # (T, D)
        cfg = minilm.load_config()
        heads, hidden = cfg["num_attention_heads"], cfg["hidden_size"]
        detail = (
            f"{_plural(len(tokens), tok_desc)}; each selects a row of MiniLM's pretrained embedding table "
            f"({len(vocab)} × {table.shape[1]}), learned in pre-training"
        )
        heads_note = f"MiniLM: {heads} heads with d_k = {hidden // heads} each, on {hidden}-d vectors"
        return tokens, x, "pretrained", detail, note, heads_note
    x = _random_embeddings(tokens, dim, seed)
    detail = (
        f"{_plural(len(tokens), tok_desc)}; each distinct token gets a random {dim}-d vector "
        f"(entries N(0, 1/{dim}), seed {seed}) that carries no meaning"
    )
    heads_note = "the original Transformer: 8 heads with d_k = 64 each, on 512-d vectors"
    return tokens, x, "random", detail, note, heads_note


# ----------------------------------------------------------------------------- steps 2-6


def _attend_step_by_step(q, k, v, *, score: str, scale: float) -> dict:
    """Steps 3-6 with attnlab.functional, then the self-check against two references.

    Shape: q, k (T, d_k); v (T, d_v) -> scores, scaled, weights (T, T); output (T, d_v).
    """
    import torch
    import torch.nn.functional as F

    from .functional import attend, dot_score, softmax

    scores = dot_score(q, k)  # (T, T) step 3
    scaled = scores * scale  # (T, T) step 4
    weights = softmax(scaled, dim=-1)  # (T, T) step 5
    output = weights @ v  # (T, d_v) step 6

    ref = attend(q, k, v, score=score, need_weights=True)
    sdpa = F.scaled_dot_product_attention(q, k, v, scale=scale)  # (T, d_v)
    check = {
        "weights_vs_attend": float((weights - ref.weights).abs().max()),
        "output_vs_attend": float((output - ref.output).abs().max()),
        "output_vs_torch_sdpa": float((output - sdpa).abs().max()),
        "row_sum_error": float((weights.sum(-1) - 1).abs().max()),
    }
    worst = max(check.values())
    if not worst <= _SELF_CHECK_ATOL:
        raise RuntimeError(
            f"self-check failed: the step-by-step result differs from the references by {worst:.3g} "
            f"(> {_SELF_CHECK_ATOL:g}): {check}. This is a bug in attnlab; please report it."
        )
    return dict(scores=scores, scaled_scores=scaled, weights=weights, output=output, check=check)


def _simple_form(x, *, d_k: int, generator) -> FormResult:
    """Weight-free self-attention: ``Z = softmax(X X^T) X`` (no scaling, no parameters)."""
    steps = _attend_step_by_step(x, x, x, score="dot", scale=1.0)
    return FormResult(
        name="simple",
        title="weight-free form",
        equation="Z = softmax(X Xᵀ) X",
        score="dot",
        q=x, k=x, v=x, w_q=None, w_k=None, w_v=None,
        scale=1.0,
        **steps,
    )


def _projected_form(x, *, d_k: int, generator) -> FormResult:
    """Scaled dot-product self-attention with projections (Vaswani et al., 2017):
    ``Z = softmax((X W_q)(X W_k)^T / sqrt(d_k)) X W_v``, W drawn from N(0, 1)."""
    import torch

    D = x.shape[-1]
    # N(0, 1) entries: with embedding rows of length ~1, q and k entries get variance ~1,
    # the setting in which Vaswani et al. motivate the 1/sqrt(d_k) scale.
    w_q = torch.randn(D, d_k, generator=generator, dtype=torch.float64)  # (D, d_k)
    w_k = torch.randn(D, d_k, generator=generator, dtype=torch.float64)  # (D, d_k)
    w_v = torch.randn(D, d_k, generator=generator, dtype=torch.float64)  # (D, d_v = d_k)
    q, k, v = x @ w_q, x @ w_k, x @ w_v  # (T, d_k) each
    steps = _attend_step_by_step(q, k, v, score="scaled_dot", scale=1.0 / math.sqrt(d_k))
    return FormResult(
        name="projected",
        title="projected form (scaled dot-product)",
        equation="Z = softmax(Q Kᵀ / √d_k) V",
        score="scaled_dot",
        q=q, k=k, v=v, w_q=w_q, w_k=w_k, w_v=w_v,
        scale=1.0 / math.sqrt(d_k),
        **steps,
    )


#: The forms of self-attention the walkthrough knows, by name.
FORMS: dict[str, Callable] = {"simple": _simple_form, "projected": _projected_form}


def _scaling_demo(x, d_ks, seed: int) -> list[dict]:
    """Score spread and softmax peakiness for several d_k, unscaled vs scaled."""
    import torch

    from .functional import dot_score, softmax

    g = torch.Generator().manual_seed(seed + 1)
    D = x.shape[-1]
    rows = []
    for d in d_ks:
        q = x @ torch.randn(D, d, generator=g, dtype=torch.float64)  # (T, d)
        k = x @ torch.randn(D, d, generator=g, dtype=torch.float64)  # (T, d)
        s = dot_score(q, k)  # (T, T)
        s_scaled = s / math.sqrt(d)
        rows.append(
            dict(
                d_k=d,
                std_raw=float(s.std(correction=0)),
                std_scaled=float(s_scaled.std(correction=0)),
                top_weight_raw=float(softmax(s).max(-1).values.mean()),
                top_weight_scaled=float(softmax(s_scaled).max(-1).values.mean()),
            )
        )
    return rows


def build_walkthrough(
    sentence: str,
    *,
    form: str = "both",
    embeddings: str = "pretrained",
    d_k: int = DEFAULT_D_K,
    seed: int = 0,
    dim: int = DEFAULT_RANDOM_DIM,
    special_tokens: bool = False,
) -> Walkthrough:
    """Compute every matrix of the walkthrough (printing is :func:`render`'s job).

    Args:
        sentence: the text to explain.
        form: "simple" (weight-free), "projected" (Q/K/V projections, scaled), or "both".
        embeddings: "pretrained" (MiniLM, falls back to "random" with a note when the
            package is missing) or "random" (seeded, ``dim``-dimensional).
        d_k: width of the projected queries, keys and values.
        seed: seeds the random projections (and the random embeddings).
        dim: embedding width when ``embeddings="random"``.
        special_tokens: keep MiniLM's ``[CLS]`` and ``[SEP]``.

    Shape: ``x`` (T, D) with D = 384 for MiniLM; weights (T, T); see :class:`FormResult`.

    Raises:
        ValueError: empty sentence, unknown form/embeddings, non-positive d_k or dim.
    """
    import torch

    from ._checks import check_positive_int

    if not isinstance(sentence, str):
        raise TypeError(f"sentence must be a str, got {type(sentence).__name__}")
    if not sentence.strip():
        raise ValueError("sentence is empty; give a sentence to explain, e.g. \"The cat sat on the mat .\"")
    if form not in FORM_CHOICES:
        raise ValueError(f"unknown form {form!r}; valid forms: {', '.join(FORM_CHOICES)}")
    if embeddings not in EMBEDDING_SOURCES:
        raise ValueError(f"unknown embeddings {embeddings!r}; valid embeddings: {', '.join(EMBEDDING_SOURCES)}")
    check_positive_int(d_k, "d_k")
    check_positive_int(dim, "dim")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")

    tokens, x, source, detail, note, heads_note = _tokens_and_embeddings(
        sentence, embeddings=embeddings, seed=seed, dim=dim, special_tokens=special_tokens
    )
    names = list(FORMS) if form == "both" else [form]
    g = torch.Generator().manual_seed(seed)
    forms = {name: FORMS[name](x, d_k=d_k, generator=g) for name in names}
    demo = _scaling_demo(x, sorted({d_k, 16, 64, 256}), seed) if "projected" in forms else []
    return Walkthrough(
        sentence=sentence,
        tokens=tokens,
        source=source,
        source_detail=detail,
        note=note,
        special_tokens=special_tokens,
        x=x,
        seed=seed,
        d_k=d_k,
        forms=forms,
        scaling_demo=demo,
        heads_note=heads_note,
    )


def find_focus(wt: Walkthrough, focus: str | None) -> int:
    """Index of the token to study.

    ``focus`` is a token (case-insensitive; the first occurrence), or a label such as
    ``the₂`` / ``the#2`` / ``the2`` for a repeated token. By default: the first pronoun,
    else the last word.
    """
    tokens = wt.tokens
    if focus is None:
        for i, t in enumerate(tokens):
            if t.lower() in _PRONOUNS:
                return i
        words = [i for i, t in enumerate(tokens) if any(c.isalpha() for c in t) and not t.startswith(("[", "##"))]
        return words[-1] if words else 0
    want = focus.strip().lower()
    labels = [s.lower() for s in wt.labels]
    for i, t in enumerate(tokens):
        if want in (t.lower(), t.lower().removeprefix("##"), labels[i]):
            return i
    numbered = re.fullmatch(r"(.+?)#?(\d+)", want)
    if numbered:
        label = numbered.group(1) + numbered.group(2).translate(_SUBSCRIPTS)
        if label in labels:
            return labels.index(label)
    raise ValueError(f"focus {focus!r} is not a token of the sentence; its tokens are: {' '.join(wt.labels)}")


# ----------------------------------------------------------------------------- printing


def _fmt(v: float, kind: str) -> str:
    """Numbers as printed: embeddings with 3 decimals, everything else with 2."""
    if kind == "emb":
        return f"{v:.3f}"
    a = abs(v)
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def _fmt4(v: float, kind: str) -> str:
    """At most 4 characters (".15", "-.15", "1.63", "-1.6", "12.3"), for narrow terminals."""
    a = abs(v)
    if a < 0.995:
        s = f"{v:.2f}"
        return s.replace("0.", ".", 1) if s not in ("0.00", "-0.00") else "0"
    if a < 9.95:
        return f"{v:.2f}" if v >= 0 else f"{v:.1f}"
    if a < 99.5:
        return f"{v:.1f}" if v >= 0 else f"{v:.0f}"
    return f"{v:.0f}"


def _pick(n: int, limit: int, head: int, tail: int) -> list:
    """Indices to show out of n, with None where an ellipsis goes."""
    if n <= limit:
        return list(range(n))
    return [*range(head), None, *range(n - tail, n)]


def _matrix_table(m, rows, cols, *, title: str, kind: str, console: "Console", corner: str = "",
                  col_idx=None, highlight_row_max: bool = False, extra=None):
    """A rich Table of the (R, C) matrix ``m`` with labelled rows and columns.

    Wide or tall matrices are cut with an ellipsis column/row. When the table is wider
    than the console, column headers are shortened first, then numbers are printed in 4
    characters, so that the numbers themselves are never cut. ``extra`` is an optional
    (header, values) column added at the right (e.g. row lengths).
    """
    from rich.table import Table
    from rich.text import Text

    m = m.detach().cpu()
    R, C = m.shape
    col_idx = _pick(C, 16, 10, 3) if col_idx is None else col_idx
    row_idx = _pick(R, 40, 30, 5)
    shown_rows = [i for i in row_idx if i is not None]
    row_max = m.argmax(-1).tolist() if highlight_row_max else None
    vals = m.tolist()

    def build(fmt, cap):
        t = Table(title=title, title_justify="left", title_style="italic", box=None, padding=(0, 1),
                  pad_edge=False, collapse_padding=True, header_style="bold")
        t.add_column(Text(corner), style="bold", no_wrap=True)
        for j in col_idx:
            head = "…" if j is None else str(cols[j])
            if len(head) > cap:
                head = head[: cap - 1] + "…"
            t.add_column(Text(head), justify="right", no_wrap=True)
        if extra is not None:
            t.add_column(Text(extra[0]), justify="right", style="dim", no_wrap=True)
        for i in row_idx:
            if i is None:
                t.add_row(Text("⋮"), *[Text("⋮") for _ in col_idx], *([Text("")] if extra else []))
                continue
            cells = []
            for j in col_idx:
                if j is None:
                    cells.append(Text("…"))
                    continue
                style = "bold green" if row_max is not None and row_max[i] == j else ""
                cells.append(Text(fmt(vals[i][j], kind), style=style))
            if extra is not None:
                cells.append(Text(_fmt(float(extra[1][i]), "emb")))
            t.add_row(Text(str(rows[i])), *cells)
        return t

    from rich.measure import Measurement

    unbounded = console.options.update_width(1 << 16)  # measure the natural width, not the clamped one
    longest = max([len(str(cols[j])) for j in col_idx if j is not None] or [1])
    for fmt in (_fmt, _fmt4):
        widest_value = max(len(fmt(vals[i][j], kind)) for i in shown_rows for j in col_idx if j is not None)
        for cap in range(max(longest, widest_value), max(widest_value, 2) - 1, -1):
            table = build(fmt, cap)
            if Measurement.get(console, unbounded, table).maximum <= console.width:
                return table
    return table  # still too wide: rich squeezes it


def _weighted_sum(weights_row, labels, vname: str, top: int = 4) -> str:
    import torch

    order = torch.argsort(weights_row, descending=True, stable=True).tolist()
    terms = [f"{float(weights_row[j]):.2f}·{vname}_{labels[j]}" for j in order[:top]]
    rest = len(order) - top
    return " + ".join(terms) + (f" + … ({rest} more terms)" if rest > 0 else "")


class _Printer:
    """Plain text (no rich markup, so ``S[i, j]`` prints as written), headings, tables."""

    def __init__(self, console: "Console"):
        self.console = console
        self.color = console.color_system is not None

    def say(self, text: str = "", style: str | None = None) -> None:
        self.console.print(text, markup=False, style=style)

    def step(self, title: str) -> None:
        from rich.text import Text

        self.console.print()
        self.console.rule(Text(title, style="bold cyan"), align="left")

    def part(self, title: str) -> None:
        from rich.text import Text

        self.console.print()
        self.console.rule(Text(title, style="bold magenta"), characters="═")

    def table(self, m, rows, cols, **kw) -> None:
        self.console.print(_matrix_table(m, rows, cols, console=self.console, **kw))

    def bullets(self, items: list[str]) -> None:
        from rich.table import Table

        grid = Table.grid(padding=(0, 1))
        grid.add_column(no_wrap=True)
        grid.add_column()
        for item in items:
            grid.add_row(" •", item)
        self.console.print(grid)


def render(wt: Walkthrough, console: "Console", *, focus: str | None = None) -> None:
    """Print the walkthrough of ``wt`` to a rich ``console``."""
    out = _Printer(console)
    labels = wt.labels
    T, D = wt.x.shape
    f = find_focus(wt, focus)
    fl = labels[f]

    console.print()
    out.say("Self-attention, step by step", style="bold")
    if wt.source == "pretrained":
        src = f"MiniLM's pretrained WordPiece embeddings, {D}-d (--embeddings random for random ones)"
    else:
        src = f"seeded random vectors, {D}-d"
    short = {"simple": "weight-free", "projected": "projected"}
    out.say(f"sentence:    {wt.sentence!r}")
    out.say(f"embeddings:  {src}")
    out.say(f"forms:       {' and '.join(short[n] for n in wt.forms)} (--form simple|projected|both)")
    out.say(f"d_k = {wt.d_k} · seed = {wt.seed} · focus token: {fl!r} (--focus WORD)")
    if wt.note:
        out.say(f"note: {wt.note}", style="yellow")

    out.step("Step 1 · tokens and embeddings X")
    special = ("[CLS] and [SEP] are kept" if wt.special_tokens else
               "The [CLS] and [SEP] markers MiniLM adds are left out; --special-tokens keeps them")
    out.say(f"The sentence becomes {wt.source_detail}. {special}.")
    out.say(f"X is {T} × {D}: one row per token (first and last columns shown; ‖x‖ is the row's length).")
    out.table(wt.x, labels, [f"d{j}" for j in range(D)], title=f"X  ({T} × {D})", kind="emb", corner="token",
              col_idx=_pick(D, 8, 5, 1), extra=("‖x‖", wt.x.norm(dim=-1).tolist()))
    out.say("A real Transformer also adds position embeddings and a LayerNorm before attention; they are "
            "left out here so you see the word vectors alone.")

    for fr in wt.forms.values():
        _render_form(wt, fr, out, f)

    out.step("What to notice")
    items = []
    for fr in wt.forms.values():
        w = fr.weights[f]
        top = w.topk(min(3, T))
        listing = ", ".join(f"{labels[j]} {float(p):.2f}" for p, j in zip(top.values, top.indices.tolist()))
        extra = " (random W)" if fr.w_q is not None else ""
        items.append(f"{fr.title.split(' (')[0].capitalize()}{extra}: “{fl}” attends most to {listing}.")
    if "simple" in wt.forms:
        s = wt.forms["simple"].scores
        self_top = int((s.diagonal() >= s.max(-1).values - 1e-12).sum())
        txt = (f"In the weight-free form {self_top} of {T} tokens score highest against themselves: with "
               "q = k = x, the score x·x is the squared length of x, which other tokens rarely beat.")
        if "projected" in wt.forms:
            p = wt.forms["projected"].scores
            p_self = int((p.diagonal() >= p.max(-1).values - 1e-12).sum())
            txt += (f" With separate W_q and W_k, {p_self} of {T} do: a query can look for something other "
                    "than itself (say, a pronoun for the noun it refers to).")
        items.append(txt)
    dups = [t for i, t in enumerate(wt.tokens) if t in wt.tokens[:i]]
    if dups:
        same = [labels[i] for i, t in enumerate(wt.tokens) if t == dups[0]]
        items.append(f"{' and '.join(same)} have identical rows everywhere: attention alone does not see word "
                     "order. Transformers add positional encodings to X for that.")
    if "projected" in wt.forms:
        items.append(f"W_q, W_k, W_v are random here (seed {wt.seed}), so the projected pattern means nothing "
                     "yet; training learns them so that the right tokens get the weight.")
    items.append(f"A is {T} × {T}: every token is scored against every token, so time and memory grow with "
                 "the square of the sentence length.")
    items.append(f"A real layer runs several heads side by side, each with its own W_q, W_k, W_v "
                 f"({wt.heads_note}), and concatenates their outputs Z.")
    out.bullets(items)

    worst = max(max(fr.check.values()) for fr in wt.forms.values())
    console.print()
    out.say(f"✓ Self-check: the step-by-step A and Z equal attnlab.functional.attend and torch's "
            f"scaled_dot_product_attention (max |difference| {worst:.1e}); every row of A sums to 1.",
            style="green")


def _render_form(wt: Walkthrough, fr: FormResult, out: _Printer, f: int) -> None:
    import torch

    from .functional import softmax

    labels = wt.labels
    T, D = wt.x.shape
    fl = labels[f]
    bold_note = " (each row's largest weight in bold green)" if out.color else ""
    out.part(f"{fr.title.capitalize()}:  {fr.equation}")
    if fr.name == "simple":
        out.say("The form textbooks start with: no trainable weights; each token's query, key and value "
                "are its own embedding.")
        out.step("Step 2 · queries, keys, values: Q = K = V = X")
        out.say("Nothing is learned: how much token i attends to token j depends only on how similar their "
                "embeddings are.")
        out.step("Step 3 · scores S = X Xᵀ")
        out.say("S[i, j] = x_i · x_j, the dot product of the embeddings of token i (row) and token j "
                "(column): large when the two vectors point the same way. S is symmetric.")
    else:
        d = wt.d_k
        out.say("The form Transformers use (Vaswani et al., 2017): three weight matrices give every token "
                "a query, a key and a value.")
        out.step("Step 2 · queries, keys, values: Q = X W_q, K = X W_k, V = X W_v")
        out.say(f"W_q, W_k, W_v are each {D} × {d} (d_k = {d}; --d-k changes it), so Q, K, V are {T} × {d}. "
                "A query says what token i is looking for, a key what token j offers to be matched "
                "against, a value what token j passes on when it is attended to.")
        out.say(f"Here the W are random (entries N(0, 1), seed {wt.seed}); in a trained model they are "
                "learned, and that is what makes attention useful. Q, K and V all come from the same "
                "sentence, which makes this *self*-attention (Bahdanau's attention matched a decoder state "
                "against the encoder states: two sequences).")
        qkv = torch.cat([fr.q, fr.k, fr.v], dim=-1)  # (T, 3 * d_k)
        names = [f"{p}{j}" for p in "qkv" for j in range(d)]
        cols = []
        for g in range(3):
            cols += [None if j is None else g * d + j for j in _pick(d, 5, 3, 1)]
        out.table(qkv, labels, names, title=f"Q | K | V  ({T} × {d} each)", kind="score", corner="token",
                  col_idx=cols)
        out.step("Step 3 · raw scores S = Q Kᵀ")
        out.say("S[i, j] = q_i · k_j: how well token j's key matches token i's query. Unlike X Xᵀ it is not "
                "symmetric: what i looks for differs from what j looks for.")
    out.table(fr.scores, labels, labels, title=f"S  ({T} × {T}; row i = query token, column j = key token)",
              kind="score")

    if fr.name == "simple":
        std = float(fr.scores.std(correction=0))
        s_div = fr.scores / math.sqrt(D)
        top_div = float(softmax(s_div).max(-1).values.mean())
        out.step("Step 4 · scaling: none in this form")
        out.say(f"The weight-free form is used unscaled. Its scores have std {std:.2f}. Dividing them by "
                f"√{D} = {math.sqrt(D):.1f} would shrink that to {float(s_div.std(correction=0)):.3f} and make every row "
                f"nearly uniform (average top weight {top_div:.3f}, versus 1/{T} = {1 / T:.3f}): the 1/√d_k "
                f"rule is for vectors whose entries have variance ≈ 1, and these entries have std "
                f"{float(wt.x.std(correction=0)):.3f}. The projected form is where it matters.")
    else:
        d = wt.d_k
        var_qk = float(torch.cat([fr.q, fr.k]).var())
        out.step(f"Step 4 · scale by 1/√d_k = 1/√{d} = {fr.scale:.3g}")
        out.say(f"The std of the scores goes from {float(fr.scores.std(correction=0)):.2f} to "
                f"{float(fr.scaled_scores.std(correction=0)):.2f}. Why: q · k adds up d_k products; when the entries of q "
                f"and k have variance ≈ 1 (here {var_qk:.2f}) the sum has variance ≈ d_k, so scores grow like "
                "√d_k. Large scores make softmax give nearly all the weight to one key, where its gradients "
                "vanish and learning stalls. Dividing by √d_k keeps the std near 1 for any d_k. The same X "
                "with random W of other widths:")
        from rich import box
        from rich.table import Table

        t = Table(box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, show_edge=False)
        for h in ("d_k", "std of Q Kᵀ", "std of Q Kᵀ/√d_k", "avg top weight: unscaled", "scaled"):
            t.add_column(h, justify="right")
        for r in wt.scaling_demo:
            t.add_row(str(r["d_k"]), f"{r['std_raw']:.2f}", f"{r['std_scaled']:.2f}",
                      f"{r['top_weight_raw']:.2f}", f"{r['top_weight_scaled']:.2f}")
        out.console.print(t)
        out.say("An average top weight near 1 means softmax has saturated: each row is almost one-hot.")

    rhs = "S" if fr.name == "simple" else "S / √d_k"
    out.step(f"Step 5 · attention weights A = softmax({rhs}), row by row")
    arg = "S" if fr.name == "simple" else "S'"
    defn = "" if fr.name == "simple" else " with S' = S / √d_k"
    out.say(f"A[i, j] = exp({arg}[i, j]) / Σ_k exp({arg}[i, k]){defn}. Row i is token i's attention: how it "
            f"splits 100% of its attention over the sentence, itself included. Every row sums to 1; columns "
            f"need not{bold_note}.")
    out.table(fr.weights, labels, labels, title=f"A  ({T} × {T}; row i = query token, column j = key token)",
              kind="weight", highlight_row_max=True)

    v_name = "x" if fr.name == "simple" else "v"
    out.step(f"Step 6 · outputs Z = A {'X' if fr.name == 'simple' else 'V'}")
    dv = fr.v.shape[-1]
    rows_of = "embedding" if fr.name == "simple" else "value"
    out.say(f"z_i = Σ_j A[i, j] {v_name}_j: the average of the {rows_of} rows weighted by row i of A, a new "
            f"{dv}-d vector for token i that mixes in what it attends to. For “{fl}”:")
    out.say(f"  z_{fl} = {_weighted_sum(fr.weights[f], labels, v_name)}")
    if fr.name == "simple":
        out.say(f"Z is {T} × {dv}, like X (not printed; --json saves it).")
    else:
        out.table(fr.output, labels, [f"z{j}" for j in range(dv)], title=f"Z  ({T} × {dv})", kind="score",
                  corner="token", col_idx=_pick(dv, 8, 5, 1))


# ----------------------------------------------------------------------------- outputs


def plot_walkthrough(wt: Walkthrough, path: str | os.PathLike):
    """Heatmap of A for each form shown, side by side; saved atomically to ``path``."""
    import torch

    from .viz.heatmap import plot_attention

    titles = {
        "simple": r"weight-free: softmax($XX^\top$)",
        "projected": rf"projected: softmax($QK^\top/\sqrt{{d_k}}$), random $W$, $d_k$={wt.d_k}",
    }
    weights = torch.stack([fr.weights for fr in wt.forms.values()])  # (n_forms, T, T)
    src = "MiniLM pretrained embeddings" if wt.source == "pretrained" else "random embeddings"
    sentence = wt.sentence if len(wt.sentence) <= 90 else wt.sentence[:87] + "..."
    return plot_attention(
        weights,
        wt.labels,
        wt.labels,
        title=f"Self-attention weights A ({src})\n“{sentence}”",
        path=path,
        head_titles=[titles[name] for name in wt.forms],
    )


def walkthrough_to_dict(wt: Walkthrough) -> dict:
    """Every matrix as nested lists (rows = tokens), for ``--json``."""

    def mat(t):
        return None if t is None else t.tolist()

    forms = {}
    for name, fr in wt.forms.items():
        d = dict(
            title=fr.title, equation=fr.equation, score=fr.score, scale=fr.scale,
            scores=mat(fr.scores), scaled_scores=mat(fr.scaled_scores), weights=mat(fr.weights),
            output=mat(fr.output), self_check=fr.check,
        )
        if fr.w_q is not None:
            d.update(w_q=mat(fr.w_q), w_k=mat(fr.w_k), w_v=mat(fr.w_v), q=mat(fr.q), k=mat(fr.k), v=mat(fr.v))
        forms[name] = d
    return dict(
        sentence=wt.sentence, tokens=wt.tokens, labels=wt.labels, embeddings=wt.source, note=wt.note,
        special_tokens=wt.special_tokens, seed=wt.seed, d_k=wt.d_k, x=mat(wt.x), forms=forms,
        scaling_demo=wt.scaling_demo,
    )


# ----------------------------------------------------------------------------- CLI


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``explain`` command to the ``attnlab`` CLI (see :mod:`attnlab.cli`)."""
    p = subparsers.add_parser(
        "explain",
        help="walk through self-attention on a sentence, step by step",
        description=(
            "Explain self-attention on a real sentence, step by step: tokens and embeddings,\n"
            "queries/keys/values, scores, scaling by 1/sqrt(d_k), softmax and the weighted sum,\n"
            "with every matrix printed and labelled by token. The walkthrough checks itself\n"
            "against attnlab.functional.attend and torch's scaled_dot_product_attention."
        ),
        epilog=(
            "example:\n"
            '  attnlab explain "The animal did not cross the street because it was too tired ." \\\n'
            "      --out explain.png --json explain.json"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("sentence", help="the sentence to explain (quote it)")
    p.add_argument("--form", choices=FORM_CHOICES, default="both",
                   help="simple = weight-free softmax(X Xᵀ) X; projected = Q/K/V projections, scaled "
                        "(Vaswani et al.); both (default)")
    p.add_argument("--embeddings", choices=EMBEDDING_SOURCES, default="pretrained",
                   help="pretrained MiniLM token embeddings (default; falls back to random if the package "
                        "is missing) or seeded random vectors")
    p.add_argument("--d-k", dest="d_k", type=positive_int, default=DEFAULT_D_K,
                   help=f"width of the projected queries/keys/values (default {DEFAULT_D_K})")
    p.add_argument("--dim", type=positive_int, default=None,
                   help=f"embedding width for --embeddings random (default {DEFAULT_RANDOM_DIM})")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the random weights (default 0)")
    p.add_argument("--focus", metavar="WORD", default=None,
                   help="token to study in 'what to notice' (default: the first pronoun, else the last word)")
    p.add_argument("--special-tokens", action="store_true", help="keep MiniLM's [CLS] and [SEP] tokens")
    p.add_argument("--out", metavar="PATH", type=Path, default=None, help="save a heatmap of the weights (PNG)")
    p.add_argument("--json", metavar="PATH", type=Path, default=None, help="save every matrix as JSON")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``attnlab explain`` with parsed arguments; returns the exit status."""
    # Cheap checks first: a typo should not wait for torch to import.
    if not args.sentence.strip():
        raise ValueError('sentence is empty; give a sentence to explain, e.g. attnlab explain "The cat sat on the mat ."')
    if args.dim is not None and args.embeddings != "random":
        raise ValueError("--dim only applies to --embeddings random (MiniLM's embeddings are 384-d)")
    check_output_path(args.out, "--out")
    check_output_path(args.json, "--json")

    from rich.console import Console

    wt = build_walkthrough(
        args.sentence, form=args.form, embeddings=args.embeddings, d_k=args.d_k, seed=args.seed,
        dim=args.dim or DEFAULT_RANDOM_DIM, special_tokens=args.special_tokens,
    )
    find_focus(wt, args.focus)  # a bad --focus fails before anything is printed
    console = Console(highlight=False)
    render(wt, console, focus=args.focus)
    if args.out is not None:
        plot_walkthrough(wt, args.out)
        # soft_wrap: never break a path across lines, so it can be copied.
        console.print(f"Heatmap of A saved to {args.out} (rows: the attending token; columns: the token "
                      "attended to).", markup=False, soft_wrap=True)
    if args.json is not None:
        write_json_atomic(walkthrough_to_dict(wt), args.json)
        console.print(f"Every matrix saved to {args.json}.", markup=False, soft_wrap=True)
    return 0
