"""Fused additive (Bahdanau / Luong "concat") attention for the CPU, with a backward pass.

Bahdanau, Cho & Bengio (2014), "Neural Machine Translation by Jointly Learning to
Align and Translate"; Luong, Pham & Manning (2015) call the same score "concat":

    e_ij = v^T tanh(W_q q_i + W_k k_j + b),   a_ij = softmax_j(e_ij),   o_i = sum_j a_ij v_j

The textbook code (and :func:`attnlab.functional.scores.additive_score`) builds the
``(B, Tq, Tk, hidden)`` tensor of ``tanh`` arguments: at B=8, Tq=Tk=512, hidden=256
that is 2 GiB per copy, and autograd keeps several. This kernel never does:

1. the projections ``pq = q W_q^T + b`` (B, Tq, hidden) and ``pk = k W_k^T``
   (B, Tk, hidden) are two torch matmuls (autograd differentiates them);
2. a numba kernel walks blocks of query rows (see :data:`_ROW_BLOCK`) over their
   allowed keys, computes ``s_ij = sum_h v_h tanh(pq_ih + pk_jh)`` into a per-thread
   (block, Tk) buffer, takes the exact row maximum, and accumulates
   ``o_i = sum_j exp(s_ij - m_i) v_j / l_i``. It saves only ``o`` and the row
   log-sum-exp ``lse_i = m_i + log l_i`` (B, Tq);
3. the backward recomputes each ``tanh`` once, flash-attention style:
   ``p_ij = exp(s_ij - lse_i)``, ``dS_ij = p_ij (dO_i . V_j - dO_i . O_i)``,
   ``dpq_ih = sum_j dS_ij v_h (1 - t_ijh^2)``, ``dpk_jh = sum_i (same)``,
   ``dv_h = sum_ij dS_ij t_ijh``, ``dV_j = sum_i p_ij dO_i``.

Extra memory is O(B Tq) for ``lse``, O(B T hidden) for ``exp(2 pq)``, ``exp(2 pk)``
and, in the backward, per-stripe copies of ``dpk`` and ``dV`` (see :func:`_stripes`)
instead of atomics. The weights ``(B, Tq, Tk)`` are written only when asked for
(``need_weights=True``), and are differentiable then.

How ``tanh`` is evaluated (one compiled specialization per kernel per dtype, cached on
disk with ``cache=True``):

- float32, projections within +-40: ``tanh(a + b) = 1 - 2 / (1 + e^{2a} e^{2b})`` with
  ``e^{2a}``, ``e^{2b}`` computed once per row (O(T hidden) exps), so each of the
  O(Tq Tk hidden) terms costs one fma and one division: measured 2.9x the rational
  ``tanh`` below. Its error is absolute (~1e-7 per term, like float32 rounding of t).
- float32 otherwise: a rational ``tanh`` (Eigen's 13/6 minimax fit, max relative error
  4e-7 measured against float64) that vectorizes;
- float64: the exact ``math.tanh``, so float64 gradcheck is exact.

bfloat16 / float16 inputs are computed in float32 and the results cast back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np
import torch
from numba import njit, prange, types
from numba.extending import overload

from .._checks import check_bool_mask, check_tensor, fmt_shape
from ..functional.attend import AttentionResult

__all__ = ["additive_attention"]

# "fast" minus nnan/ninf: the kernels mark masked scores with -inf and empty rows with
# lse = +inf, and LLVM may fold those tests away under no-infs. reassoc is what lets
# the h-reductions vectorize.
_FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
# error_model="numpy": no ZeroDivisionError check on every division. That check is a
# branch inside the h-loop and stopped LLVM from vectorizing the rational tanh (measured
# 0.3 -> 2.0 G tanh/s per core). No kernel divides by zero (tanh's Q(x^2) >= 4.9e-3,
# the softmax denominator >= 1).
_JIT = dict(fastmath=_FASTMATH, error_model="numpy", cache=True)

# ------------------------------------------------------------------------------ tanh

# Eigen's generic_fast_tanh_float: tanh(x) ~ x P(x^2) / Q(x^2) on [-c, c], clamped
# outside (tanh(7.9053) rounds to 1 in float32). Measured on 4e6 points of [-12, 12]
# plus 1e5 log-spaced in [1e-30, 16]: max relative error 3.9e-7, |tanh| <= 1.
_TANH_CLAMP = np.float32(7.90531110763549805)
_A1 = np.float32(4.89352455891786e-03)
_A3 = np.float32(6.37261928875436e-04)
_A5 = np.float32(1.48572235717979e-05)
_A7 = np.float32(5.12229709037114e-08)
_A9 = np.float32(-8.60467152213735e-11)
_A11 = np.float32(2.00018790482477e-13)
_A13 = np.float32(-2.76076847742355e-16)
_B0 = np.float32(4.89352518554385e-03)
_B2 = np.float32(2.26843463243900e-03)
_B4 = np.float32(1.18534705686654e-04)
_B6 = np.float32(1.19825839466702e-06)


def _tanh(x):
    """Stand-in resolved per dtype by numba at typing time (see the overload below)."""
    return math.tanh(x)


@overload(_tanh, inline="always", jit_options={"fastmath": _FASTMATH, "error_model": "numpy"})
def _tanh_overload(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:

        def rational_tanh(x):
            xc = min(max(x, -_TANH_CLAMP), _TANH_CLAMP)
            x2 = xc * xc
            p = _A13
            p = p * x2 + _A11
            p = p * x2 + _A9
            p = p * x2 + _A7
            p = p * x2 + _A5
            p = p * x2 + _A3
            p = p * x2 + _A1
            q = _B6
            q = q * x2 + _B4
            q = q * x2 + _B2
            q = q * x2 + _B0
            return xc * p / q

        return rational_tanh

    def exact_tanh(x):
        return math.tanh(x)

    return exact_tanh


def fast_tanh(x: np.ndarray) -> np.ndarray:
    """The kernels' ``tanh`` on a 1-D numpy array (float32: rational; float64: exact).

    Exposed for tests that check its accuracy.
    """
    out = np.empty_like(x)
    _tanh_array(x, out)
    return out


@njit(**_JIT)
def _tanh_array(x, out):
    for idx in range(x.shape[0]):
        out[idx] = _tanh(x[idx])


# ------------------------------------------------------------------------ numba kernels


@njit(inline="always")
def _row_end(n, i, Tq, Tk, lengths, causal):
    """One past the last key query ``(n, i)`` may see: padding and causality cut a
    prefix, so the loop over keys simply stops early (causal: j <= i + Tk - Tq)."""
    end = min(lengths[n], Tk)
    if causal:
        end = min(end, i + Tk - Tq + 1)
    return end


@njit(inline="always")
def _allowed(n, i, j, mask, mask_b):
    # mask is (Nm, Tqm, Tkm) with Tqm in {1, Tq}, Tkm in {1, Tk}: a broadcast axis is read at 0.
    mi = i if mask.shape[1] > 1 else 0
    mj = j if mask.shape[2] > 1 else 0
    return mask[mask_b[n], mi, mj]


@njit(inline="always")
def _score(xar, xbr, vatt, vsum, prod, zero, one, two):
    """``s = sum_h v_h tanh(a_h + b_h)`` for one (query, key) pair.

    prod: xar = exp(2 a), xbr = exp(2 b), and tanh(a + b) = 1 - 2 / (1 + e^{2a} e^{2b}),
    so s = sum(v) - 2 sum_h v_h / (1 + xar_h xbr_h): one fma and one division per term.
    Otherwise xar = a, xbr = b and tanh is evaluated (rational in float32, libm in float64).
    """
    acc = zero
    if prod:
        for h in range(vatt.shape[0]):
            acc += vatt[h] / (one + xar[h] * xbr[h])
        return vsum - two * acc
    for h in range(vatt.shape[0]):
        acc += vatt[h] * _tanh(xar[h] + xbr[h])
    return acc


# Query rows are processed in blocks of _ROW_BLOCK against each key, so a key's
# projection and value rows (and, in the backward, its dpk and dV rows) are touched once
# per block instead of once per query. At Tk = 16384 they are 16 MiB + 4 MiB per batch
# entry, beyond the caches: one row at a time ran at half speed there (measured, one
# thread, Tq = 256: 2.3 -> 4.8 G terms/s forward, 1.3 -> 1.9 backward with blocks of 8;
# 16 was within 8% either way, 8 is the better of the two at Tk = 512).
_ROW_BLOCK = 8


@njit(parallel=True, **_JIT)
def _forward_kernel(xa, xb, vatt, V, prod, lengths, causal, mask, mask_b, has_mask, out, lse, weights, write_weights, nt):
    """out (N, Tq, Dv), lse (N, Tq) and, if ``write_weights``, weights (N, Tq, Tk).

    xa (N, Tq, H), xb (N, Tk, H): the projections pq, pk, or exp(2 pq), exp(2 pk) when
    ``prod`` (see :func:`_score`). A row with no allowed key gets out = 0, lse = +inf,
    weights = 0. ``nt``: the number of workers (numba.get_num_threads() is passed in
    because calling it here would make the function uncacheable).
    """
    N, Tq, H = xa.shape
    Tk = xb.shape[1]
    Dv = V.shape[2]
    RB = _ROW_BLOCK
    nbq = (Tq + RB - 1) // RB  # row blocks per batch entry
    NB = N * nbq
    nt = max(1, min(nt, NB))
    # Typed constants: a bare 0.0 or 2.0 would promote float32 arithmetic to float64.
    zero = np.zeros(1, xa.dtype)[0]
    one = np.ones(1, xa.dtype)[0]
    two = one + one
    vsum = zero
    for h in range(H):
        vsum += vatt[h]
    # Blocks are dealt round-robin to the nt workers so causal blocks (whose cost grows
    # with i) balance out.
    for t in prange(nt):
        sb = np.empty((RB, Tk), xa.dtype)  # the block's scores, then unnormalized weights
        acc = np.empty((RB, Dv), xa.dtype)
        m = np.empty(RB, xa.dtype)
        l = np.empty(RB, xa.dtype)
        seen = np.empty(RB, np.int64)  # allowed keys, apart from m: NaN scores give NaN, not zeros
        ends = np.empty(RB, np.int64)
        for blk in range(t, NB, nt):
            n = blk // nbq
            i0 = (blk - n * nbq) * RB
            rb = min(RB, Tq - i0)
            jmax = 0
            for r in range(rb):
                ends[r] = _row_end(n, i0 + r, Tq, Tk, lengths, causal)
                jmax = max(jmax, ends[r])
                m[r] = -np.inf
                seen[r] = 0
            for j in range(jmax):
                xbr = xb[n, j]
                for r in range(rb):
                    if j >= ends[r] or (has_mask and not _allowed(n, i0 + r, j, mask, mask_b)):
                        sb[r, j] = -np.inf
                        continue
                    sc = _score(xa[n, i0 + r], xbr, vatt, vsum, prod, zero, one, two)
                    sb[r, j] = sc
                    seen[r] += 1
                    if sc > m[r]:
                        m[r] = sc
            for r in range(rb):
                l[r] = zero
                if seen[r] == 0:
                    continue
                for j in range(jmax):
                    if sb[r, j] == -np.inf:
                        sb[r, j] = zero
                    else:
                        sb[r, j] = math.exp(sb[r, j] - m[r])
                        l[r] += sb[r, j]
            acc[:rb] = 0.0
            for j in range(jmax):
                vr = V[n, j]
                for r in range(rb):
                    if seen[r] == 0:
                        continue
                    w = sb[r, j]
                    ar = acc[r]
                    for d in range(Dv):
                        ar[d] += w * vr[d]
            for r in range(rb):
                i = i0 + r
                if write_weights:
                    for j in range(Tk):
                        weights[n, i, j] = 0.0
                if seen[r] == 0:  # fully masked row: zero output, never NaN
                    for d in range(Dv):
                        out[n, i, d] = 0.0
                    lse[n, i] = np.inf
                    continue
                inv = one / l[r]
                for d in range(Dv):
                    out[n, i, d] = acc[r, d] * inv
                lse[n, i] = m[r] + math.log(l[r])
                if write_weights:
                    for j in range(jmax):
                        weights[n, i, j] = sb[r, j] * inv


def _stripes(N: int, Tq: int, nt: int) -> int:
    """How many stripes each batch entry is split into in the backward.

    The work items are (batch n, stripe s); stripe s owns row blocks s, s + S, ... (of
    _ROW_BLOCK rows) and its own copy of dpk[n] and dV[n], so no two items write the
    same memory. S = 1 (no copy at all) once there are at least two items per thread.
    """
    blocks = -(-Tq // _ROW_BLOCK)
    return max(1, min(blocks, -(-2 * nt // N)))


# Below this many (i, j, h) terms a call runs on one thread: waking the OpenMP workers
# costs more than the work (measured 7-14 ms per call on the shared 2-core machine, vs
# 1.3 ms serial, for the test shapes). Tests set it to 0 to exercise the parallel path.
_SERIAL_WORK = 1 << 20


class _threads:
    """Run the enclosed kernel call on ``n`` numba threads (thread-local), then restore."""

    def __init__(self, work: int):
        self.before = numba.get_num_threads()
        self.n = 1 if work < _SERIAL_WORK else self.before

    def __enter__(self) -> int:
        numba.set_num_threads(self.n)
        return self.n

    def __exit__(self, *exc) -> None:
        numba.set_num_threads(self.before)


@njit(parallel=True, **_JIT)
def _backward_kernel(
    xa, xb, vatt, V, prod, dout, lse, delta, lengths, causal, mask, mask_b, has_mask, dw, has_dw,
    gpq, gpk_acc, dv_acc, dvatt_acc,
):  # fmt: skip
    """Gradients of the forward, recomputing each (i, j) score once.

    With t = tanh(a + b) and u = (1 - t) / 2 (= 1 / (1 + e^{2a} e^{2b}) in the product
    form): dt/da = dt/db = 1 - t^2 = 4 u (1 - u) and sum_j dS_j t_j = sum_j dS_j - 2 sum_j dS_j u_j.
    The common factor 4 v_h is left to the caller, so the kernel writes

        gpq[n, i, h]     = sum_j dS_ij u_ijh (1 - u_ijh)       (dpq = 4 v * gpq)
        gpk_acc[s, n, j] = sum_i dS_ij u_ijh (1 - u_ijh)       over the rows of stripe s
        dvatt_acc[item]  = sum_ij dS_ij t_ijh                   over the rows of the item
        dv_acc[s, n, j]  = sum_i p_ij dO_i

    with p_ij = exp(s_ij - lse_i), dS_ij = p_ij (dO_i . V_j + dw_ij - delta_i), ``delta``
    (N, Tq) = dO_i . O_i (+ sum_j p_ij dw_ij when the weights have a gradient ``dw``).
    The accumulators are zero on entry; see :func:`_stripes` for the (n, stripe) items.
    """
    N, Tq, H = xa.shape
    Tk = xb.shape[1]
    Dv = V.shape[2]
    S = gpk_acc.shape[0]
    RB = _ROW_BLOCK
    nbq = (Tq + RB - 1) // RB
    zero = np.zeros(1, xa.dtype)[0]
    one = np.ones(1, xa.dtype)[0]
    two = one + one
    half = one / two
    vsum = zero
    for h in range(H):
        vsum += vatt[h]
    for item in prange(N * S):
        n = item // S
        st = item - n * S
        ub = np.empty(H, xa.dtype)  # u of the current (i, j), reused by the gradient loop
        gq = np.empty((RB, H), xa.dtype)
        gt = np.empty((RB, H), xa.dtype)  # sum_j dS_ij u_ijh of each row of the block
        dsum = np.empty(RB, xa.dtype)
        ends = np.empty(RB, np.int64)
        gv = dvatt_acc[item]
        dk = gpk_acc[st, n]
        dvk = dv_acc[st, n]
        for blk in range(st, nbq, S):
            i0 = blk * RB
            rb = min(RB, Tq - i0)
            jmax = 0
            for r in range(rb):
                # a fully masked row (lse = +inf) sees no key: zero gradient
                ends[r] = 0 if lse[n, i0 + r] == np.inf else _row_end(n, i0 + r, Tq, Tk, lengths, causal)
                jmax = max(jmax, ends[r])
            gq[:rb] = 0.0
            gt[:rb] = 0.0
            dsum[:rb] = 0.0
            for j in range(jmax):
                xbr = xb[n, j]
                vr = V[n, j]
                dkr = dk[j]
                dvr = dvk[j]
                for r in range(rb):
                    i = i0 + r
                    if j >= ends[r] or (has_mask and not _allowed(n, i, j, mask, mask_b)):
                        continue
                    xar = xa[n, i]
                    acc = zero
                    if prod:
                        for h in range(H):
                            u = one / (one + xar[h] * xbr[h])
                            ub[h] = u
                            acc += vatt[h] * u
                        sc = vsum - two * acc
                    else:
                        for h in range(H):
                            th = _tanh(xar[h] + xbr[h])
                            ub[h] = half - half * th
                            acc += vatt[h] * th
                        sc = acc
                    p = math.exp(sc - lse[n, i])
                    if p == 0.0:  # underflowed weight: every gradient term of (i, j) is exactly 0
                        continue
                    dor = dout[n, i]
                    dp = zero
                    for d in range(Dv):
                        dp += dor[d] * vr[d]
                    if has_dw:
                        dp += dw[n, i, j]
                    ds = p * (dp - delta[n, i])
                    for d in range(Dv):
                        dvr[d] += p * dor[d]
                    dsum[r] += ds
                    gqr = gq[r]
                    gtr = gt[r]
                    for h in range(H):
                        x = ds * ub[h]
                        g = x - x * ub[h]
                        dkr[h] += g
                        gqr[h] += g
                        gtr[h] += x
            for r in range(rb):
                for h in range(H):
                    gpq[n, i0 + r, h] = gq[r, h]
                    gv[h] += dsum[r] - two * gt[r, h]


# ------------------------------------------------------------------- autograd Function


@dataclass(frozen=True)
class _KeyLimits:
    """Which keys each flat batch row may see, as the kernels read it.

    lengths (N,) int64: keys j >= lengths[n] are padding. causal: j <= i + Tk - Tq.
    mask (Nm, Tqm, Tkm) bool, read for flat batch n at mask_b[n] (N,) int64.
    """

    lengths: np.ndarray
    causal: bool
    mask: np.ndarray
    mask_b: np.ndarray
    has_mask: bool


# The product form (see _score) needs exp(2 pq) and exp(2 pk) to be finite and nonzero
# on their own; for |x| <= 40 they lie in [1.8e-35, 5.5e34], normal float32 numbers,
# and E F overflowing to inf (or underflowing to 0) then gives tanh = +1 (-1) exactly.
# Larger projections, and float64 (kept on the exact libm tanh), use the tanh loop.
_PRODUCT_BOUND = {torch.float32: 40.0}


def _use_product_form(pq: torch.Tensor, pk: torch.Tensor) -> bool:
    bound = _PRODUCT_BOUND.get(pq.dtype)
    if bound is None:
        return False
    # NaN compares False: NaN input takes the tanh loop and propagates there.
    return bool(pq.abs().max() <= bound) and bool(pk.abs().max() <= bound)


class _AdditiveAttentionFn(torch.autograd.Function):
    """(pq (N, Tq, H), pk (N, Tk, H), v_att (H,), V (N, Tk, Dv)) -> (out (N, Tq, Dv),
    weights (N, Tq, Tk), or (0, 0, 0) when not asked for). float32 or float64, contiguous."""

    @staticmethod
    def forward(ctx, pq, pk, v_att, V, limits: _KeyLimits, need_weights: bool):
        N, Tq, H = pq.shape
        Tk, Dv = V.shape[1], V.shape[2]
        prod = _use_product_form(pq, pk)
        xa = torch.exp(2.0 * pq) if prod else pq.detach().contiguous()  # (N, Tq, H)
        xb = torch.exp(2.0 * pk) if prod else pk.detach().contiguous()  # (N, Tk, H)
        va, Vc = v_att.detach().contiguous(), V.detach().contiguous()
        np_dt = xa.numpy().dtype
        out = np.empty((N, Tq, Dv), np_dt)
        lse = np.empty((N, Tq), np_dt)
        weights = np.empty((N, Tq, Tk) if need_weights else (0, 0, 0), np_dt)
        with _threads(N * Tq * Tk * H) as nt:
            _forward_kernel(
                xa.numpy(), xb.numpy(), va.numpy(), Vc.numpy(), prod,
                limits.lengths, limits.causal, limits.mask, limits.mask_b, limits.has_mask,
                out, lse, weights, need_weights, nt,
            )  # fmt: skip
        out_t, lse_t, w_t = torch.from_numpy(out), torch.from_numpy(lse), torch.from_numpy(weights)
        ctx.limits = limits
        ctx.need_weights = need_weights
        ctx.prod = prod
        ctx.save_for_backward(xa, xb, va, Vc, out_t, lse_t, w_t)
        ctx.set_materialize_grads(False)  # an unused weights output costs no (N, Tq, Tk) zeros
        if not need_weights:
            ctx.mark_non_differentiable(w_t)
        return out_t, w_t

    @staticmethod
    def backward(ctx, dout, dweights):
        if torch.is_grad_enabled():
            # create_graph=True. The numba backward builds no graph, so a second derivative
            # would silently miss every term through it (torch's once_differentiable only
            # catches the case where the incoming gradient itself requires grad).
            raise RuntimeError(
                "additive_attention has no second derivative (backward was called with "
                "create_graph=True); use attnlab.functional.attend(..., score='additive') "
                "for higher-order gradients"
            )
        xa, xb, va, V, out, lse, w = ctx.saved_tensors
        lim = ctx.limits
        has_dw = ctx.need_weights and dweights is not None
        if dout is None and not has_dw:
            return None, None, None, None, None, None
        N, Tq, H = xa.shape
        Tk, Dv = V.shape[1], V.shape[2]
        dt = xa.dtype
        np_dt = xa.numpy().dtype
        dout = torch.zeros((N, Tq, Dv), dtype=dt) if dout is None else dout.to(dt).contiguous()
        delta = (dout * out).sum(-1)  # (N, Tq)
        if has_dw:
            dweights = dweights.to(dt).contiguous()
            delta = delta + (w * dweights).sum(-1)
            dw_n = dweights.numpy()
        else:
            dw_n = np.empty((0, 0, 0), np_dt)
        with _threads(N * Tq * Tk * H) as nt:
            S = _stripes(N, Tq, nt)
            gpq = np.empty((N, Tq, H), np_dt)
            gpk_acc = np.zeros((S, N, Tk, H), np_dt)
            dv_acc = np.zeros((S, N, Tk, Dv), np_dt)
            dvatt_acc = np.zeros((S * N, H), np_dt)
            _backward_kernel(
                xa.numpy(), xb.numpy(), va.numpy(), V.numpy(), ctx.prod, dout.numpy(), lse.numpy(),
                delta.contiguous().numpy(), lim.lengths, lim.causal, lim.mask, lim.mask_b, lim.has_mask,
                dw_n, has_dw, gpq, gpk_acc, dv_acc, dvatt_acc,
            )  # fmt: skip
        v4 = 4.0 * va  # (H,): the factor the kernel leaves out of dpq and dpk
        dpq = torch.from_numpy(gpq).mul_(v4)  # (N, Tq, H)
        gpk = torch.from_numpy(gpk_acc[0]) if S == 1 else torch.from_numpy(gpk_acc).sum(0)
        dpk = gpk.mul_(v4)  # (N, Tk, H)
        dV = torch.from_numpy(dv_acc[0]) if S == 1 else torch.from_numpy(dv_acc).sum(0)  # (N, Tk, Dv)
        dvatt = torch.from_numpy(dvatt_acc).sum(0)  # (H,)
        return dpq, dpk, dvatt, dV, None, None


# ------------------------------------------------------------------------- public API


def _check_same_dtype(x: torch.Tensor, name: str, dtype: torch.dtype) -> None:
    if x.dtype != dtype:
        raise TypeError(f"{name} must have the dtype of q ({dtype}), got {x.dtype}")
    if x.device.type != "cpu":
        raise ValueError(f"{name} must be a CPU tensor (this is a CPU kernel), got device {x.device}")


def _key_lengths(key_lengths, lead: tuple[int, ...], Tk: int) -> np.ndarray:
    """(B,) ints -> (N,) int64, one length per flat batch entry (shared by the later batch dims)."""
    N = math.prod(lead)
    if key_lengths is None:
        return np.full(N, Tk, dtype=np.int64)
    if not isinstance(key_lengths, torch.Tensor):
        try:
            key_lengths = torch.as_tensor(key_lengths)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(
                f"key_lengths must be a (B,) integer tensor, got {type(key_lengths).__name__}"
            ) from None
    if key_lengths.dtype.is_floating_point or key_lengths.dtype.is_complex or key_lengths.dtype == torch.bool:
        raise TypeError(f"key_lengths must be an integer tensor, got {key_lengths.dtype}")
    if len(lead) == 0:
        raise ValueError("key_lengths needs a batch dimension: q, k, v must be (B, T, D), got no batch dims")
    if key_lengths.shape != (lead[0],):
        raise ValueError(f"key_lengths must have shape (B,) = ({lead[0]},), got {fmt_shape(key_lengths.shape)}")
    kl = key_lengths.to(device="cpu", dtype=torch.int64)
    if kl.numel() and (int(kl.min()) < 0 or int(kl.max()) > Tk):
        raise ValueError(f"key_lengths must be in [0, Tk={Tk}], got {kl.tolist()}")
    kl = kl.reshape((lead[0],) + (1,) * (len(lead) - 1)).expand(lead)  # (*lead)
    return kl.reshape(N).contiguous().numpy()


def _mask_arrays(mask, lead: tuple[int, ...], Tq: int, Tk: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """A bool mask broadcastable to (*lead, Tq, Tk) -> (mask (Nm, Tqm, Tkm), mask_b (N,)).

    Axes the caller broadcast with ``expand`` (stride 0) are cut back to size 1, so a
    ``(Tq, Tk)`` causal mask expanded to (B, H, Tq, Tk) is stored once, not B*H times.
    """
    N = math.prod(lead)
    if mask is None:
        return np.ones((1, 1, 1), dtype=np.bool_), np.zeros(N, dtype=np.int64), False
    target = lead + (Tq, Tk)
    check_bool_mask(mask, "mask", target, f"the scores (..., Tq, Tk) = {fmt_shape(target)}")
    m = mask.detach().to("cpu").reshape((1,) * (len(target) - mask.dim()) + tuple(mask.shape))
    for d in range(m.dim()):
        if m.shape[d] > 1 and m.stride(d) == 0:
            m = m.narrow(d, 0, 1)
    mlead = tuple(m.shape[:-2])
    Nm = math.prod(mlead)
    m3 = m.reshape(Nm, m.shape[-2], m.shape[-1]).contiguous()  # (Nm, Tqm, Tkm)
    mask_b = torch.arange(Nm, dtype=torch.int64).reshape(mlead).expand(lead).reshape(N)  # (N,)
    return m3.numpy(), mask_b.contiguous().numpy(), True


def additive_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w_q: torch.Tensor,
    w_k: torch.Tensor,
    v_att: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    mask: torch.Tensor | None = None,
    key_lengths: torch.Tensor | None = None,
    causal: bool = False,
    need_weights: bool = False,
) -> AttentionResult:
    """Additive attention without the ``(B, Tq, Tk, hidden)`` tensor, with a backward.

    ``e_ij = v_att^T tanh(W_q q_i + W_k k_j + b)``, ``a_ij = softmax_j(e_ij)`` over the
    allowed keys, ``out_i = sum_j a_ij v_j`` (Bahdanau, Cho & Bengio 2014; Luong et al.
    2015 "concat" with ``W = [W_q, W_k]``). Same result as
    ``attend(q, k, v, score="additive", score_kwargs=dict(w_q=w_q, w_k=w_k, v=v_att,
    bias=bias), mask=...)``, in O(B T (D + hidden)) memory.

    Args:
        q, k, v: queries, keys, values (CPU, one floating dtype for every tensor).
        w_q, w_k: projections in ``nn.Linear`` layout ``(hidden, in_features)``.
        v_att: the scoring vector ``(hidden,)``; bias: ``(hidden,)`` or None.
        mask: bool, True = may attend, broadcastable to ``(..., Tq, Tk)``. General but
            costs a bool input of that size; prefer ``key_lengths`` / ``causal``.
        key_lengths: ``(B,)`` ints in ``[0, Tk]``: keys ``j >= key_lengths[b]`` are
            padding (shared by any further batch dims, e.g. heads).
        causal: query ``i`` sees keys ``j <= i + (Tk - Tq)`` (queries are the last
            ``Tq`` positions, as in :func:`attnlab.functional.masks.causal_mask`).
        need_weights: also return the weights; O(B Tq Tk), differentiable.

    A query with no allowed key gets a zero output and zero gradient. float32 uses a
    rational tanh (relative error < 4e-7); float64 is exact; bfloat16/float16 are
    computed in float32 and cast back.

    Shape:
        q (..., Tq, Dq), k (..., Tk, Dk), v (..., Tk, Dv) (batch dims broadcast),
        w_q (hidden, Dq), w_k (hidden, Dk), v_att (hidden,), bias (hidden,)
        -> output (..., Tq, Dv), weights (..., Tq, Tk).

    Returns:
        :class:`attnlab.functional.AttentionResult` ``(output, weights or None)``.
    """
    check_tensor(q, "q", min_ndim=2)
    check_tensor(k, "k", min_ndim=2)
    check_tensor(v, "v", min_ndim=2)
    check_tensor(w_q, "w_q", min_ndim=2)
    check_tensor(w_k, "w_k", min_ndim=2)
    check_tensor(v_att, "v_att")
    dtype = q.dtype
    for x, name in ((q, "q"), (k, "k"), (v, "v"), (w_q, "w_q"), (w_k, "w_k"), (v_att, "v_att")):
        _check_same_dtype(x, name, dtype)
    if bias is not None:
        check_tensor(bias, "bias")
        _check_same_dtype(bias, "bias", dtype)
    for x, name, axis in ((q, "q", "query axis Tq"), (k, "k", "key axis Tk")):
        if x.shape[-2] == 0:
            raise ValueError(f"{name} has an empty {axis} (shape {fmt_shape(x.shape)}); need at least 1")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"k and v must have the same number of keys Tk: k is {fmt_shape(k.shape)}, v is {fmt_shape(v.shape)}"
        )
    if v_att.dim() != 1 or v_att.shape[0] == 0:
        raise ValueError(f"v_att must have shape (hidden,) with hidden >= 1, got {fmt_shape(v_att.shape)}")
    hidden = v_att.shape[0]
    if tuple(w_q.shape) != (hidden, q.shape[-1]):
        raise ValueError(
            f"w_q must have shape (hidden, Dq) = {fmt_shape((hidden, q.shape[-1]))}, got {fmt_shape(w_q.shape)}"
        )
    if tuple(w_k.shape) != (hidden, k.shape[-1]):
        raise ValueError(
            f"w_k must have shape (hidden, Dk) = {fmt_shape((hidden, k.shape[-1]))}, got {fmt_shape(w_k.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (hidden,):
        raise ValueError(f"bias must have shape (hidden,) = ({hidden},), got {fmt_shape(bias.shape)}")
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if not isinstance(need_weights, bool):
        raise TypeError(f"need_weights must be a bool, got {type(need_weights).__name__}")
    try:
        lead = tuple(torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2]))
    except RuntimeError:
        raise ValueError(
            f"q, k and v batch dimensions do not broadcast: q is {fmt_shape(q.shape)}, "
            f"k is {fmt_shape(k.shape)}, v is {fmt_shape(v.shape)}"
        ) from None
    Tq, Tk, Dv = q.shape[-2], k.shape[-2], v.shape[-1]
    N = math.prod(lead)
    lengths = _key_lengths(key_lengths, lead, Tk)
    mask_np, mask_b, has_mask = _mask_arrays(mask, lead, Tq, Tk)
    limits = _KeyLimits(lengths, causal, mask_np, mask_b, has_mask)

    # Half precision has no kernel of its own: compute in float32, cast back at the end.
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    q_, k_, v_, w_q_, w_k_, v_att_ = (x.to(cdt) for x in (q, k, v, w_q, w_k, v_att))
    pq = q_ @ w_q_.transpose(0, 1)  # (..., Tq, hidden)
    if bias is not None:
        pq = pq + bias.to(cdt)
    pk = k_ @ w_k_.transpose(0, 1)  # (..., Tk, hidden)
    pq = pq.expand(lead + (Tq, hidden)).reshape(N, Tq, hidden)  # (N, Tq, hidden)
    pk = pk.expand(lead + (Tk, hidden)).reshape(N, Tk, hidden)  # (N, Tk, hidden)
    vv = v_.expand(lead + (Tk, Dv)).reshape(N, Tk, Dv)  # (N, Tk, Dv)

    out, w = _AdditiveAttentionFn.apply(pq, pk, v_att_, vv, limits, need_weights)
    out = out.reshape(lead + (Tq, Dv)).to(dtype)  # (..., Tq, Dv)
    weights = w.reshape(lead + (Tq, Tk)).to(dtype) if need_weights else None  # (..., Tq, Tk)
    return AttentionResult(out, weights)

