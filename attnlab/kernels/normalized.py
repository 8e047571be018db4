"""Sigmoid and ReLU attention in query blocks: no ``(Tq, Tk)`` tensor kept for backward.

    sigmoid:  w_ij = sigmoid(s_ij) m_ij                          (independent gates)
    relu:     w_ij = relu(s_ij) m_ij / (sum_k relu(s_ik) m_ik + eps)
    out_i     = sum_j w_ij v_j,      s_ij = scale * q_i . k_j

Sigmoid attention: Ramapuram et al. (2024), "Theory, Analysis, and Best Practices for
Sigmoid Self-Attention"; ReLU attention as in :func:`attnlab.functional.normalizers.relu_normalizer`
(Shen et al. 2023, "A Study on ReLU and Softmax in Transformer").

Neither needs softmax's running maximum: each row of weights depends only on that row
of scores, so the forward walks blocks of ``block`` query rows over all keys (a
``(block, Tk)`` score tile at a time) and saves only ``q, k, v`` and, for ReLU, the
row sums ``S_i`` (N, Tq). The backward recomputes each tile:

    sigmoid:  dS_ij = (dO_i . v_j) w_ij (1 - sigmoid(s_ij))
    relu:     dS_ij = [s_ij > 0] m_ij (dO_i . v_j - dO_i . O_i) / (S_i + eps)

(the ReLU line uses ``sum_k w_ik (dO_i . v_k) = dO_i . O_i``), then ``dq = scale dS k``,
``dk = scale dS^T q``, ``dv = w^T dO``, each a matmul per tile. Extra memory is
O(block * Tk) per call instead of the reference's several ``(N, Tq, Tk)`` tensors.
A row whose keys are all masked gives zero output and zero gradient (its weights are
zero). Blocked torch matmuls were chosen over numba: the work is matmul-bound and
torch's GEMM runs near the machine's rate (see ``attnlab bench normalizers``).
"""

from __future__ import annotations

import math

import torch

from .._checks import broadcast_shape, check_bool_mask, check_positive_int, check_tensor, fmt_shape, resolve
from ..functional.attend import AttentionResult

__all__ = ["normalized_attention", "TILED_NORMALIZERS", "DEFAULT_NORMALIZED_BLOCK"]

# Score elements per tile (all batch rows together): 2^23 fp32 = 32 MiB. Measured
# under load at B=1, H=8, L=1024 (fwd+bwd, 2 threads): 256-row tiles took 4.6 s,
# one 1024-row tile 2.4 s (attend 2.0 s): each tile costs about ten separate ops, so
# tiles should be as large as the memory bound allows.
DEFAULT_NORMALIZED_BLOCK = None
_TILE_ELEMENTS = 1 << 23


# --------------------------------------------------------------------------- per-tile math
#
# Each normalizer is a pair (forward tile, backward tile) over s (N, b, Tk) and the
# tile's mask m (broadcastable bool or None):
#   fwd(s, m, eps) -> (w, stat)        w (N, b, Tk); stat (N, b, 1) saved for backward or None
#   bwd(s, m, stat, dp, dout_o, eps) -> dS    dp = dO V^T (N, b, Tk); dout_o = dO . O (N, b, 1)
# Both may overwrite s and dp in place (they are tile temporaries).


def _sigmoid_fwd(s, m, eps):
    w = s.sigmoid_()
    if m is not None:
        w.mul_(m)
    return w, None


def _sigmoid_bwd(s, m, stat, dp, dout_o, eps):
    sig = s.sigmoid_()
    # d sigmoid = sig (1 - sig); the mask zeroes masked and fully masked rows.
    dp.mul_(1.0 - sig).mul_(sig)
    if m is not None:
        sig.mul_(m)  # now the weights w
        dp.mul_(m)
    return dp, sig


def _relu_fwd(s, m, eps):
    r = s.relu_()
    if m is not None:
        r.mul_(m)
    S = r.sum(-1, keepdim=True)  # (N, b, 1)
    return r.div_(S + eps), S


