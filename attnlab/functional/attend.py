"""``attend``: the one readable reference of attention.

    weights = normalize(score(q, k) + bias, mask)
    output  = dropout(weights) @ v

Every fast path in :mod:`attnlab.kernels` is tested against this function.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .._checks import broadcast_shape, check_bool_mask, check_broadcastable, check_probability, check_tensor, fmt_shape
from .normalizers import get_normalizer
from .scores import get_score

__all__ = ["attend", "AttentionResult"]


class AttentionResult(NamedTuple):
    """``output`` (..., Tq, Dv); ``weights`` (..., Tq, Tk) or ``None`` unless asked for."""

    output: torch.Tensor
    weights: torch.Tensor | None


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    score="scaled_dot",
    normalizer="softmax",
    mask: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    training: bool = False,
    need_weights: bool = False,
    score_kwargs: dict | None = None,
    normalizer_kwargs: dict | None = None,
    generator: torch.Generator | None = None,
) -> AttentionResult:
    """Attention with a pluggable score, normalizer, mask and additive bias.

    Args:
        q, k, v: queries, keys, values.
        score: a name from :data:`attnlab.functional.scores.SCORES` ("dot",
            "scaled_dot", "general", "additive", "concat") or a callable
            ``f(q, k, **score_kwargs) -> (..., Tq, Tk)``.
        normalizer: a name from :data:`attnlab.functional.normalizers.NORMALIZERS`
            or a callable ``f(scores, mask=None, dim=-1, **normalizer_kwargs)``.
        mask: bool, True = may attend; broadcastable to ``(..., Tq, Tk)``.
        bias: float added to the scores (ALiBi, T5 buckets, an additive float mask);
            ``-inf`` entries are treated as masked, so a fully ``-inf`` row gives zeros.
        dropout_p: dropout on the weights (only when ``training``).
        need_weights: return the weights as well.
        score_kwargs: parameters of the score (e.g. ``weight`` for "general").

    Shape:
        q (..., Tq, Dk), k (..., Tk, Dk), v (..., Tk, Dv) -> output (..., Tq, Dv),
        weights (..., Tq, Tk). Batch dimensions broadcast.

    Returns:
        :class:`AttentionResult` ``(output, weights)``.
    """
    check_tensor(q, "q", min_ndim=2)
    check_tensor(k, "k", min_ndim=2)
    check_tensor(v, "v", min_ndim=2)
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"k and v must have the same number of keys Tk: k is {fmt_shape(k.shape)}, v is {fmt_shape(v.shape)}"
        )
    dropout_p = check_probability(dropout_p, "dropout_p")
    score_fn = get_score(score)
    norm_fn = get_normalizer(normalizer)

    s = score_fn(q, k, **(score_kwargs or {}))  # (..., Tq, Tk)
    target = broadcast_shape(s.shape, v.shape[:-2] + (1, 1))[:-2] + s.shape[-2:]
    check_bool_mask(mask, "mask", target, "the scores (..., Tq, Tk)")
    if bias is not None:
        check_tensor(bias, "bias")
        check_broadcastable(bias.shape, target, "bias", "the scores (..., Tq, Tk)")
        neg_inf = torch.isneginf(bias)
        if neg_inf.any():
            # A -inf bias is a mask in disguise: fold it into the bool mask so the
            # fully masked row rule (zeros, not NaN) holds for float masks too.
            allowed = ~neg_inf
            mask = allowed if mask is None else mask & allowed
            bias = bias.masked_fill(neg_inf, 0.0)
        s = s + bias.to(s.dtype)

    w = norm_fn(s, mask=mask, dim=-1, **(normalizer_kwargs or {}))  # (..., Tq, Tk)
    w_drop = w
    if training and dropout_p > 0.0:
        keep = torch.rand(w.shape, generator=generator, device=w.device) >= dropout_p
        w_drop = w * keep / (1.0 - dropout_p)
    out = w_drop.to(v.dtype) @ v  # (..., Tq, Dv)
    return AttentionResult(out, w if need_weights else None)
