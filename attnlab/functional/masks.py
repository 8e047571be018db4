"""Attention masks. One polarity everywhere: a bool tensor, ``True`` = may attend.

All masks are built to broadcast against scores of shape ``(..., Tq, Tk)``.
"""

from __future__ import annotations

import torch

from .._checks import check_positive_int, check_tensor, fmt_shape

__all__ = [
    "causal_mask",
    "padding_mask",
    "lengths_to_mask",
    "window_mask",
    "local_p_window",
    "mask_and",
    "mask_or",
    "from_key_padding_mask",
]


def _positions(Tq: int, Tk: int, offset, device):
    # Absolute position of query i is offset + i; of key j is j.
    if offset is None:
        offset = Tk - Tq  # queries are the last Tq positions (incremental decoding)
    qpos = torch.arange(Tq, device=device) + offset  # (Tq,)
    kpos = torch.arange(Tk, device=device)  # (Tk,)
    return qpos[:, None], kpos[None, :]


def causal_mask(Tq: int, Tk: int | None = None, *, offset: int | None = None, device=None) -> torch.Tensor:
    """Lower-triangular mask: query i may attend key j iff j <= i (absolute positions).

    When ``Tk > Tq`` (a KV cache holds earlier keys) the queries are taken to be the
    last ``Tq`` positions unless ``offset`` says where query 0 sits.

    Shape: returns ``(Tq, Tk)`` bool.
    """
    Tk = Tq if Tk is None else Tk
    check_positive_int(Tq, "Tq")
    check_positive_int(Tk, "Tk")
    qpos, kpos = _positions(Tq, Tk, offset, device)
    return kpos <= qpos  # (Tq, Tk)


def lengths_to_mask(lengths: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """``lengths`` (B,) -> (B, T) bool, True for the real (non-padding) positions."""
    if not isinstance(lengths, torch.Tensor):
        lengths = torch.as_tensor(lengths)
    if lengths.dim() != 1:
        raise ValueError(f"lengths must have shape (B,), got {fmt_shape(lengths.shape)}")
    if lengths.dtype.is_floating_point:
        raise TypeError(f"lengths must be an integer tensor, got {lengths.dtype}")
    if (lengths < 0).any():
        raise ValueError(f"lengths must be >= 0, got {lengths.tolist()}")
    if max_len is None:
        max_len = int(lengths.max()) if lengths.numel() else 0
    if lengths.numel() and int(lengths.max()) > max_len:
        raise ValueError(f"lengths must be <= max_len={max_len}, got max {int(lengths.max())}")
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]  # (B, T)


def padding_mask(lengths: torch.Tensor, max_len: int | None = None, *, ndim: int = 4) -> torch.Tensor:
    """Key padding mask from sequence lengths, ready to broadcast against scores.

    Shape: ``lengths`` (B,) -> ``(B, 1, ..., 1, Tk)`` with ``ndim`` dimensions in all
    (4 for ``(B, H, Tq, Tk)`` scores, 3 for ``(B, Tq, Tk)``).
    """
    if ndim < 2:
        raise ValueError(f"ndim must be >= 2, got {ndim}")
    m = lengths_to_mask(lengths, max_len)  # (B, Tk)
    return m.reshape(m.shape[0], *([1] * (ndim - 2)), m.shape[1])


def from_key_padding_mask(key_padding_mask: torch.Tensor, *, ndim: int = 4) -> torch.Tensor:
    """Convert torch's ``key_padding_mask`` convention (True = ignore) into attnlab's
    (True = may attend). ``(B, Tk)`` -> ``(B, 1, ..., 1, Tk)``. Call only at the public edge."""
    if key_padding_mask.dim() != 2:
        raise ValueError(f"key_padding_mask must have shape (B, Tk), got {fmt_shape(key_padding_mask.shape)}")
    m = ~key_padding_mask.bool()
    return m.reshape(m.shape[0], *([1] * (ndim - 2)), m.shape[1])


def window_mask(
    Tq: int, Tk: int | None = None, window: int = 0, *, causal: bool = False, offset: int | None = None, device=None
) -> torch.Tensor:
    """Sliding-window (local) mask.

    Two-sided: query i may attend key j iff ``|i - j| <= window``.
    Causal:    iff ``0 <= i - j <= window`` (the last ``window + 1`` positions).

    Shape: returns ``(Tq, Tk)`` bool.
    """
    Tk = Tq if Tk is None else Tk
    check_positive_int(Tq, "Tq")
    check_positive_int(Tk, "Tk")
    if isinstance(window, bool) or not isinstance(window, int):
        raise TypeError(f"window must be an int, got {type(window).__name__}")
    if window < 0:
        raise ValueError(f"window must be >= 0, got {window}")
    qpos, kpos = _positions(Tq, Tk, 0 if offset is None and not causal else offset, device)
    dist = qpos - kpos  # (Tq, Tk)
    if causal:
        return (dist >= 0) & (dist <= window)
    return dist.abs() <= window


def local_p_window(centers: torch.Tensor, Tk: int, half_width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Luong et al. (2015) local-p attention window.

    The decoder predicts a real-valued centre ``p_t = Tk * sigmoid(v_p^T tanh(W_p h_t))``
    for each target step; keys in ``[p_t - D, p_t + D]`` may be attended, and the
    (normalized) weights are multiplied by a Gaussian ``exp(-(s - p_t)^2 / (2 sigma^2))``
    with ``sigma = D / 2``. The Gaussian is differentiable in ``p_t``, which is how the
    centre predictor learns.

    Shape: ``centers`` (..., Tq) -> ``(mask, gaussian)`` each ``(..., Tq, Tk)``.
    """
    check_tensor(centers, "centers")
    check_positive_int(Tk, "Tk")
    if isinstance(half_width, bool) or not isinstance(half_width, int):
        raise TypeError(f"half_width must be an int, got {type(half_width).__name__}")
    if half_width < 0:
        raise ValueError(f"half_width must be >= 0, got {half_width}")
    s = torch.arange(Tk, device=centers.device, dtype=centers.dtype)  # (Tk,)
    diff = s - centers.unsqueeze(-1)  # (..., Tq, Tk)
    mask = diff.detach().abs() <= half_width
    sigma = max(half_width / 2.0, 0.5)  # D = 0 still gives a usable, sharp bump
    gaussian = torch.exp(-(diff**2) / (2.0 * sigma**2))
    return mask, gaussian


def _combine(op, masks):
    present = [m for m in masks if m is not None]
    if not present:
        return None
    for i, m in enumerate(present):
        if not isinstance(m, torch.Tensor) or m.dtype != torch.bool:
            raise TypeError(f"mask {i} must be a bool tensor (True = may attend), got {getattr(m, 'dtype', type(m))}")
    out = present[0]
    for m in present[1:]:
        out = op(out, m)
    return out


def mask_and(*masks):
    """Positions allowed by every mask (``None`` = no restriction)."""
    return _combine(torch.logical_and, masks)


def mask_or(*masks):
    """Positions allowed by any mask (``None`` masks are skipped)."""
    return _combine(torch.logical_or, masks)

