"""The sequence-to-sequence model protocol, its input checks, and the decoders.

Every translation model of :mod:`attnlab.models` follows one protocol
(:class:`Seq2seqModel`), so the decoders below, the training loop and the
experiments never look inside a model:

.. code-block:: python

    logits = model(src, src_lengths, tgt_in)                    # teacher forcing, (B, T, V)
    memory = model.encode(src, src_lengths)                     # whatever decoding needs
    state = model.init_state(memory)
    logits, state, attn = model.decode_step(memory, state, prev_tokens)   # (B, V), ..., (B, S) or None
    memory, state = model.reorder(memory, state, index)         # keep / duplicate rows (beam search)

Decoding:

- :func:`greedy_decode`: ``y_t = argmax_y log p(y | y_<t, x)`` until ``eos``.
- :func:`beam_search`: keep the ``K`` best prefixes by ``log p(y_<=t | x)``; rank the
  finished hypotheses by ``log p(y | x) / lp(|y|)`` with the GNMT length penalty
  ``lp(n) = ((5 + n) / 6)^alpha`` (Wu et al. 2016, "Google's Neural Machine
  Translation System", §7); ``alpha = 0`` ranks by the plain log-probability.

Both return a :class:`Decoded` record: the token ids of each sentence (without
``bos``/``eos``), its attention matrix ``(T_out, S_i)`` (rows: the generated tokens,
columns: the real source tokens; ``None`` for models without attention) and the
log-probability of the output (``eos`` included when it was produced).
"""

from __future__ import annotations

import contextlib
import math
from typing import NamedTuple, Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from .._checks import check_positive_int, fmt_shape

__all__ = [
    "Seq2seqModel",
    "Decoded",
    "greedy_decode",
    "beam_search",
    "length_penalty_gnmt",
    "check_length_penalty",
    "check_source",
    "check_target",
    "check_prev_tokens",
    "check_index",
    "source_mask",
]


# --------------------------------------------------------------------------- protocol


@runtime_checkable
class Seq2seqModel(Protocol):
    """What :func:`greedy_decode`, :func:`beam_search` and the trainer rely on.

    Shape:
        src (B, S) long, src_lengths (B,) long in [1, S], tgt_in (B, T) long
        (``[bos] + y``) -> logits (B, T, tgt_vocab). ``decode_step``: prev_tokens (B,)
        -> logits (B, tgt_vocab), attention (B, S) (zero on padding) or ``None``.
        ``reorder``: index (B',) long -> memory and state with rows ``index``.
    """

    config: object

    def forward(self, src: torch.Tensor, src_lengths: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor: ...

    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor): ...

    def init_state(self, memory): ...

    def decode_step(self, memory, state, prev_tokens: torch.Tensor): ...

    def reorder(self, memory, state, index: torch.Tensor): ...


_PROTOCOL_METHODS = ("encode", "init_state", "decode_step", "reorder")


def _check_model(model) -> None:
    missing = [m for m in _PROTOCOL_METHODS if not callable(getattr(model, m, None))]
    if missing:
        raise TypeError(
            f"model must follow the Seq2seqModel protocol (encode, init_state, decode_step, reorder); "
            f"{type(model).__name__} lacks {', '.join(missing)}"
        )


# ------------------------------------------------------------------ input checks (models)