def _relu_bwd(s, m, S, dp, dout_o, eps):
    pos = (s > 0).to(s.dtype)
    if m is not None:
        pos.mul_(m)
    r = s.relu_().mul_(pos)
    denom = S + eps  # (N, b, 1)
    w = r.div_(denom)
    # d w_ij / d r_ik = (delta_jk - w_ij) / (S + eps), so with dp_ij = dO_i . v_j:
    # dr_ik = (dp_ik - sum_j w_ij dp_ij) / (S + eps) = (dp_ik - dO_i . O_i) / (S + eps)
    ds = dp.sub_(dout_o).div_(denom).mul_(pos)
    return ds, w


TILED_NORMALIZERS = {
    "sigmoid": (_sigmoid_fwd, _sigmoid_bwd),
    "relu": (_relu_fwd, _relu_bwd),
}


def _mask_rows(mask, i0: int, i1: int):
    """The rows ``i0:i1`` of a (N|1, Tq|1, Tk|1) mask (a size-1 query axis is shared)."""
    if mask is None:
        return None
    return mask if mask.shape[1] == 1 else mask[:, i0:i1]


class _NormalizedAttention(torch.autograd.Function):
    """q (N, Tq, D), k (N, Tk, D), v (N, Tk, Dv), mask (N|1, Tq|1, Tk|1) bool or None
    -> out (N, Tq, Dv). Contiguous float32/float64."""

    @staticmethod
    def forward(ctx, q, k, v, mask, name: str, scale: float, eps: float, block: int):
        fwd, _ = TILED_NORMALIZERS[name]
        N, Tq, _ = q.shape
        out = q.new_empty(N, Tq, v.shape[-1])  # (N, Tq, Dv)
        stats = q.new_empty(N, Tq, 1) if name == "relu" else None  # row sums S_i
        kt = k.transpose(1, 2)  # (N, D, Tk)
        for i0 in range(0, Tq, block):
            i1 = min(i0 + block, Tq)
            s = torch.matmul(q[:, i0:i1], kt).mul_(scale)  # (N, b, Tk)
            w, st = fwd(s, _mask_rows(mask, i0, i1), eps)
            out[:, i0:i1] = torch.matmul(w, v)  # (N, b, Dv)
            if stats is not None:
                stats[:, i0:i1] = st
        ctx.save_for_backward(q, k, v, out, stats)
        ctx.mask, ctx.name, ctx.scale, ctx.eps, ctx.block = mask, name, scale, eps, block
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        q, k, v, out, stats = ctx.saved_tensors
        _, bwd = TILED_NORMALIZERS[ctx.name]
        mask, scale, eps, block = ctx.mask, ctx.scale, ctx.eps, ctx.block
        dout = dout.contiguous()
        Tq = q.shape[1]
        dq = torch.empty_like(q)
        dk = torch.zeros_like(k)
        dv = torch.zeros_like(v)
        kt, vt = k.transpose(1, 2), v.transpose(1, 2)  # (N, D, Tk), (N, Dv, Tk)
        for i0 in range(0, Tq, block):
            i1 = min(i0 + block, Tq)
            qb, dob = q[:, i0:i1], dout[:, i0:i1]  # (N, b, D), (N, b, Dv)
            s = torch.matmul(qb, kt).mul_(scale)  # (N, b, Tk)
            dp = torch.matmul(dob, vt)  # (N, b, Tk): dO_i . v_j
            dout_o = (dob * out[:, i0:i1]).sum(-1, keepdim=True)  # (N, b, 1)
            st = None if stats is None else stats[:, i0:i1]
            ds, w = bwd(s, _mask_rows(mask, i0, i1), st, dp, dout_o, eps)
            dv.baddbmm_(w.transpose(1, 2), dob)  # (N, Tk, Dv) += w^T dO
            ds.mul_(scale)
            dq[:, i0:i1] = torch.matmul(ds, k)  # (N, b, D)
            dk.baddbmm_(ds.transpose(1, 2), qb)  # (N, Tk, D) += dS^T q
        return dq, dk, dv, None, None, None, None, None


