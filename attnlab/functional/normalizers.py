"""Normalizers: turn a row of scores into attention weights.

Contract shared by every normalizer ``fn(scores, mask=None, dim=-1, **kwargs)``:

- ``scores`` is a floating tensor; ``mask`` is ``None`` or a bool tensor broadcastable
  to ``scores`` (True = may attend).
- Masked positions get weight exactly 0; a row whose positions are all masked gives
  all-zero weights and zero gradient, never NaN.
- The result has the dtype of ``scores`` (internally computed in at least float32).
"""

from __future__ import annotations

import torch

from .._checks import check_bool_mask, check_tensor, mask_fill_value, resolve

__all__ = ["softmax", "NORMALIZERS", "get_normalizer"]


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def softmax(scores: torch.Tensor, mask: torch.Tensor | None = None, dim: int = -1) -> torch.Tensor:
    """``softmax(s)_j = exp(s_j) / sum_k exp(s_k)`` over the allowed positions.

    Shape: scores (..., T), mask broadcastable -> (..., T).
    """
    check_tensor(scores, "scores")
    check_bool_mask(mask, "mask", scores.shape)
    x = _upcast(scores)
    if mask is not None:
        x = x.masked_fill(~mask, mask_fill_value(x.dtype))
    w = torch.softmax(x, dim=dim)
    if mask is not None:
        w = w * mask  # a fully masked row: uniform -> zeros (and no gradient reaches it)
    return w.to(scores.dtype)


NORMALIZERS = {
    "softmax": softmax,
}


def get_normalizer(normalizer):
    """A normalizer by name (see ``NORMALIZERS``) or the callable itself."""
    return resolve(NORMALIZERS, normalizer, "normalizer")