def _check_ids(x, name: str, ndim: int, want: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of token ids {want}, got {type(x).__name__}")
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer (long) tensor of token ids {want}, got {x.dtype}")
    if x.dim() != ndim or any(s == 0 for s in x.shape):
        raise ValueError(f"{name} must have shape {want} with no empty axis, got {fmt_shape(x.shape)}")


def _check_vocab(x: torch.Tensor, name: str, vocab: int | None, vocab_name: str) -> None:
    if vocab is None:
        return
    lo, hi = int(x.min()), int(x.max())
    if lo < 0 or hi >= vocab:
        raise ValueError(f"{name} holds token ids in [{lo}, {hi}], outside [0, {vocab_name}={vocab})")


def check_source(src, src_lengths, vocab: int | None = None) -> None:
    """``src`` (B, S) integer ids in ``[0, vocab)``; ``src_lengths`` (B,) integers in ``[1, S]``."""
    _check_ids(src, "src", 2, "(B, S)")
    B, S = src.shape
    if not isinstance(src_lengths, torch.Tensor):
        raise TypeError(f"src_lengths must be an integer torch.Tensor of shape (B,) = ({B},), got {type(src_lengths).__name__}")
    if src_lengths.dtype.is_floating_point or src_lengths.dtype.is_complex or src_lengths.dtype == torch.bool:
        raise TypeError(f"src_lengths must be an integer (long) tensor, got {src_lengths.dtype}")
    if src_lengths.shape != (B,):
        raise ValueError(f"src_lengths must have shape (B,) = ({B},) (B from src), got {fmt_shape(src_lengths.shape)}")
    lo, hi = int(src_lengths.min()), int(src_lengths.max())
    if lo < 1 or hi > S:
        raise ValueError(f"src_lengths must lie in [1, S={S}] (S = src.shape[1]), got values in [{lo}, {hi}]")
    _check_vocab(src, "src", vocab, "src_vocab")


def check_target(tgt_in, batch: int, vocab: int | None = None) -> None:
    """``tgt_in`` (B, T) integer ids in ``[0, vocab)`` with ``B = batch``."""
    _check_ids(tgt_in, "tgt_in", 2, "(B, T)")
    if tgt_in.shape[0] != batch:
        raise ValueError(f"tgt_in must have batch size B={batch} (that of src), got {fmt_shape(tgt_in.shape)}")
    _check_vocab(tgt_in, "tgt_in", vocab, "tgt_vocab")


def check_prev_tokens(prev_tokens, batch: int, vocab: int | None = None) -> None:
    """``prev_tokens`` (B,) integer ids in ``[0, vocab)`` with ``B = batch``."""
    _check_ids(prev_tokens, "prev_tokens", 1, f"(B,) = ({batch},)")
    if prev_tokens.shape[0] != batch:
        raise ValueError(f"prev_tokens must have shape (B,) = ({batch},) (B from memory), got {fmt_shape(prev_tokens.shape)}")
    _check_vocab(prev_tokens, "prev_tokens", vocab, "tgt_vocab")


def check_index(index, batch: int) -> None:
    """``index`` (B',) integer rows of a batch of ``batch`` rows."""
    _check_ids(index, "index", 1, "(B',)")
    lo, hi = int(index.min()), int(index.max())
    if lo < 0 or hi >= batch:
        raise ValueError(f"index holds rows in [{lo}, {hi}], outside [0, B={batch})")


def source_mask(src: torch.Tensor, src_lengths: torch.Tensor) -> torch.Tensor:
    """Real source positions: (B, S) bool, True = a real token (may be attended)."""
    positions = torch.arange(src.shape[1], device=src.device)  # (S,)
    return positions[None, :] < src_lengths.to(src.device)[:, None]  # (B, S)


# --------------------------------------------------------------------------- decoders


class Decoded(NamedTuple):
    """Output of :func:`greedy_decode` / :func:`beam_search`, one entry per sentence.

    tokens: generated ids without ``bos`` and ``eos``.
    attention: (T_out, S_i) float tensors, ``T_out = len(tokens[i])``, ``S_i`` the real
        source length; ``None`` for a model without attention.
    scores: ``log p(y | x)`` of the output (the ``eos`` step included when produced).
    """

    tokens: list[list[int]]
    attention: list[torch.Tensor | None]
    scores: list[float]


@contextlib.contextmanager
def _eval_mode(model):
    """Decode without dropout, then give the model back in the mode it came in."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _check_decode_args(model, src, src_lengths, bos_id, eos_id, max_len) -> None:
    _check_model(model)
    check_source(src, src_lengths)
    for value, name in ((bos_id, "bos_id"), (eos_id, "eos_id")):
        check_positive_int(value, name, allow_zero=True)
    check_positive_int(max_len, "max_len")


def _finish(tokens: list[int], attn_rows: list[torch.Tensor] | None, length: int):
    if attn_rows is None:
        return None
    if not tokens:
        return torch.zeros(0, length)
    return torch.stack(attn_rows[: len(tokens)])[:, :length].float().cpu()  # (T_out, S_i)


@torch.no_grad()
def greedy_decode(model, src, src_lengths, bos_id: int, eos_id: int, max_len: int = 100) -> Decoded:
    """Greedy decoding: at each step the most probable next token, until ``eos``.

    ``y_t = argmax_y log p(y | y_<t, x)``; a sentence stops at its first ``eos`` or
    after ``max_len`` tokens (``eos`` counted). The model is run in eval mode (and put
    back in its previous mode afterwards); batched over sentences.

    Args:
        model: a :class:`Seq2seqModel`.
        src: (B, S) source ids, padded; src_lengths: (B,) real lengths.
        bos_id, eos_id: start and end token ids.
        max_len: most decoding steps.

    Returns:
        :class:`Decoded` (tokens without bos/eos; attention (T_out, S_i) or None; scores).
    """
    _check_decode_args(model, src, src_lengths, bos_id, eos_id, max_len)
    B = src.shape[0]
    lengths = src_lengths.tolist()
    with _eval_mode(model):
        memory = model.encode(src, src_lengths)
        state = model.init_state(memory)
        prev = torch.full((B,), bos_id, dtype=torch.long, device=src.device)  # (B,)
        finished = torch.zeros(B, dtype=torch.bool, device=src.device)  # (B,)
        score = torch.zeros(B, dtype=torch.float64, device=src.device)  # (B,)
        steps, attns = [], []
        for _ in range(max_len):
            logits, state, attn = model.decode_step(memory, state, prev)  # (B, V), (B, S) or None
            logp = F.log_softmax(logits.float(), dim=-1)  # (B, V)
            best_logp, best = logp.max(dim=-1)  # (B,), (B,)
            score += torch.where(finished, 0.0, best_logp.double())
            best = torch.where(finished, eos_id, best)
            steps.append(best)
            attns.append(attn)
            finished |= best == eos_id
            prev = best
            if bool(finished.all()):
                break
    out = torch.stack(steps, dim=1).tolist()  # (B, T_out)
    has_attn = attns[0] is not None
    tokens, attention = [], []
    for b in range(B):
        seq = out[b]
        seq = seq[: seq.index(eos_id)] if eos_id in seq else seq
        tokens.append(seq)
        rows = [a[b] for a in attns] if has_attn else None
        attention.append(_finish(seq, rows, lengths[b]))
    return Decoded(tokens, attention, score.tolist())


def check_length_penalty(value, name: str = "length_penalty") -> float:
    """``value`` as a GNMT length-penalty ``alpha`` (a finite float >= 0), else a clear error."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a float >= 0 (the GNMT alpha, finite; 0 ranks by log p alone), got {value!r}")
    return float(value)