def normalized_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    normalizer: str = "sigmoid",
    *,
    mask: torch.Tensor | None = None,
    scale: float | None = None,
    eps: float = 1e-6,
    block_size: int | None = DEFAULT_NORMALIZED_BLOCK,
) -> AttentionResult:
    """Dot-product attention with a sigmoid or ReLU normalizer, tiled over query blocks.

    Same result as ``attend(q, k, v, score="scaled_dot", normalizer=normalizer,
    mask=mask)`` (with ``score_kwargs={"scale": scale}`` when given; ReLU's ``eps`` as
    ``normalizer_kwargs``), in O(block * Tk) extra memory; see the module docstring for
    the equations and the backward.

    Args:
        q, k, v: queries, keys, values (one floating dtype; bf16/fp16 are computed in
            float32 and the output cast back).
        normalizer: "sigmoid" or "relu" (:data:`TILED_NORMALIZERS`).
        mask: bool, True = may attend, broadcastable to ``(..., Tq, Tk)``.
        scale: score scale, default ``1 / sqrt(D)`` (``1.0`` gives Luong's "dot").
        eps: ReLU's denominator floor (as :func:`attnlab.functional.normalizers.relu_normalizer`).
        block_size: query rows per tile; default: as many as keep a tile of all batch
            rows at 2^23 score elements (32 MiB fp32), at least 16.

    Shape:
        q (..., Tq, D), k (..., Tk, D), v (..., Tk, Dv) (batch dims broadcast)
        -> output (..., Tq, Dv).

    Returns:
        :class:`AttentionResult` ``(output, None)``: weights are not produced here
        (ask :func:`attnlab.functional.attend` or the dispatcher with ``need_weights``).
    """
    check_tensor(q, "q", min_ndim=2)
    check_tensor(k, "k", min_ndim=2)
    check_tensor(v, "v", min_ndim=2)
    if not isinstance(normalizer, str) or normalizer not in TILED_NORMALIZERS:
        resolve(TILED_NORMALIZERS, normalizer if isinstance(normalizer, str) else repr(normalizer), "normalizer")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q and k must share their last dimension: q is {fmt_shape(q.shape)}, k is {fmt_shape(k.shape)}"
        )
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"k and v must have the same number of keys Tk: k is {fmt_shape(k.shape)}, v is {fmt_shape(v.shape)}"
        )
    for x, name, axis in ((q, "q", "Tq"), (k, "k", "Tk")):
        if x.shape[-2] == 0:
            raise ValueError(f"{name} has an empty axis {axis} (shape {fmt_shape(x.shape)}); need at least 1")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if block_size is not None:
        check_positive_int(block_size, "block_size")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (eps > 0 and math.isfinite(eps)):
        raise ValueError(f"eps must be a positive finite float, got {eps!r}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)

    try:
        lead = broadcast_shape(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    except ValueError:
        raise ValueError(
            f"q, k and v batch dimensions do not broadcast: q {fmt_shape(q.shape)}, k {fmt_shape(k.shape)}, "
            f"v {fmt_shape(v.shape)}"
        ) from None
    Tq, Tk = q.shape[-2], k.shape[-2]
    check_bool_mask(mask, "mask", lead + (Tq, Tk), "the scores (..., Tq, Tk)")

    dtype = q.dtype
    work = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    N = math.prod(lead)
    block = block_size if block_size is not None else max(16, min(Tq, _TILE_ELEMENTS // max(1, N * Tk)))
    q3 = q.to(work).expand(*lead, Tq, q.shape[-1]).reshape(N, Tq, -1)  # (N, Tq, D)
    k3 = k.to(work).expand(*lead, Tk, k.shape[-1]).reshape(N, Tk, -1)  # (N, Tk, D)
    v3 = v.to(work).expand(*lead, Tk, v.shape[-1]).reshape(N, Tk, -1)  # (N, Tk, Dv)
    m3 = None
    if mask is not None:
        m = mask.reshape((1,) * (len(lead) + 2 - mask.dim()) + tuple(mask.shape))  # (..., Tq|1, Tk|1)
        if all(s == 1 for s in m.shape[:-2]):
            m3 = m.reshape(1, m.shape[-2], m.shape[-1])  # (1, Tq|1, Tk|1): shared by the batch
        else:
            m3 = m.expand(*lead, m.shape[-2], m.shape[-1]).reshape(N, m.shape[-2], m.shape[-1])
        m3 = m3.to(work)  # multiplied into tiles
    out = _NormalizedAttention.apply(
        q3.contiguous(), k3.contiguous(), v3.contiguous(), m3, normalizer, scale, float(eps), block
    )  # (N, Tq, Dv)
    return AttentionResult(out.reshape(*lead, Tq, v.shape[-1]).to(dtype), None)
