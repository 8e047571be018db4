"""One place that picks the fastest correct path for an attention call.

:func:`attention` has the contract of :func:`attnlab.functional.attend` (same
arguments, same :class:`AttentionResult`, same numbers to float rounding) plus two
structured hints that have fast kernels: a sliding ``window`` and a tile ``bias_fn``
(ALiBi / T5). It chooses, in this order:

=============  ============================================================  ==============================
path           when                                                          runs
=============  ============================================================  ==============================
"window"       ``window=`` given, dot-family score, softmax, no mask/bias    :func:`.window.window_attention`
"bias"         ``bias_fn=`` given, dot-family score, softmax, no mask/bias   :func:`.bias.biased_attention`
"sdpa"         dot / scaled_dot / general score, softmax, bool mask and/or   ``F.scaled_dot_product_attention``
               float bias (weights, when asked, recomputed exactly from       (+ :func:`weights_from_lse`)
               the log-sum-exp)
"additive"     additive / concat score, softmax, no float bias, no dropout   :func:`.additive.additive_attention`
"normalized"   dot-family score, sigmoid / relu, no bias/weights/dropout     :func:`.normalized.normalized_attention`
"reference"    anything else (callables, sparsemax, local-p factors ...)     :func:`attnlab.functional.attend`
=============  ============================================================  ==============================

``impl="reference"`` forces the readable path (tests compare the two); ``impl=<path>``
forces one path and raises ``ValueError`` if it does not apply.

Which path ran is visible three ways: ``with explain_paths() as log:`` collects
``PathRecord(caller, path, reason)`` entries; the logger ``"attnlab.dispatch"`` gets one
DEBUG line per call; ``ATTNLAB_DISPATCH_LOG=1`` in the environment turns that logger on
(to stderr) at import.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import os
from typing import Callable, Iterator, NamedTuple

import torch
import torch.nn.functional as F

from .._checks import (
    broadcast_shape,
    check_bool_mask,
    check_broadcastable,
    check_probability,
    check_tensor,
    fmt_shape,
    mask_fill_value,
)
from ..functional.attend import AttentionResult, attend
from ..functional.masks import causal_mask, mask_and, window_mask
from ..functional.normalizers import relu_normalizer, sigmoid_normalizer, softmax
from ..functional.scores import additive_score, concat_score, dot_score, general_score, scaled_dot_score

__all__ = [
    "attention",
    "choose_path",
    "explain_paths",
    "PathRecord",
    "PATHS",
    "record_path",
    "sdpa_with_lse",
    "weights_from_lse",
]

logger = logging.getLogger("attnlab.dispatch")
if os.environ.get("ATTNLAB_DISPATCH_LOG", "").strip() not in ("", "0"):
    logger.setLevel(logging.DEBUG)
    if not logger.handlers:
        _h = logging.StreamHandler()
        _h.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        logger.addHandler(_h)

PATHS = ("window", "bias", "sdpa", "additive", "normalized", "reference")


class PathRecord(NamedTuple):
    """One dispatch decision: who asked, which path ran, and why."""

    caller: str
    path: str
    reason: str


_RECORDERS: contextvars.ContextVar[tuple[list, ...]] = contextvars.ContextVar("attnlab_dispatch_recorders", default=())


@contextlib.contextmanager
def explain_paths() -> Iterator[list[PathRecord]]:
    """Collect the path of every dispatched call made inside the block.

    Example::

        with explain_paths() as log:
            AdditiveAttention(8, 8, 16)(q, k)
        log[0].path  # "additive"
    """
    log: list[PathRecord] = []
    token = _RECORDERS.set(_RECORDERS.get() + (log,))
    try:
        yield log
    finally:
        _RECORDERS.reset(token)


def record_path(caller: str, path: str, reason: str) -> None:
    """Report a decision to :func:`explain_paths` blocks and the ``attnlab.dispatch`` logger.

    Costs two cheap checks when nobody listens (it sits on the decode hot path)."""
    recorders = _RECORDERS.get()
    if recorders:
        rec = PathRecord(caller, path, reason)
        for log in recorders:
            log.append(rec)
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("%s -> %s (%s)", caller, path, reason)


# --------------------------------------------------------------------------- score / normalizer kinds

_DOT_SCORES = {"dot": "dot", "scaled_dot": "scaled_dot", "general": "general"}
_DOT_FNS = {dot_score: "dot", scaled_dot_score: "scaled_dot", general_score: "general"}
_ADDITIVE_FNS = {additive_score: "additive", concat_score: "concat"}
_SOFTMAX = ("softmax", softmax)
_TILED = {"sigmoid": "sigmoid", "relu": "relu", sigmoid_normalizer: "sigmoid", relu_normalizer: "relu"}


def _score_kind(score) -> str | None:
    if isinstance(score, str):
        return _DOT_SCORES.get(score) or (score if score in ("additive", "concat") else None)
    return _DOT_FNS.get(score) or _ADDITIVE_FNS.get(score)


def _dot_inputs(kind: str, q: torch.Tensor, score_kwargs: dict) -> tuple[torch.Tensor, float] | None:
    """``(q', scale)`` with ``score = scale * q' k^T``, or None when the kwargs do not fit."""
    if kind == "dot":
        return (q, 1.0) if not score_kwargs else None
    if kind == "scaled_dot":
        if set(score_kwargs) - {"scale"}:
            return None
        s = score_kwargs.get("scale")
        return q, 1.0 / math.sqrt(q.shape[-1]) if s is None else float(s)
    if kind == "general":
        w = score_kwargs.get("weight")
        if set(score_kwargs) != {"weight"} or not isinstance(w, torch.Tensor) or w.dim() != 2:
            return None
        if w.shape != (q.shape[-1], w.shape[1]):
            return None  # let the reference raise its message
        return q @ w, 1.0  # (..., Tq, Dk): general_score's own order, (q W) k^T
    return None


# --------------------------------------------------------------------------- SDPA with statistics

_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def sdpa_with_lse(q, k, v, *, attn_mask=None, scale: float | None = None, is_causal: bool = False):
    """SDPA's output and its row log-sum-exp ``lse_i = log sum_j exp(s_ij)``.

    Uses the CPU flash kernel's own statistics (no extra pass); elsewhere, or where that
    kernel does not apply (mismatched head counts), the output comes from
    ``F.scaled_dot_product_attention`` and ``lse`` is ``None``.

    Shape: q (B, H, Tq, D), k/v (B, H, Tk, D|Dv), attn_mask float (broadcastable)
    -> (out (B, H, Tq, Dv), lse (B, H, Tq) or None).
    """
    ok = (
        _FLASH_CPU is not None
        and q.device.type == "cpu"
        and q.dim() == 4
        and q.shape[:2] == k.shape[:2] == v.shape[:2]
        and q.dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16)
        and (attn_mask is None or attn_mask.dtype == q.dtype)
    )
    if ok:
        try:
            out, lse = _FLASH_CPU(q, k, v, 0.0, is_causal, attn_mask=attn_mask, scale=scale)
            return out, lse
        except RuntimeError:
            pass  # an input this kernel rejects: the public entry point decides
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale, enable_gqa=q.shape[-3] != k.shape[-3]
    )
    return out, None


class _WeightsFromLSE(torch.autograd.Function):
    """``w = exp(scale q k^T + bias - lse) * mask``: the softmax weights, exact, from the
    saved statistics (one matmul and one exp, no max / sum passes). Backward is
    softmax's: ``dS = w (dw - sum_j w dw)``."""

    @staticmethod
    def forward(ctx, q, k, lse, bias, mask, scale: float):
        s = torch.matmul(q, k.transpose(-2, -1)).mul_(scale)  # (..., Tq, Tk)
        if bias is not None:
            s.add_(bias)
        w = s.sub_(lse.unsqueeze(-1)).exp_()
        if mask is not None:
            w.masked_fill_(~mask, 0.0)  # masked scores may overflow exp: replace, never multiply
        ctx.save_for_backward(q, k, w)
        ctx.scale = scale
        return w

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dw):
        q, k, w = ctx.saved_tensors
        ds = dw * w
        ds.sub_(w * ds.sum(-1, keepdim=True)).mul_(ctx.scale)  # (..., Tq, Tk)
        dq = torch.matmul(ds, k) if ctx.needs_input_grad[0] else None
        dk = torch.matmul(ds.transpose(-2, -1), q) if ctx.needs_input_grad[1] else None
        return dq, dk, None, None, None, None


