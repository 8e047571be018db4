"""Normalizers: turn a row of scores into attention weights.

Contract shared by every normalizer ``fn(scores, mask=None, dim=-1, **kwargs)``:

- ``scores`` is a floating tensor; ``mask`` is ``None`` or a bool tensor broadcastable
  to ``scores`` (True = may attend).
- Masked positions get weight exactly 0; a row whose positions are all masked gives
  all-zero weights and zero gradient, never NaN.
- Large finite logits (e.g. 1e4) give finite weights.
- The result has the dtype of ``scores`` (internally computed in at least float32).

The registry :data:`NORMALIZERS` (use :func:`get_normalizer`):

============  ==========================  ==================================================
name          function                    weights
============  ==========================  ==================================================
"softmax"     :func:`softmax`             dense, on the simplex (sum to 1)
"sparsemax"   :func:`sparsemax`           sparse, on the simplex (Martins & Astudillo 2016)
"entmax15"    :func:`entmax15`            sparse, on the simplex (Peters et al. 2019)
"sigmoid"     :func:`sigmoid_normalizer`  independent gates in (0, 1); do NOT sum to 1
"relu"        :func:`relu_normalizer`     relu(s) / (sum relu(s) + eps): sum <= 1, sparse
"hard"        :func:`hard_argmax`         one-hot argmax forward, softmax gradient backward
"gumbel"      :func:`gumbel_softmax`      softmax((s + Gumbel noise) / tau), optionally hard
============  ==========================  ==================================================

``sparsemax`` and ``entmax15`` take ``dim`` as their second positional argument
(``sparsemax(x, dim=-1)``, like ``torch.softmax``) and ``mask`` by keyword only; the
registry always calls normalizers as ``fn(scores, mask=mask, dim=dim)``.
"""

from __future__ import annotations

import math

import torch

from .._checks import check_bool_mask, check_tensor, fmt_shape, mask_fill_value, resolve

__all__ = [
    "softmax",
    "sparsemax",
    "entmax15",
    "sigmoid_normalizer",
    "relu_normalizer",
    "hard_argmax",
    "gumbel_softmax",
    "NORMALIZERS",
    "get_normalizer",
]

# Masked positions of sparsemax/entmax15 are set this far below the row's largest
# allowed score (after shifting that maximum to 0). Both maps give exactly zero weight
# to any score more than 1 (sparsemax) or 2 (entmax15) below the row maximum, so 10 is
# safely outside the support. finfo.min would overflow the cumulative sums.
_SPARSE_MASK_GAP = 10.0


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _check_dim(dim, x: torch.Tensor, name: str) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"dim must be an int, got {type(dim).__name__}")
    n = x.dim()
    if not -n <= dim < n:
        raise ValueError(f"dim must be in [{-n}, {n - 1}] for {name} of shape {fmt_shape(x.shape)}, got {dim}")
    return dim % n


def _prepare(scores, mask, dim, name: str = "scores"):
    """Validate the shared arguments; return the upcast scores and the positive dim."""
    check_tensor(scores, name)
    check_bool_mask(mask, "mask", scores.shape, name)
    dim = _check_dim(dim, scores, name)
    return _upcast(scores), dim


