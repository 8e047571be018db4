"""Alignment score functions: how much query ``q_i`` matches key ``k_j``.

Every score maps ``q (..., Tq, Dq)`` and ``k (..., Tk, Dk)`` to ``(..., Tq, Tk)``.
Parameterized scores take their weights as explicit tensors (this layer owns no
parameters; :mod:`attnlab.nn` does). Weight matrices follow ``nn.Linear``'s layout,
``(out_features, in_features)``.
"""

from __future__ import annotations

import math

import torch

from .._checks import broadcast_shape, check_tensor, fmt_shape, resolve

__all__ = [
    "dot_score",
    "scaled_dot_score",
    "general_score",
    "additive_score",
    "additive_score_from_projections",
    "concat_score",
    "SCORES",
    "get_score",
]


def _check_qk(q, k, *, same_dim: bool):
    check_tensor(q, "q", min_ndim=2)
    check_tensor(k, "k", min_ndim=2)
    if q.shape[-2] == 0:
        raise ValueError(f"q has an empty query axis (shape {fmt_shape(q.shape)}); need Tq >= 1")
    if k.shape[-2] == 0:
        raise ValueError(f"k has an empty key axis (shape {fmt_shape(k.shape)}); need Tk >= 1")
    if same_dim and q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q and k must share their last dimension for this score: q is {fmt_shape(q.shape)}, "
            f"k is {fmt_shape(k.shape)}"
        )
    try:
        broadcast_shape(q.shape[:-2], k.shape[:-2])
    except ValueError:
        raise ValueError(
            f"q and k batch dimensions do not broadcast: q is {fmt_shape(q.shape)}, k is {fmt_shape(k.shape)}"
        ) from None


def dot_score(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Luong "dot": ``score(q, k) = q^T k``.

    Shape: q (..., Tq, D), k (..., Tk, D) -> (..., Tq, Tk).
    """
    _check_qk(q, k, same_dim=True)
    return q @ k.transpose(-2, -1)  # (..., Tq, Tk)


def scaled_dot_score(q: torch.Tensor, k: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Vaswani et al. (2017): ``score(q, k) = q^T k / sqrt(d_k)``.

    Dividing by ``sqrt(d_k)`` keeps the variance of the scores near 1 when q and k have
    unit-variance entries, so softmax does not saturate as ``d_k`` grows.

    Shape: q (..., Tq, D), k (..., Tk, D) -> (..., Tq, Tk).
    """
    _check_qk(q, k, same_dim=True)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    return (q @ k.transpose(-2, -1)) * scale  # (..., Tq, Tk)


def general_score(q: torch.Tensor, k: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Luong "general" (bilinear): ``score(q, k) = q^T W k``.

    Shape: q (..., Tq, Dq), k (..., Tk, Dk), weight (Dq, Dk) -> (..., Tq, Tk).
    """
    _check_qk(q, k, same_dim=False)
    check_tensor(weight, "weight", min_ndim=2)
    if weight.shape != (q.shape[-1], k.shape[-1]):
        raise ValueError(
            f"weight must have shape (Dq, Dk) = {fmt_shape((q.shape[-1], k.shape[-1]))}, got {fmt_shape(weight.shape)}"
        )
    return (q @ weight) @ k.transpose(-2, -1)  # (..., Tq, Dk) @ (..., Dk, Tk)


def additive_score(
    q: torch.Tensor,
    k: torch.Tensor,
    w_q: torch.Tensor,
    w_k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bahdanau et al. (2014) additive score: ``v^T tanh(W_q q + W_k k + b)``.

    This reference builds the full ``(..., Tq, Tk, hidden)`` tensor, as textbook code
    does; :mod:`attnlab.kernels` has a fused version that never does.

    Shape: q (..., Tq, Dq), k (..., Tk, Dk), w_q (hidden, Dq), w_k (hidden, Dk),
    v (hidden,), bias (hidden,) -> (..., Tq, Tk).
    """
    _check_qk(q, k, same_dim=False)
    for t, name in ((w_q, "w_q"), (w_k, "w_k"), (v, "v")):
        check_tensor(t, name)
    hidden = v.shape[-1]
    if v.dim() != 1:
        raise ValueError(f"v must have shape (hidden,), got {fmt_shape(v.shape)}")
    if w_q.shape != (hidden, q.shape[-1]):
        raise ValueError(f"w_q must have shape (hidden, Dq) = {fmt_shape((hidden, q.shape[-1]))}, got {fmt_shape(w_q.shape)}")
    if w_k.shape != (hidden, k.shape[-1]):
        raise ValueError(f"w_k must have shape (hidden, Dk) = {fmt_shape((hidden, k.shape[-1]))}, got {fmt_shape(w_k.shape)}")
    if bias is not None and bias.shape != (hidden,):
        raise ValueError(f"bias must have shape (hidden,) = ({hidden},), got {fmt_shape(bias.shape)}")
    pq = q @ w_q.transpose(0, 1)  # (..., Tq, hidden)
    pk = k @ w_k.transpose(0, 1)  # (..., Tk, hidden)
    if bias is not None:
        pq = pq + bias
    return additive_score_from_projections(pq, pk, v)


def additive_score_from_projections(pq: torch.Tensor, pk: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The second half of the additive score: ``v^T tanh(pq_i + pk_j)``.

    A decoder loop projects the encoder states once (``pk = W_k k``) and calls this
    each step with only the query side new, as Bahdanau-style implementations do.

    Shape: pq (..., Tq, hidden), pk (..., Tk, hidden), v (hidden,) -> (..., Tq, Tk).
    """
    if pq.shape[-1] != pk.shape[-1] or v.shape != (pq.shape[-1],):
        raise ValueError(
            f"pq, pk and v must share the hidden size: pq is {fmt_shape(pq.shape)}, pk is "
            f"{fmt_shape(pk.shape)}, v is {fmt_shape(v.shape)}"
        )
    feats = torch.tanh(pq.unsqueeze(-2) + pk.unsqueeze(-3))  # (..., Tq, Tk, hidden)
    return feats @ v  # (..., Tq, Tk)


def concat_score(q: torch.Tensor, k: torch.Tensor, weight: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Luong "concat": ``v^T tanh(W [q; k])``.

    ``W [q; k] = W[:, :Dq] q + W[:, Dq:] k``, so this is the additive score with the
    two projections stored side by side in one matrix.

    Shape: q (..., Tq, Dq), k (..., Tk, Dk), weight (hidden, Dq + Dk), v (hidden,)
    -> (..., Tq, Tk).
    """
    _check_qk(q, k, same_dim=False)
    check_tensor(weight, "weight", min_ndim=2)
    dq, dk = q.shape[-1], k.shape[-1]
    if weight.dim() != 2 or weight.shape[1] != dq + dk:
        raise ValueError(f"weight must have shape (hidden, Dq + Dk) = (hidden, {dq + dk}), got {fmt_shape(weight.shape)}")
    return additive_score(q, k, weight[:, :dq], weight[:, dq:], v)


SCORES = {
    "dot": dot_score,
    "scaled_dot": scaled_dot_score,
    "general": general_score,
    "additive": additive_score,
    "concat": concat_score,
}


def get_score(score):
    """A score function by name (see ``SCORES``) or the callable itself."""
    return resolve(SCORES, score, "score")