def weights_from_lse(
    q: torch.Tensor,
    k: torch.Tensor,
    lse: torch.Tensor,
    *,
    scale: float,
    mask: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    heads=None,
    rows=None,
) -> torch.Tensor:
    """Exact softmax weights of chosen heads / query rows, from the fast path's ``lse``.

    ``w_ij = exp(scale q_i . k_j + b_ij - lse_i)`` for allowed ``j``, 0 elsewhere; rows
    with no allowed key are 0 (their ``lse`` is meaningless). Only the selected heads
    and rows are computed: cost ``O(|heads| |rows| Tk D)``. Differentiable in ``q`` and
    ``k`` (not in ``bias``; use the reference for a learnable dense bias).

    Args:
        q, k: (B, H, Tq, D), (B, H, Tk, D) (heads already matched).
        lse: (B, H, Tq), the row log-sum-exp of the same scores.
        mask: bool (True = may attend) broadcastable to (B, H, Tq, Tk).
        bias: float, broadcastable to (B, H, Tq, Tk), no ``-inf`` (fold those into ``mask``).
        heads, rows: index lists / slices / 1-D long tensors selecting heads and query rows.

    Shape: -> (B, |heads|, |rows|, Tk).
    """

    def pick(x, dim):
        if x is None:
            return None
        if heads is not None and x.shape[1] != 1:
            x = x[:, heads] if isinstance(heads, slice) else x.index_select(1, _as_index(heads, x.device))
        if rows is not None and x.dim() > dim and x.shape[2] != 1:
            x = x[:, :, rows] if isinstance(rows, slice) else x.index_select(2, _as_index(rows, x.device))
        return x

    qs, ks, ls = pick(q, 2), pick(k, 99), pick(lse, 2)
    ms = None if mask is None else pick(_as_4d(mask), 2)
    bs = None if bias is None else pick(_as_4d(bias), 2).to(q.dtype)
    if ms is not None:
        if not bool(ms.any(-1).all()):
            ls = torch.where(ms.any(-1), ls, torch.zeros_like(ls))  # empty rows: avoid inf - inf
    return _WeightsFromLSE.apply(qs, ks, ls, bs, ms, float(scale))