def _apply_mask(w: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    # Multiplying (not masked_fill) also cuts the gradient of masked positions, which
    # is what makes a fully masked row give zero gradient.
    return w if mask is None else w * mask


def _shift_and_fill(x: torch.Tensor, mask: torch.Tensor | None, dim: int) -> torch.Tensor:
    """``x - max_allowed(x)`` along ``dim`` with masked positions set to ``-_SPARSE_MASK_GAP``.

    Sparsemax and entmax are shift invariant, so subtracting the (detached) row
    maximum changes neither the weights nor their gradient; it keeps the cumulative
    sums small (1e4 logits stay exact) and makes a constant fill value safe.
    A fully masked row becomes constant (uniform weights), zeroed by the caller.
    """
    if x.shape[dim] == 0:
        return x  # nothing to normalize (amax would fail on an empty reduction)
    xd = x.detach()
    if mask is None:
        return x - xd.amax(dim, keepdim=True)
    # a mask with fewer dims (e.g. (Tk,)) gets leading 1s so that `dim` indexes it too
    mask = mask.view((1,) * (x.dim() - mask.dim()) + tuple(mask.shape))
    vmax = xd.masked_fill(~mask, mask_fill_value(x.dtype)).amax(dim, keepdim=True)
    vmax = torch.where(mask.any(dim, keepdim=True), vmax, torch.zeros_like(vmax))
    return torch.where(mask, x - vmax, -_SPARSE_MASK_GAP)


def _fresh(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``z`` if it is a new tensor the sparse maps may overwrite, else a copy.

    :func:`_shift_and_fill` returns new tensors except for an empty ``dim``, where it
    hands back its input (the caller's scores when no upcast happened)."""
    return z.clone() if z is x or z.data_ptr() == x.data_ptr() else z


def _mask_like(mask: torch.Tensor | None, z: torch.Tensor) -> torch.Tensor | None:
    """The bool mask as z's dtype with leading 1s (multiplied into the output in place)."""
    if mask is None:
        return None
    return mask.view((1,) * (z.dim() - mask.dim()) + tuple(mask.shape)).to(z.dtype)


def _index_like(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``1, 2, ..., n`` shaped to broadcast along ``dim`` of ``x``."""
    n = x.shape[dim]
    shape = [1] * x.dim()
    shape[dim] = n
    return torch.arange(1, n + 1, device=x.device, dtype=x.dtype).view(shape)


# ----------------------------------------------------------------------------- softmax


def _softmax_core(x: torch.Tensor, mask: torch.Tensor | None, dim: int) -> torch.Tensor:
    if mask is not None:
        x = x.masked_fill(~mask, mask_fill_value(x.dtype))
    w = torch.softmax(x, dim=dim)
    return _apply_mask(w, mask)  # a fully masked row: uniform -> zeros (and no gradient reaches it)


def softmax(scores: torch.Tensor, mask: torch.Tensor | None = None, dim: int = -1) -> torch.Tensor:
    """``softmax(s)_j = exp(s_j) / sum_k exp(s_k)`` over the allowed positions.

    Shape: scores (..., T), mask broadcastable -> (..., T).
    """
    x, dim = _prepare(scores, mask, dim)
    return _softmax_core(x, mask, dim).to(scores.dtype)


# --------------------------------------------------------------------------- sparsemax


class _SparsemaxFunction(torch.autograd.Function):
    """Exact sparsemax along ``dim`` with the closed-form backward; saves only the output.

    Memory: ``z`` is a temporary made by :func:`_shift_and_fill`, so the output is
    written into it (``mark_dirty``); the sort keeps its values only (its int64
    indices, twice the size of float32 scores, are dropped at once), the sorted copy
    is reused for ``k z_(k)`` and the cumulative sums for ``tau``. Peak: about three
    score-sized float tensors in the forward, one plus a bool in the backward.
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor, dim: int, mask: torch.Tensor | None) -> torch.Tensor:
        ctx.dim = dim
        if z.shape[dim] == 0:
            ctx.save_for_backward(z)
            return z.clone()
        z_srt = torch.sort(z, dim=dim, descending=True).values
        cssv = z_srt.cumsum(dim).sub_(1.0)
        # k is in the support iff 1 + k z_(k) > sum_{j<=k} z_(j)
        support = z_srt.mul_(_index_like(z_srt, dim)) > cssv
        del z_srt
        k_z = support.sum(dim, keepdim=True).clamp_(min=1)  # clamp: NaN input gives NaN, not an index error
        del support
        tau = cssv.gather(dim, k_z - 1).div_(k_z.to(z.dtype))
        del cssv
        y = z.sub_(tau).clamp_(min=0.0)
        if mask is not None:
            y.mul_(mask)  # fully masked rows (uniform before) become zeros
        ctx.mark_dirty(z)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy: torch.Tensor):
        (y,) = ctx.saved_tensors
        dim = ctx.dim
        if y.shape[dim] == 0:
            return dy.clone(), None, None
        supp = y > 0
        g = dy * supp
        # Jacobian = diag(s) - s s^T / |S|: the gradient on the support minus its mean;
        # a row with an empty support (fully masked) gets 0 / 1 = 0.
        mean = g.sum(dim, keepdim=True).div_(supp.sum(dim, keepdim=True).clamp_(min=1).to(g.dtype))
        return g.sub_(mean).mul_(supp), None, None


def sparsemax(x: torch.Tensor, dim: int = -1, *, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Sparsemax: the Euclidean projection of the scores onto the probability simplex.

    ``sparsemax(z) = argmin_{p in simplex} ||p - z||^2``, i.e. ``p_i = [z_i - tau]_+``
    with ``tau`` such that ``sum_i p_i = 1``; found exactly by sorting
    (Martins & Astudillo, "From Softmax to Sparsemax", ICML 2016, Alg. 1).
    Backward: on the support ``S``, ``dz = dp - mean_S(dp)``; 0 off the support.
    Only the output is saved for backward.

    Args:
        x: scores.
        dim: the dimension that sums to 1.
        mask: bool, True = may attend, broadcastable to ``x`` (keyword only). Masked
            positions get exactly 0; a fully masked row gives zeros and zero gradient.

    Shape: x (..., T, ...), mask broadcastable -> same shape as x, dtype of x.

    Returns:
        weights on the simplex along ``dim`` (zeros for fully masked rows).
    """
    z, dim = _prepare(x, mask, dim, "x")
    z = _fresh(_shift_and_fill(z, mask, dim), x)
    w = _SparsemaxFunction.apply(z, dim, _mask_like(mask, z))
    return w.to(x.dtype)


# ---------------------------------------------------------------------------- entmax15


class _Entmax15Function(torch.autograd.Function):
    """Exact 1.5-entmax along ``dim`` (sort-based) with the closed-form backward.

    Memory as :class:`_SparsemaxFunction`: output written into the temporary ``z``,
    sort values only, running statistics updated in place.
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor, dim: int, mask: torch.Tensor | None) -> torch.Tensor:
        ctx.dim = dim
        if z.shape[dim] == 0:
            ctx.save_for_backward(z)
            return z.clone()
        x = z.div_(2)  # 1.5-entmax(z) = [z/2 - tau]_+^2, so solve with z/2
        x_srt = torch.sort(x, dim=dim, descending=True).values
        rho = _index_like(x_srt, dim)  # 1..n along dim
        # For a support of the k largest, sum_{i<=k} (x_(i) - tau)^2 = 1 gives
        # tau_k = mean_k - sqrt((1 - ss_k) / k), ss_k = sum_{i<=k} (x_(i) - mean_k)^2.
        mean = x_srt.cumsum(dim).div_(rho)
        ss = x_srt.square().cumsum_(dim).div_(rho)  # mean of squares
        ss.sub_(mean.square()).mul_(rho)
        delta = ss.neg_().add_(1.0).div_(rho).clamp_(min=0.0)  # (1 - ss) / k
        tau = mean.sub_(delta.sqrt_())
        del delta, ss
        # The support is the largest k with tau_k <= x_(k) (Peters et al. 2019, Alg. 2).
        k = (tau <= x_srt).sum(dim, keepdim=True).clamp_(min=1)
        del x_srt
        tau_star = tau.gather(dim, k - 1)
        del tau
        y = x.sub_(tau_star).clamp_(min=0.0).square_()
        if mask is not None:
            y.mul_(mask)  # fully masked rows (uniform before) become zeros
        ctx.mark_dirty(z)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy: torch.Tensor):
        (y,) = ctx.saved_tensors
        dim = ctx.dim
        if y.shape[dim] == 0:
            return dy.clone(), None, None
        gppr = y.sqrt()  # 1 / g''(y) for the Tsallis 1.5 entropy; 0 off the support
        dx = dy * gppr
        # a fully masked row has gppr = 0 everywhere: 0 / tiny = 0, not NaN
        q = dx.sum(dim, keepdim=True).div_(gppr.sum(dim, keepdim=True).clamp_(min=torch.finfo(y.dtype).tiny))
        return dx.sub_(gppr.mul_(q)), None, None


def entmax15(x: torch.Tensor, dim: int = -1, *, mask: torch.Tensor | None = None) -> torch.Tensor:
    """1.5-entmax: a sparse softmax between softmax (alpha=1) and sparsemax (alpha=2).

    ``entmax15(z) = argmax_{p in simplex} <p, z> + H^T_1.5(p)`` with the Tsallis entropy
    ``H^T_1.5(p) = (1 - sum_i p_i^1.5) / 0.75``; the solution is
    ``p_i = [z_i / 2 - tau]_+^2`` with ``tau`` such that ``sum_i p_i = 1``, found exactly
    by sorting (Peters, Niculae & Martins, "Sparse Sequence-to-Sequence Models",
    ACL 2019). Backward, with ``g = sqrt(p)``: ``dz = g*dp - g * sum(g*dp) / sum(g)``.
    Only the output is saved for backward.

    Args:
        x: scores.
        dim: the dimension that sums to 1.
        mask: bool, True = may attend, broadcastable to ``x`` (keyword only). Masked
            positions get exactly 0; a fully masked row gives zeros and zero gradient.

    Shape: x (..., T, ...), mask broadcastable -> same shape as x, dtype of x.

    Returns:
        weights on the simplex along ``dim`` (zeros for fully masked rows).
    """
    z, dim = _prepare(x, mask, dim, "x")
    z = _fresh(_shift_and_fill(z, mask, dim), x)
    w = _Entmax15Function.apply(z, dim, _mask_like(mask, z))
    return w.to(x.dtype)


# ------------------------------------------------------------------- sigmoid and relu


def sigmoid_normalizer(scores: torch.Tensor, mask: torch.Tensor | None = None, dim: int = -1) -> torch.Tensor:
    """Sigmoid attention: each weight is an independent gate ``w_j = sigmoid(s_j)``.

    The weights do NOT sum to 1 (each lies in (0, 1)); ``dim`` is checked but the
    map is elementwise. Masked positions get 0.

    Shape: scores (..., T), mask broadcastable -> (..., T).
    """
    x, dim = _prepare(scores, mask, dim)
    return _apply_mask(torch.sigmoid(x), mask).to(scores.dtype)


def relu_normalizer(
    scores: torch.Tensor, mask: torch.Tensor | None = None, dim: int = -1, *, eps: float = 1e-6
) -> torch.Tensor:
    """ReLU attention, normalized: ``w_j = relu(s_j) / (sum_k relu(s_k) + eps)``.

    The sum runs over the allowed positions. Non-positive scores get exactly 0 (sparse);
    a row with no positive score gives all zeros (not NaN). ``eps`` keeps the map
    continuous and its gradient bounded (by ``1/eps``) as the positive mass goes to 0,
    at the price of rows summing to ``S / (S + eps)`` (slightly below 1) instead of 1.
    This is the only ReLU variant offered; unnormalized ``relu(s)`` has no scale control.

    Shape: scores (..., T), mask broadcastable -> (..., T).
    """
    x, dim = _prepare(scores, mask, dim)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (eps > 0 and math.isfinite(eps)):
        raise ValueError(f"eps must be a positive finite float, got {eps!r}")
    r = _apply_mask(torch.relu(x), mask)
    return (r / (r.sum(dim, keepdim=True) + eps)).to(scores.dtype)


# ------------------------------------------------------------------- hard and gumbel


def _straight_through(logits: torch.Tensor, y_soft: torch.Tensor, mask, dim: int) -> torch.Tensor:
    """One-hot argmax of the allowed ``logits`` forward, gradient of ``y_soft`` backward."""
    if logits.shape[dim] == 0:
        return y_soft  # no position to pick (argmax fails on an empty dim)
    if mask is not None:
        logits = logits.masked_fill(~mask, mask_fill_value(logits.dtype))
    idx = logits.detach().argmax(dim, keepdim=True)
    y_hard = _apply_mask(torch.zeros_like(y_soft).scatter_(dim, idx, 1.0), mask)
    # y_hard + (y_soft - y_soft.detach()) equals y_hard - y_soft.detach() + y_soft in the
    # gradient, but the forward is exactly one-hot (1 - a + a can round to 1 - ulp).
    return y_hard + (y_soft - y_soft.detach())


def hard_argmax(scores: torch.Tensor, mask: torch.Tensor | None = None, dim: int = -1) -> torch.Tensor:
    """Hard attention with a straight-through estimator.

    Forward: the one-hot vector at ``argmax_j s_j`` over the allowed positions (ties:
    the first). Backward: the gradient of :func:`softmax` (Bengio et al. 2013's
    straight-through estimator; as in ``y_hard - y_soft.detach() + y_soft``).

    Shape: scores (..., T), mask broadcastable -> (..., T).
    """
    x, dim = _prepare(scores, mask, dim)
    y_soft = _softmax_core(x, mask, dim)
    return _straight_through(x, y_soft, mask, dim).to(scores.dtype)


def gumbel_softmax(
    scores: torch.Tensor,
    mask: torch.Tensor | None = None,
    dim: int = -1,
    *,
    tau: float = 1.0,
    hard: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Gumbel-softmax: a differentiable sample of a categorical over the allowed positions.

    ``y = softmax((s + g) / tau)`` with ``g_j = -log(-log u_j)``, ``u_j ~ U(0, 1)``
    (Jang, Gu & Poole 2017; Maddison et al. 2017). With ``hard=True`` the forward is the
    one-hot ``argmax_j (s_j + g_j)`` (an exact sample of ``softmax(s)``) and the backward
    the gradient of the soft ``y`` (straight-through). Masked positions are never sampled.

    Args:
        scores: logits.
        mask: bool, True = may attend, broadcastable to ``scores``.
        dim: the categorical dimension.
        tau: temperature > 0; small tau -> close to one-hot.
        hard: return a straight-through one-hot sample.
        generator: a ``torch.Generator`` for reproducible noise.

    Shape: scores (..., T), mask broadcastable -> (..., T).
    """
    x, dim = _prepare(scores, mask, dim)
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not (tau > 0 and math.isfinite(tau)):
        raise ValueError(f"tau must be a positive finite float, got {tau!r}")
    if not isinstance(hard, bool):
        raise TypeError(f"hard must be a bool, got {type(hard).__name__}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    # u = 0 would give g = -inf; u < 1 always, so g stays finite.
    u = u.clamp(min=torch.finfo(x.dtype).tiny)
    g = -torch.log(-torch.log(u))
    logits = (x + g) / tau
    y_soft = _softmax_core(logits, mask, dim)
    if hard:
        y_soft = _straight_through(logits, y_soft, mask, dim)
    return y_soft.to(scores.dtype)


NORMALIZERS = {
    "softmax": softmax,
    "sparsemax": sparsemax,
    "entmax15": entmax15,
    "sigmoid": sigmoid_normalizer,
    "relu": relu_normalizer,
    "hard": hard_argmax,
    "gumbel": gumbel_softmax,
}


def get_normalizer(normalizer):
    """A normalizer by name (see ``NORMALIZERS``) or the callable itself."""
    return resolve(NORMALIZERS, normalizer, "normalizer")
