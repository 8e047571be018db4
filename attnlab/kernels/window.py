"""Sliding-window (local) self-attention in O(T * window) time and memory.

Each query attends only the keys within ``window`` positions of it (Beltagy et al. 2020,
"Longformer", §3.1; Child et al. 2019 use the causal form as a "local" pattern):

.. math::
    \\mathrm{out}_i = \\sum_{j \\in N(i)} \\mathrm{softmax}_j\\big(q_i \\cdot k_j \\cdot s\\big)\\, v_j,
    \\qquad N(i) = \\{j : |i - j| \\le w\\} \\text{ (two-sided)}, \\;
    \\{j : 0 \\le i - j \\le w\\} \\text{ (causal)}

the same sets as :func:`attnlab.functional.masks.window_mask`. A dense ``(T, T)`` mask
handed to SDPA costs ``O(T^2)`` time and memory whatever ``w`` is; here no ``T x T``
object ever exists.

How: the queries are cut into blocks of ``blk`` rows. Block ``b`` (queries
``b*blk .. b*blk + blk - 1``) can only see keys ``b*blk - w .. b*blk + blk - 1 + w``, a
``span = blk + 2w`` (causal: ``blk + w``) slice of the keys padded by ``w`` on both
sides. ``Tensor.unfold`` exposes these overlapping slices as a strided view
``(N, nb, span, D)`` without copying, and torch's CPU flash-attention kernel
(``aten._scaled_dot_product_flash_attention_for_cpu``) runs the ``nb`` blocks as "heads"
of one problem with a small additive band mask ``(blk, span)`` shared by every interior
block (the first and last blocks, whose spans stick out of ``[0, T)``, get their own
small masks). The backward calls the matching flash backward kernel and folds the
per-block key gradients back with ``unfold_backward``; both work on groups of rows and
runs of blocks so that the per-call ``span / blk``-times-the-keys gradient buffers stay
a few MB. Work per query is ``blk + 2w`` dot products instead of ``T``.

Measured against SDPA with the dense ``(T, T)`` band mask (2-core AVX-512 EPYC, torch
2.13, fp32, fwd + bwd, T = 16384, H = 8, D = 64, w = 256, a shared machine at load
average ~3): two-sided 13x faster on two threads (2.85 s vs 36.9 s), 21x on one
(2.6 s vs 54 s); causal 31x on two threads; memory above the inputs 307 MB vs 4352 MB.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._checks import check_positive_int, check_tensor, fmt_shape, mask_fill_value
from ..functional.attend import AttentionResult

__all__ = ["window_attention", "default_window_block"]

_flash_fwd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_flash_bwd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward

# Each flash call covers at most this many span elements (rows x blocks x span x D), so
# the backward's per-call key-gradient buffers (span / blk times the keys they cover)
# stay a few MB whatever T is.
_CALL_ELEMS = 1 << 22
_FLASH_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def default_window_block(window: int, T: int) -> int:
    """The query block size used when ``block_size`` is not given: ``window`` clamped to
    ``[32, 256]`` (and to ``T``).

    Per query the kernel computes ``blk + 2w`` scores (``blk + w`` causal) of which
    ``2w + 1`` are in the window, so small blocks waste less work; but the flash kernel
    splits a block of fewer than 192 rows into 32-row GEMMs, which run slower. Measured
    on the 2-core AVX-512 machine (``T = 16384, H = 8, D = 64, w = 256``, fwd + bwd,
    load average ~3): blk 128 / 192 / 256 / 384 took 2.29 / 1.74 / 1.76 / 2.05 s on one
    thread, 3.26 / 3.22 / 3.28 / 3.43 s on two.
    """
    return max(1, min(T, 256, max(32, window)))


# --------------------------------------------------------------------------- the plan


class _Plan:
    """Block geometry and masks for one ``(T, window, causal, blk)``.

    Padded keys: ``w`` zeros on the left, enough on the right that block ``b``'s span
    ``[b*blk, b*blk + span)`` (padded coordinates) exists for every ``b < nb``. Span
    column ``c`` of block ``b`` is the key ``j = b*blk - w + c``; row ``r`` is the query
    ``i = b*blk + r``; so ``i - j = r + w - c``, the same for every block: one band mask.
    """

    def __init__(self, T: int, window: int, causal: bool, blk: int, dtype, device):
        w = window
        self.T, self.w, self.causal, self.blk = T, w, causal, blk
        self.nb = -(-T // blk)
        self.Tp = self.nb * blk  # padded number of queries
        self.span = blk + w + (0 if causal else w)
        self.left = w
        self.right = self.Tp - T + (0 if causal else w)
        self.Lk = T + self.left + self.right  # padded number of keys = (nb - 1) * blk + span
        r = torch.arange(blk, device=device)[:, None]  # (blk, 1)
        c = torch.arange(self.span, device=device)[None, :]  # (1, span)
        d = r + w - c  # i - j, (blk, span)
        band = (d >= 0) & (d <= w) if causal else d.abs() <= w  # (blk, span)
        # Blocks whose every real query sees only real keys share the band mask; the
        # others (at most ceil(w / blk) at the start, a few at the end) get their own.
        b = torch.arange(self.nb)
        lo_ok = b * blk >= w
        if causal:
            hi_ok = torch.ones_like(lo_ok)
        else:
            hi_ok = torch.clamp((b + 1) * blk, max=T) + w <= T
        clean = (lo_ok & hi_ok).tolist()
        segments = []  # (b0, b1, bool mask (nb_seg or 1, blk, span))
        b0 = 0
        while b0 < self.nb:
            b1 = b0
            while b1 < self.nb and clean[b1] == clean[b0]:
                b1 += 1
            if clean[b0]:
                allowed = band[None]  # (1, blk, span): shared
            else:
                j = torch.arange(b0, b1, device=device)[:, None, None] * blk - w + c  # (nseg, 1, span)
                allowed = band & (j >= 0) & (j < T)  # (nseg, blk, span)
            segments.append((b0, b1, allowed))
            b0 = b1
        self.segments = segments
        self.set_dtype(dtype)

    def set_dtype(self, dtype):
        # The flash kernel takes an additive mask; -inf rows (padded queries that see no
        # real key) come out as zeros with lse 0, and their gradient is zero.
        self.float_masks = [
            torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill_(~m, float("-inf"))[None]
            for _, _, m in self.segments
        ]  # each (1, nseg or 1, blk, span)

    def allowed_full(self) -> torch.Tensor:
        """``(nb, blk, span)`` bool: every block's mask (for the plain-torch paths)."""
        return torch.cat([m.expand(b1 - b0, -1, -1) for b0, b1, m in self.segments], 0)

    # Views. x3 (n, T, D) -> padded queries (n, nb, blk, D) and key spans (n, nb, span, D).
    def query_view(self, x3: torch.Tensor) -> torch.Tensor:
        """(n, T, D) -> (n, nb, blk, D): a view when blk divides T, else a padded copy."""
        n, _, D = x3.shape
        if self.Tp != self.T:
            x3 = F.pad(x3, (0, 0, 0, self.Tp - self.T))
        return x3.reshape(n, self.nb, self.blk, D)

    def pad_keys(self, x3: torch.Tensor) -> torch.Tensor:
        return F.pad(x3, (0, 0, self.left, self.right))  # (n, Lk, D)

    def spans(self, xp: torch.Tensor) -> torch.Tensor:
        """Padded keys (n, Lk, D) -> every block's span (n, nb, span, D), a view."""
        return xp.unfold(1, self.span, self.blk).transpose(-1, -2)

    def key_view(self, x3: torch.Tensor) -> torch.Tensor:
        return self.spans(self.pad_keys(x3))  # (n, nb, span, D)

    def fold_keys_into(self, acc: torch.Tensor, g: torch.Tensor, b0: int) -> None:
        """Adjoint of :meth:`key_view` for blocks ``b0 .. b0 + nseg``: add
        ``g (n, nseg, span, D)`` into the padded key gradient ``acc (n, Lk + blk, D)``.

        Columns ``p .. p + blk`` of every block's span land on consecutive, disjoint
        key rows, so the fold is ``ceil(span / blk)`` strided adds (no zero-filled
        buffer as ``unfold_backward`` would allocate).
        """
        n, nseg, span, D = g.shape
        blk = self.blk
        for p0 in range(0, span, blk):
            w = min(blk, span - p0)
            start = b0 * blk + p0
            tgt = acc[:, start : start + nseg * blk].view(n, nseg, blk, D)  # (n, nseg, blk, D)
            tgt[:, :, :w] += g[:, :, p0 : p0 + w]

    def calls(self, n_rows: int, D: int):
        """``(b0, b1, float_mask)`` per flash call: each segment cut into runs of blocks
        small enough that a call's buffers stay near ``_CALL_ELEMS`` elements."""
        step = max(1, _CALL_ELEMS // max(1, n_rows * self.span * D))
        for (b0, b1, _), m in zip(self.segments, self.float_masks):
            for c0 in range(b0, b1, step):
                c1 = min(b1, c0 + step)
                yield c0, c1, (m if m.shape[1] == 1 else m[:, c0 - b0 : c1 - b0])


# --------------------------------------------------------------------------- flash path


class _BandedFlash(torch.autograd.Function):
    """Banded attention on the CPU flash kernel. Saves the padded q, k, v, the padded
    output and the row lse: ``O(T D)``."""

    @staticmethod
    def forward(ctx, q3, k3, v3, plan: _Plan, scale: float):
        N, T, D = q3.shape
        qv = plan.query_view(q3)  # (N, nb, blk, D), padded copy
        kp, vp = plan.pad_keys(k3), plan.pad_keys(v3)  # (N, Lk, D)
        kv, vv = plan.spans(kp), plan.spans(vp)  # (N, nb, span, D), views
        out_p = q3.new_empty(N, plan.nb, plan.blk, D)  # (N, nb, blk, D)
        lse = None
        for b0, b1, m in plan.calls(N, D):
            o, l = _flash_fwd(qv[:, b0:b1], kv[:, b0:b1], vv[:, b0:b1], attn_mask=m, scale=scale)
            if lse is None:
                lse = l.new_empty(N, plan.nb, plan.blk)  # (N, nb, blk); float32 for bf16
            out_p[:, b0:b1] = o
            lse[:, b0:b1] = l
        ctx.plan, ctx.scale = plan, scale
        # The unpadded inputs: the caller holds them anyway, so saving costs nothing;
        # the backward pads again (a copy of k and v, cheaper than keeping two).
        ctx.save_for_backward(q3, k3, v3, out_p, lse)
        # (N, T, D): a view when blk divides T; a copy otherwise, so that out_p stays intact.
        return out_p.view(N, plan.Tp, D)[:, :T] if plan.Tp == T else out_p.view(N, plan.Tp, D)[:, :T].clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        q3, k3, v3, out_p, lse = ctx.saved_tensors
        plan, scale = ctx.plan, ctx.scale
        N, T, D = q3.shape
        qv = plan.query_view(q3)  # (N, nb, blk, D)
        kp, vp = plan.pad_keys(k3), plan.pad_keys(v3)  # (N, Lk, D)
        kv, vv = plan.spans(kp), plan.spans(vp)  # (N, nb, span, D)
        gv = plan.query_view(dout)  # (N, nb, blk, D); padded rows get zero gradient
        dq_p = qv.new_empty(N, plan.nb, plan.blk, D)
        dk_p = kp.new_zeros(N, plan.Lk + plan.blk, D)  # gradient of the padded keys (+ slack for the fold)
        dv_p = vp.new_zeros(N, plan.Lk + plan.blk, D)
        for b0, b1, m in plan.calls(N, D):
            s = slice(b0, b1)
            gq, gk, gvv = _flash_bwd(
                gv[:, s], qv[:, s], kv[:, s], vv[:, s], out_p[:, s], lse[:, s], 0.0, False, attn_mask=m, scale=scale
            )
            dq_p[:, s] = gq
            plan.fold_keys_into(dk_p, gk, b0)
            plan.fold_keys_into(dv_p, gvv, b0)
        dq = dq_p.view(N, plan.Tp, D)[:, :T]
        return dq, dk_p[:, plan.left : plan.left + T], dv_p[:, plan.left : plan.left + T], None, None


# --------------------------------------------------------------------------- plain torch


def _banded_weights(q3, k3, plan: _Plan, scale: float) -> torch.Tensor:
    """Exact banded softmax weights ``(N, nb, blk, span)``, differentiable (plain torch)."""
    cdt = torch.float32 if q3.dtype in (torch.float16, torch.bfloat16) else q3.dtype
    qv = plan.query_view(q3.to(cdt))  # (N, nb, blk, D)
    kv = plan.key_view(k3.to(cdt))  # (N, nb, span, D)
    allowed = plan.allowed_full()  # (nb, blk, span)
    s = (qv @ kv.transpose(-1, -2)) * scale  # (N, nb, blk, span)
    s = s.masked_fill(~allowed, mask_fill_value(cdt))
    return torch.softmax(s, -1) * allowed  # padded query rows with no real key -> 0


def _banded_to_dense(wb: torch.Tensor, plan: _Plan) -> torch.Tensor:
    """(N, nb, blk, span) banded weights -> dense (N, T, T); O(T^2) memory by nature."""
    N = wb.shape[0]
    Lk, Tp, blk = plan.Lk, plan.Tp, plan.blk
    canvas = wb.new_zeros(N, Tp, Lk)  # (N, Tp, Lk): queries x padded keys
    # Entry (n, b, r, c) sits at row b*blk + r, padded column b*blk + c: distinct cells.
    dense = torch.as_strided_scatter(
        canvas, wb, (N, plan.nb, blk, plan.span), (Tp * Lk, blk * Lk + blk, Lk, 1)
    )
    return dense[:, : plan.T, plan.left : plan.left + plan.T]  # (N, T, T)


def _banded_torch(q3, k3, v3, plan: _Plan, scale: float) -> torch.Tensor:
    """Fallback when the flash kernel does not apply (Dv != Dk): same blocking, autograd."""
    N, T, _ = q3.shape
    wb = _banded_weights(q3, k3, plan, scale)  # (N, nb, blk, span)
    vv = plan.key_view(v3.to(wb.dtype))  # (N, nb, span, Dv)
    o = wb @ vv  # (N, nb, blk, Dv)
    return o.reshape(N, plan.Tp, -1)[:, :T].to(v3.dtype)  # (N, T, Dv)


def _full_weights(q3, k3, causal: bool, scale: float) -> torch.Tensor:
    cdt = torch.float32 if q3.dtype in (torch.float16, torch.bfloat16) else q3.dtype
    s = (q3.to(cdt) @ k3.to(cdt).transpose(-1, -2)) * scale  # (N, T, T)
    if causal:
        T = q3.shape[1]
        keep = torch.ones(T, T, dtype=torch.bool, device=q3.device).tril()
        s = s.masked_fill(~keep, mask_fill_value(cdt))
    return torch.softmax(s, -1)


# --------------------------------------------------------------------------- public


def _check_inputs(q, k, v, window, causal, scale, block_size, need_weights):
    check_tensor(q, "q", min_ndim=2)
    check_tensor(k, "k", min_ndim=2)
    check_tensor(v, "v", min_ndim=2)
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if isinstance(window, bool) or not isinstance(window, int):
        raise TypeError(f"window must be an int >= 0, got {type(window).__name__}")
    if window < 0:
        raise ValueError(f"window must be >= 0, got {window}")
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if not isinstance(need_weights, bool):
        raise TypeError(f"need_weights must be a bool, got {type(need_weights).__name__}")
    if scale is not None:
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise TypeError(f"scale must be a finite float or None, got {scale!r}")
    if block_size is not None:
        check_positive_int(block_size, "block_size")
    if q.shape[-2] == 0:
        raise ValueError(f"q has an empty time axis (shape {fmt_shape(q.shape)}); need T >= 1")
    if q.shape[-2] != k.shape[-2]:
        raise ValueError(
            f"window_attention is self-attention: q and k must have the same T, "
            f"got q {fmt_shape(q.shape)} and k {fmt_shape(k.shape)}"
        )
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k and v must have the same T: k is {fmt_shape(k.shape)}, v is {fmt_shape(v.shape)}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q and k must share their last dimension D: q is {fmt_shape(q.shape)}, k is {fmt_shape(k.shape)}"
        )
    try:
        return torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    except RuntimeError:
        raise ValueError(
            f"q, k, v batch dimensions do not broadcast: q is {fmt_shape(q.shape)}, k is "
            f"{fmt_shape(k.shape)}, v is {fmt_shape(v.shape)}"
        ) from None