def length_penalty_gnmt(length: int, alpha: float) -> float:
    """``lp(n) = ((5 + n) / 6)^alpha`` (Wu et al. 2016, §7); 1 when ``alpha = 0``."""
    return ((5.0 + length) / 6.0) ** alpha


class _Hyp(NamedTuple):
    tokens: list[int]  # generated ids, no bos (eos not included)
    attn: list[torch.Tensor] | None  # one (S,) row per generated token
    score: float  # log p, eos step included when finished


@torch.no_grad()
def beam_search(
    model,
    src,
    src_lengths,
    bos_id: int,
    eos_id: int,
    beam_size: int = 5,
    max_len: int = 100,
    length_penalty: float = 0.6,
) -> Decoded:
    """Beam search, batched over sentences (``B * beam_size`` rows per step).

    Each step extends every live prefix by every token and keeps, per sentence, the
    best ``2K`` candidates by ``log p(y_<=t | x)``: an ``eos`` among the first ``K``
    finishes that hypothesis, the first ``K`` others stay live (as in fairseq). A
    sentence stops when it has ``K`` finished hypotheses or after ``max_len`` steps
    (then its live prefixes count as finished). The output is the hypothesis with the
    best ``log p(y | x) / lp(n)``, ``lp(n) = ((5 + n)/6)^length_penalty`` (Wu et al.
    2016), ``n`` = number of generated tokens, ``eos`` included. ``beam_size = 1`` is
    greedy decoding.

    Args:
        model: a :class:`Seq2seqModel`.
        src: (B, S) source ids, padded; src_lengths: (B,) real lengths.
        bos_id, eos_id: start and end token ids.
        beam_size: ``K`` >= 1.
        max_len: most decoding steps.
        length_penalty: ``alpha`` >= 0 of the GNMT length penalty.

    Returns:
        :class:`Decoded`; ``scores`` are the plain ``log p(y | x)`` of the chosen outputs.
    """
    _check_decode_args(model, src, src_lengths, bos_id, eos_id, max_len)
    K = check_positive_int(beam_size, "beam_size")
    check_length_penalty(length_penalty)
    B, device = src.shape[0], src.device
    lengths = src_lengths.tolist()
    neg_inf = float("-inf")

    def normalized(h: _Hyp, finished: bool) -> float:
        return h.score / length_penalty_gnmt(len(h.tokens) + int(finished), length_penalty)

    with _eval_mode(model):
        memory = model.encode(src, src_lengths)
        state = model.init_state(memory)
        rows = torch.arange(B, device=device).repeat_interleave(K)  # (B*K,): beam k of sentence b is row b*K + k
        memory, state = model.reorder(memory, state, rows)
        # Only beam 0 is live at the start, so the first step does not pick K copies.
        live: list[list[_Hyp | None]] = [[_Hyp([], [], 0.0)] + [None] * (K - 1) for _ in range(B)]
        done_hyps: list[list[tuple[float, _Hyp]]] = [[] for _ in range(B)]
        done = [False] * B
        prev = torch.full((B * K,), bos_id, dtype=torch.long, device=device)  # (B*K,)
        has_attn = None
        for step in range(max_len):
            logits, state, attn = model.decode_step(memory, state, prev)  # (B*K, V), (B*K, S) or None
            has_attn = attn is not None
            V = logits.shape[-1]
            logp = F.log_softmax(logits.float(), dim=-1).view(B, K, V)  # (B, K, V)
            base = torch.tensor(
                [[neg_inf if h is None else h.score for h in beams] for beams in live], dtype=torch.float64, device=device
            )  # (B, K)
            cand = (base.double()[..., None] + logp.double()).view(B, K * V)  # (B, K*V)
            n_cand = min(2 * K, K * V)
            top_score, top_index = cand.topk(n_cand, dim=-1)  # (B, 2K)
            top_score, top_index = top_score.tolist(), top_index.tolist()
            attn_cpu = attn.float().cpu().view(B, K, -1) if has_attn else None  # (B, K, S)
            parents = []  # (B*K,) row each new beam continues
            next_tokens = []
            new_live: list[list[_Hyp | None]] = []
            last = step == max_len - 1
            for b in range(B):
                beams: list[_Hyp | None] = []
                src_rows: list[int] = []
                if not done[b]:
                    for rank, (s, flat) in enumerate(zip(top_score[b], top_index[b])):
                        if s == neg_inf or len(beams) == K:
                            break
                        k, tok = divmod(flat, V)
                        parent = live[b][k]
                        row = attn_cpu[b, k] if has_attn else None
                        attn_hist = parent.attn + [row] if has_attn else None
                        if tok == eos_id:
                            if rank < K and len(done_hyps[b]) < K:
                                h = _Hyp(parent.tokens, attn_hist, s)
                                done_hyps[b].append((normalized(h, True), h))
                            continue
                        beams.append(_Hyp(parent.tokens + [tok], attn_hist, s))
                        src_rows.append(b * K + k)
                    if len(done_hyps[b]) >= K or last:
                        done[b] = True
                        if last:
                            done_hyps[b].extend((normalized(h, False), h) for h in beams)
                n_live = len(beams)
                beams += [None] * (K - n_live)
                src_rows += [b * K] * (K - n_live)  # placeholders: a dead beam, never read
                new_live.append(beams)
                parents.extend(src_rows)
                next_tokens.extend(eos_id if h is None else h.tokens[-1] for h in beams)
            live = new_live
            if all(done):
                break
            index = torch.tensor(parents, dtype=torch.long, device=device)  # (B*K,)
            memory, state = model.reorder(memory, state, index)
            prev = torch.tensor(next_tokens, dtype=torch.long, device=device)  # (B*K,)

    tokens, attention, scores = [], [], []
    for b in range(B):
        if not done_hyps[b]:  # every live prefix fell off (cannot happen with V >= 2); keep a trace
            done_hyps[b] = [(h.score, h) for h in live[b] if h is not None] or [(0.0, _Hyp([], [], 0.0))]
        _, best = max(done_hyps[b], key=lambda pair: pair[0])
        tokens.append(best.tokens)
        attention.append(_finish(best.tokens, best.attn, lengths[b]) if has_attn else None)
        scores.append(best.score)
    return Decoded(tokens, attention, scores)