def _as_4d(x: torch.Tensor) -> torch.Tensor:
    return x.reshape((1,) * (4 - x.dim()) + tuple(x.shape)) if x.dim() < 4 else x


def _as_index(ix, device) -> torch.Tensor:
    if isinstance(ix, torch.Tensor):
        return ix.to(device=device, dtype=torch.long).reshape(-1)
    return torch.as_tensor(list(ix) if not isinstance(ix, int) else [ix], dtype=torch.long, device=device)


def _sdpa_path(q, k, v, *, scale, mask, bias, causal, dropout_p, need_weights):
    """SDPA on any batch shape, fully masked rows zeroed, weights from the LSE.

    Shape: q (..., Tq, D), k (..., Tk, D), v (..., Tk, Dv) -> (..., Tq, Dv)."""
    Tq, Tk = q.shape[-2], k.shape[-2]
    lead = broadcast_shape(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    q4 = q.expand(*lead, Tq, q.shape[-1]).reshape(-1, 1, Tq, q.shape[-1])  # (N, 1, Tq, D)
    k4 = k.expand(*lead, Tk, k.shape[-1]).reshape(-1, 1, Tk, k.shape[-1])  # (N, 1, Tk, D)
    v4 = v.expand(*lead, Tk, v.shape[-1]).reshape(-1, 1, Tk, v.shape[-1])  # (N, 1, Tk, Dv)
    N = q4.shape[0]

    def flat(x):  # (..., Tq|1, Tk|1) -> (N|1, 1, Tq|1, Tk|1)
        x = x.reshape((1,) * (len(lead) + 2 - x.dim()) + tuple(x.shape))
        if all(s == 1 for s in x.shape[:-2]):
            return x.reshape(1, 1, *x.shape[-2:])
        return x.expand(*lead, *x.shape[-2:]).reshape(N, 1, *x.shape[-2:])

    mask = None if mask is None else flat(mask)
    bias = None if bias is None else flat(bias)
    if bias is not None:
        neg_inf = torch.isneginf(bias)
        if neg_inf.any():
            mask = mask_and(mask, ~neg_inf)
            bias = bias.masked_fill(neg_inf, 0.0)
    if causal:
        mask = mask_and(mask, causal_mask(Tq, Tk, device=q.device))
    row_ok = None
    sdpa_mask = mask
    if mask is not None:
        row_ok = mask.any(-1, keepdim=True)  # (N|1, 1, Tq, 1)
        if bool(row_ok.all()):
            row_ok = None
        else:
            sdpa_mask = mask | ~row_ok  # fully masked rows see everything, then are zeroed
    attn = sdpa_mask
    if bias is not None:
        b = bias.to(q.dtype)
        attn = b if sdpa_mask is None else torch.where(sdpa_mask, b, mask_fill_value(q.dtype))
    lse = None
    if need_weights and dropout_p == 0.0 and q.dtype in (torch.float32, torch.float64):
        fmask = attn
        if fmask is not None and fmask.dtype == torch.bool:
            fmask = torch.zeros(fmask.shape, dtype=q.dtype, device=q.device).masked_fill_(~fmask, mask_fill_value(q.dtype))
        out, lse = sdpa_with_lse(q4, k4, v4, attn_mask=fmask, scale=scale)
    else:
        out = F.scaled_dot_product_attention(q4, k4, v4, attn_mask=attn, dropout_p=dropout_p, scale=scale)
    if row_ok is not None:
        out = out * row_ok.to(out.dtype)
    weights = None
    if need_weights:
        if lse is None:
            s = torch.matmul(q4, k4.transpose(-2, -1)) * scale
            if bias is not None:
                s = s + bias.to(s.dtype)
            weights = softmax(s, mask=mask)
        else:
            weights = weights_from_lse(q4, k4, lse, scale=scale, mask=mask, bias=bias)
        weights = weights.reshape(*lead, Tq, Tk)
    return AttentionResult(out.reshape(*lead, Tq, v.shape[-1]), weights)


# --------------------------------------------------------------------------- the dispatcher


def choose_path(
    q,
    k,
    v,
    *,
    score="scaled_dot",
    normalizer="softmax",
    mask=None,
    bias=None,
    window: int | None = None,
    bias_fn=None,
    dropout_p: float = 0.0,
    training: bool = False,
    need_weights: bool = False,
    score_kwargs: dict | None = None,
    normalizer_kwargs: dict | None = None,
    generator=None,
) -> tuple[str, str]:
    """``(path, reason)`` that :func:`attention` would take for these arguments."""
    kind = _score_kind(score)
    sk = score_kwargs or {}
    nk = normalizer_kwargs or {}
    is_softmax = (normalizer == "softmax" or normalizer is softmax) and not nk
    dropping = training and dropout_p > 0.0
    dotty = kind in ("dot", "scaled_dot", "general") and _dot_inputs(kind, q, sk) is not None
    if kind is None:
        return "reference", f"score {getattr(score, '__name__', score)!r} has no fused kernel"
    if dropping and generator is not None:
        return "reference", "dropout with a generator (reproducible noise)"
    if window is not None or bias_fn is not None:
        what = "window" if window is not None else "bias"
        if dotty and is_softmax and mask is None and bias is None and not dropping:
            return what, f"{what} spec, softmax, no other mask"
        return "reference", f"{what} spec with another mask/bias/normalizer/dropout"
    if dotty and is_softmax:
        return "sdpa", "dot-product score with softmax" + (", weights from the LSE" if need_weights else "")
    if kind in ("additive", "concat"):
        if not is_softmax:
            return "reference", "additive score with a normalizer other than softmax"
        if bias is not None or dropping:
            return "reference", "additive score with a float bias or dropout"
        return "additive", "additive score: fused kernel"
    if dotty and normalizer in _TILED and set(nk) <= {"eps"} and not (_TILED[normalizer] == "sigmoid" and nk):
        if bias is not None or need_weights or dropping:
            return "reference", "tiled normalizer with bias, weights or dropout"
        return "normalized", f"{_TILED[normalizer]} normalizer: query-tiled kernel"
    return "reference", f"normalizer {getattr(normalizer, '__name__', normalizer)!r} has no fused kernel"


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    score="scaled_dot",
    normalizer="softmax",
    mask: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    window: int | None = None,
    causal: bool = False,
    bias_fn: Callable | None = None,
    dropout_p: float = 0.0,
    training: bool = False,
    need_weights: bool = False,
    score_kwargs: dict | None = None,
    normalizer_kwargs: dict | None = None,
    generator: torch.Generator | None = None,
    impl: str = "auto",
    caller: str = "attention",
) -> AttentionResult:
    """:func:`attnlab.functional.attend` on the fastest path that computes the same thing.

    ``weights = normalize(score(q, k) + bias, mask)``, ``output = dropout(weights) @ v``.

    Args:
        q, k, v, score, normalizer, mask, bias, dropout_p, training, need_weights,
        score_kwargs, normalizer_kwargs, generator: as :func:`attnlab.functional.attend`.
        window: sliding-window spec: query ``i`` may attend keys ``|i - j| <= window``
            (``causal``: ``0 <= i - j <= window``), as
            :func:`attnlab.functional.masks.window_mask`; self-attention (Tq == Tk).
        causal: with ``window``/``bias_fn``: the causal variant; otherwise ANDs a
            causal mask (queries are the last Tq positions).
        bias_fn: a tile bias (``bias_fn(q_positions, k_positions) -> (H|1, tq, tk)``,
            e.g. :func:`attnlab.kernels.bias.alibi_bias_fn`) added to the scores.
        impl: "auto" (choose), "reference" (always :func:`attend`) or one path of
            :data:`PATHS` (raises ``ValueError`` where it does not apply).
        caller: the name reported by :func:`explain_paths` and the log.

    Shape:
        q (..., Tq, Dk), k (..., Tk, Dk), v (..., Tk, Dv) -> output (..., Tq, Dv),
        weights (..., Tq, Tk).

    Returns:
        :class:`AttentionResult` ``(output, weights or None)``.
    """
    check_tensor(q, "q", min_ndim=2)
    check_tensor(k, "k", min_ndim=2)
    check_tensor(v, "v", min_ndim=2)
    dropout_p = check_probability(dropout_p, "dropout_p")
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if impl != "auto" and impl not in PATHS:
        raise ValueError(f"unknown impl {impl!r}; valid impls: auto, {', '.join(PATHS)}")
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 0):
        raise ValueError(f"window must be an int >= 0 or None, got {window!r}")
    if window is not None and bias_fn is not None:
        raise ValueError("give at most one of window and bias_fn")
    kw = dict(
        score=score, normalizer=normalizer, mask=mask, bias=bias, window=window, bias_fn=bias_fn,
        dropout_p=dropout_p, training=training, need_weights=need_weights, score_kwargs=score_kwargs,
        normalizer_kwargs=normalizer_kwargs, generator=generator,
    )  # fmt: skip
    path, reason = choose_path(q, k, v, **kw)
    if impl == "reference":
        path, reason = "reference", "impl='reference' forced"
    elif impl != "auto" and impl != path:
        raise ValueError(f"impl={impl!r} does not apply to this call (it would take {path!r}: {reason})")
    record_path(caller, path, reason)
    if path == "reference":
        return _reference(q, k, v, **kw, causal=causal)

    kind = _score_kind(score)
    sk = dict(score_kwargs or {})
    dropping = training and dropout_p > 0.0
    if path in ("sdpa", "normalized", "window", "bias"):
        qq, scale = _dot_inputs(kind, q, sk)
        if qq.shape[-1] != k.shape[-1]:
            raise ValueError(f"q and k must share their last dimension: q is {fmt_shape(q.shape)}, k is {fmt_shape(k.shape)}")
    if path == "window":
        return _window_path(qq, k, v, window, causal, scale, need_weights)
    if path == "bias":
        from .bias import biased_attention

        return biased_attention(qq, k, v, bias_fn, causal=causal, scale=scale, need_weights=need_weights)
    if path in ("sdpa", "normalized"):
        lead = broadcast_shape(qq.shape[:-2], k.shape[:-2], v.shape[:-2])
        target = lead + (q.shape[-2], k.shape[-2])
        check_bool_mask(mask, "mask", target, "the scores (..., Tq, Tk)")
        if bias is not None:
            check_tensor(bias, "bias")
            check_broadcastable(bias.shape, target, "bias", "the scores (..., Tq, Tk)")
        if k.shape[-2] != v.shape[-2]:
            raise ValueError(f"k and v must have the same number of keys Tk: k is {fmt_shape(k.shape)}, v is {fmt_shape(v.shape)}")
    if path == "sdpa":
        return _sdpa_path(
            qq, k, v, scale=scale, mask=mask, bias=bias, causal=causal,
            dropout_p=dropout_p if dropping else 0.0, need_weights=need_weights,
        )  # fmt: skip
    if path == "normalized":
        from .normalized import normalized_attention

        if causal:
            mask = mask_and(mask, causal_mask(q.shape[-2], k.shape[-2], device=q.device))
        eps = (normalizer_kwargs or {}).get("eps", 1e-6)
        return normalized_attention(qq, k, v, _TILED[normalizer], mask=mask, scale=scale, eps=eps)
    # additive / concat
    from .additive import additive_attention

    if causal:
        mask = mask_and(mask, causal_mask(q.shape[-2], k.shape[-2], device=q.device))
    if kind == "concat":
        w, va = sk["weight"], sk["v"]
        dq = q.shape[-1]
        return additive_attention(q, k, v, w[:, :dq], w[:, dq:], va, None, mask=mask, need_weights=need_weights)
    return additive_attention(
        q, k, v, sk["w_q"], sk["w_k"], sk["v"], sk.get("bias"), mask=mask, need_weights=need_weights
    )


def _window_path(q, k, v, window, causal, scale, need_weights):
    from .window import window_attention

    return window_attention(q, k, v, window, causal=causal, scale=scale, need_weights=need_weights)


def _reference(q, k, v, *, window, bias_fn, causal, **kw) -> AttentionResult:
    """:func:`attend`, with the structured hints turned into a dense mask / bias."""
    Tq, Tk = q.shape[-2], k.shape[-2]
    mask, bias = kw.pop("mask"), kw.pop("bias")
    if window is not None:
        mask = mask_and(mask, window_mask(Tq, Tk, window, causal=causal, device=q.device))
    elif causal:
        mask = mask_and(mask, causal_mask(Tq, Tk, device=q.device))
    if bias_fn is not None:
        qpos = torch.arange(Tk - Tq, Tk, device=q.device)  # queries are the last Tq positions
        b = bias_fn(qpos, torch.arange(Tk, device=q.device))  # (H|1, Tq, Tk)
        bias = b if bias is None else bias + b
    return attend(q, k, v, mask=mask, bias=bias, **kw)