def window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int,
    *,
    causal: bool = False,
    scale: float | None = None,
    block_size: int | None = None,
    need_weights: bool = False,
) -> AttentionResult:
    """Sliding-window self-attention without a ``T x T`` mask (Longformer-style local attention).

    .. math::
        \\mathrm{out}_i = \\sum_{j \\in N(i)} \\frac{\\exp(s\\, q_i \\cdot k_j)}
        {\\sum_{l \\in N(i)} \\exp(s\\, q_i \\cdot k_l)}\\, v_j

    with ``N(i) = {j : |i - j| <= window}`` (two-sided) or ``{j : 0 <= i - j <= window}``
    (``causal``), exactly :func:`attnlab.functional.masks.window_mask`; equal to
    ``attend(q, k, v, mask=window_mask(T, T, window, causal=causal))``. Every query sees
    at least itself, so no row is ever empty. ``window >= T - 1`` is full (or plain
    causal) attention and goes straight to SDPA.

    Cost: ``O(T * (blk + 2 window) * D)`` time, ``O(T * D)`` saved for backward, a few
    MB of working buffers; no ``T x T`` object. Gradients flow to q, k and v.

    Args:
        q, k, v: queries, keys, values of one sequence (self-attention).
        window: how many positions on each side (causal: behind) a query may see, >= 0.
        causal: only keys at or before the query.
        scale: score scale ``s``; default ``1 / sqrt(D)``.
        block_size: query rows per block (default :func:`default_window_block`); any
            value gives the same result up to rounding.
        need_weights: also return the dense ``(..., T, T)`` weights. That tensor is
            ``O(T^2)`` memory (it is the one thing this kernel otherwise avoids); it is
            recomputed exactly from a banded softmax, zeros outside the window, and is
            differentiable.

    Shape:
        q (..., T, D), k (..., T, D), v (..., T, Dv) -> output (..., T, Dv),
        weights (..., T, T). Batch dimensions broadcast.

    Returns:
        :class:`attnlab.functional.AttentionResult` ``(output, weights or None)``.
    """
    lead = _check_inputs(q, k, v, window, causal, scale, block_size, need_weights)
    T, D, Dv = q.shape[-2], q.shape[-1], v.shape[-1]
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    q3 = q.expand(*lead, T, D).reshape(-1, T, D)  # (N, T, D)
    k3 = k.expand(*lead, T, D).reshape(-1, T, D)
    v3 = v.expand(*lead, T, Dv).reshape(-1, T, Dv)

    if window >= T - 1:
        # The window covers every key: this is SDPA's own problem (no mask at all).
        out = F.scaled_dot_product_attention(q3, k3, v3, is_causal=causal, scale=scale)  # (N, T, Dv)
        weights = _full_weights(q3, k3, causal, scale) if need_weights else None
    else:
        blk = default_window_block(window, T) if block_size is None else min(block_size, T)
        plan = _Plan(T, window, causal, blk, q.dtype, q.device)
        if D == Dv and q.dtype in _FLASH_DTYPES and q.device.type == "cpu":
            out = _BandedFlash.apply(q3, k3, v3, plan, scale)  # (N, T, D)
        else:
            out = _banded_torch(q3, k3, v3, plan, scale)  # (N, T, Dv)
        weights = _banded_to_dense(_banded_weights(q3, k3, plan, scale), plan) if need_weights else None

    out = out.reshape(*lead, T, Dv)
    if weights is not None:
        weights = weights.reshape(*lead, T, T).to(q.dtype)
    return AttentionResult(out, weights)
