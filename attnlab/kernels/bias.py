"""Attention with an additive score bias (ALiBi, T5 buckets, any learnable bias) without
ever holding a ``(Tq, Tk)`` bias per head.

.. math::
    \\mathrm{out}_i = \\sum_j \\mathrm{softmax}_j\\big(s\\, q_i \\cdot k_j + b_h(p_i, p_j)\\big)\\, v_j

SDPA accepts such a bias only as a dense ``(H, Tq, Tk)`` float mask, and when that mask
needs a gradient (a learnable T5 table) it falls back to its math path, which
materializes several ``(B, H, Tq, Tk)`` tensors.

Two kinds of bias:

- **General** ``bias_fn(q_positions, k_positions) -> (H or 1, tq, tk)``, asked for one
  tile at a time.
- **Relative** (:class:`TileBias` with ``per_rel``, as made by :func:`alibi_bias_fn` and
  :func:`t5_bias_fn`): the bias depends on ``rel = k - q`` only, so the whole call needs
  one ``z (H, Tq + Tk - 1)`` vector. With the query rows taken in reverse order a tile
  is ``z[start + a + b]``, an overlapping strided *view* of ``z`` (strides ``(1, 1)``)
  that torch's flash kernel reads as its mask without any copy: no bias tile is ever
  materialized and tiles can be as large as the kernel likes.

Forward (flash-style, Dao et al. 2022, "FlashAttention"): for each query block and each
key block that a causal mask does not fully hide, torch's CPU flash kernel
(``aten._scaled_dot_product_flash_attention_for_cpu``) attends the tile with its bias
as an additive mask and returns the tile output and row log-sum-exp; tiles of one query
block merge by the online-softmax rule ``lse = logaddexp(lse_a, lse_b)``,
``out = e^{lse_a - lse} out_a + e^{lse_b - lse} out_b``. Only ``out`` and ``lse`` are saved.

Backward recomputes each tile. When no tensor inside the bias needs a gradient (fixed
ALiBi slopes) each tile goes to the flash backward kernel, which takes the full rows'
``out`` and ``lse`` so that per-tile results only need summing. Otherwise (a learnable
table) each tile is done in plain torch: ``P = exp(S - lse)``, ``dP = dO V^T``,
``dS = P * (dP - delta)`` with ``delta = rowsum(dO * O)``; ``dq += s dS K``,
``dk += s dS^T Q``, ``dv += P^T dO``, and ``dS`` summed over the batch is the bias
gradient: pushed through the tile's bias with ``torch.autograd.grad`` (general), or
summed along the tile's diagonals into ``dz`` and pushed through ``z`` once at the end
(relative). The bias parameters are inputs of the autograd node, so
``loss.backward()``, ``torch.autograd.grad`` and ``gradcheck`` all see them.

Decaying biases (ALiBi, :class:`TileBias` ``decay``): a weight is bounded by
``exp(s |q_i| max|k| - m_h |i - j| - l_i)`` with ``l_i`` a lower bound of the row's
``lse`` (its score at the nearest key), so far keys provably carrying less than
``e^-30`` of a row's weight are skipped, head by head (:func:`_decay_plan`); each
(head, query block) makes one flash call over its key band, forward and backward. The
bound uses the actual ``|q|`` and ``|k|``, so large scores widen the band instead of
breaking it. At ``T = 4096`` with the 8 standard slopes about half the work is left.

Positions follow :mod:`attnlab.functional.positional`: query ``i`` sits at
``Tk - Tq + i``, key ``j`` at ``j``, and ``rel = j - (Tk - Tq + i)``.

Measured against SDPA with the dense ``(H, T, T)`` float bias (2-core AVX-512 EPYC,
torch 2.13, fp32, fwd + bwd, T = 4096, H = 8, D = 64, load average ~3, two threads /
one thread): fixed ALiBi 1.3x / 1.4x (same flash kernel; the gain is not building the
bias), causal 1.9x / 2.9x; learnable T5 (SDPA falls back to its math path) 1.4x / 2.8x,
causal 2.3x / 5.6x; peak memory above the inputs 89 vs 704 MB (ALiBi) and 192 vs
2214 MB (T5).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .._checks import check_positive_int, check_tensor, fmt_shape, mask_fill_value
from ..functional.attend import AttentionResult
from ..functional.positional import (
    alibi_bias_from_relative,
    pairwise_relative,
    t5_bias_from_relative,
    t5_relative_bucket,
)

__all__ = [
    "biased_attention",
    "alibi_bias_fn",
    "t5_bias_fn",
    "TileBias",
    "DEFAULT_BIAS_BLOCK",
]

_flash_fwd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_flash_bwd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward
_FLASH_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)

#: Default (query rows, key columns) per tile wherever a tile is materialized: the
#: general bias's tiles, and the plain-torch backward that feeds learnable biases. Its
#: temporaries are ``B * H * 256 * 2048`` floats (16 MB at B = 1, H = 8). Relative
#: biases in the flash kernels need no tile memory and use the whole key range, with
#: query blocks of ``Tq`` (or ``Tq / 8`` when causal, to skip the hidden half).
DEFAULT_BIAS_BLOCK = (256, 2048)

# Causal relative-bias flash calls use about this many query blocks: the work done is
# (1 + 1/n) / 2 of the dense one; each call adds a pass over dk and dv.
_CAUSAL_QUERY_BLOCKS = 8

# Decaying biases (ALiBi): keys whose weight is provably below e^-_DECAY_TAU of the row's
# total are skipped. Tk such keys change a weight or an output by at most Tk e^-30
# (4e-10 at Tk = 4096) of its size, far below float32 rounding (6e-8). Query rows per
# band: a smaller block follows the band more tightly but makes more calls.
_DECAY_TAU = 30.0
_DECAY_QUERY_BLOCK = 256


# --------------------------------------------------------------------------- bias fns


class TileBias:
    """A bias for :func:`biased_attention` with what the kernel may exploit.

    Args:
        fn: ``fn(q_positions (tq,), k_positions (tk,)) -> (H or 1, tq, tk)``; may be
            None when ``per_rel`` is given (then tiles are read out of ``per_rel``).
        bias_params: the tensors ``fn`` / ``per_rel`` close over whose gradients are
            wanted; None: let :func:`biased_attention` find the leaf tensors that
            require grad.
        finite: promise that no entry is ``-inf`` (skips a clamp).
        per_rel: ``per_rel(rel (L,) long) -> (H or 1, L)``, the bias at relative
            positions ``rel = k - q``; when given, the bias depends on ``rel`` alone and
            the kernel never builds a tile.
        decay: ``(H,)`` positive rates with the promise ``b_h(rel) <= -decay_h |rel|``
            (ALiBi's slopes). With ``per_rel``, the flash kernels then skip, head by
            head, the keys too far away to carry weight (see :func:`_decay_plan`).
    """

    def __init__(
        self,
        fn: Callable | None = None,
        bias_params: Sequence[torch.Tensor] | None = None,
        *,
        finite: bool = False,
        per_rel: Callable[[torch.Tensor], torch.Tensor] | None = None,
        decay: torch.Tensor | None = None,
        name: str = "",
    ):
        if fn is None and per_rel is None:
            raise TypeError("TileBias needs fn or per_rel (or both)")
        if fn is None:
            fn = lambda qp, kp: _toeplitz(qp, kp, per_rel)  # noqa: E731
        self.fn = fn
        self.per_rel = per_rel
        self.bias_params = None if bias_params is None else tuple(bias_params)
        self.finite = finite
        if decay is not None:
            check_tensor(decay, "decay")
            if decay.dim() != 1 or not bool((decay > 0).all()):
                raise ValueError(f"decay must be a (H,) tensor of positive rates, got {fmt_shape(decay.shape)} {decay}")
            decay = decay.detach()
        self.decay = decay
        self.name = name or getattr(fn, "__name__", "bias")

    def __call__(self, q_positions: torch.Tensor, k_positions: torch.Tensor) -> torch.Tensor:
        return self.fn(q_positions, k_positions)

    def __repr__(self) -> str:
        return f"TileBias({self.name})"


def _arange_start(pos: torch.Tensor) -> int | None:
    """``pos[0]`` if ``pos`` is ``pos[0], pos[0] + 1, ...``, else None."""
    if pos.dim() != 1 or pos.numel() == 0:
        return None
    p0 = int(pos[0])
    n = pos.numel()
    if int(pos[-1]) - p0 != n - 1:
        return None
    if n > 2 and not torch.equal(pos, torch.arange(p0, p0 + n, device=pos.device, dtype=pos.dtype)):
        return None
    return p0


def _toeplitz(q_positions, k_positions, per_rel: Callable[[torch.Tensor], torch.Tensor]):
    """A ``(H, tq, tk)`` tile of a bias that depends on ``rel = k - q`` only.

    Contiguous positions hold only ``L = tq + tk - 1`` distinct ``rel``, so ``per_rel``
    runs on those (T5's bucket lookup ``L`` times, not ``tq * tk``) and the tile is
    spread out of them by :class:`_ToeplitzTile`. Other positions: ``per_rel`` on every
    pair.
    """
    q0, k0 = _arange_start(q_positions), _arange_start(k_positions)
    tq, tk = q_positions.numel(), k_positions.numel()
    if q0 is None or k0 is None:
        rel = pairwise_relative(q_positions, k_positions)  # (tq, tk)
        return per_rel(rel.reshape(-1)).reshape(-1, tq, tk)  # (H, tq, tk)
    t = torch.arange(tq + tk - 1, device=q_positions.device)
    z = per_rel((k0 - q0) - (tq - 1) + t)  # (H, L): z[t] is the bias at rel = b - a + k0 - q0
    return _ToeplitzTile.apply(z, tq, tk)  # (H, tq, tk)


class _ToeplitzTile(torch.autograd.Function):
    """``z (H, L) -> tile (H, tq, tk)``, ``tile[h, a, b] = z[h, b - a + tq - 1]``.

    Forward: with every row of ``M (H, tq, L)`` equal to ``z``, the entry at
    ``a * (L - 1) + (tq - 1) + b`` of a row-major ``M`` is ``z[b - a + tq - 1]``: a view
    with row stride ``L - 1`` and a contiguous last dimension, after one broadcast copy.
    Backward: the sums of the gradient along its diagonals.
    """

    @staticmethod
    def forward(ctx, z, tq: int, tk: int):
        H, L = z.shape
        ctx.tq, ctx.tk = tq, tk
        M = z[:, None, :].expand(H, tq, L).contiguous()  # (H, tq, L), every row is z
        return M.as_strided((H, tq, tk), (tq * L, L - 1, 1), tq - 1)  # (H, tq, tk)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        return _diagonal_sums(g, ctx.tq, ctx.tk, anti=False), None, None


def _diagonal_sums(g: torch.Tensor, tq: int, tk: int, *, anti: bool) -> torch.Tensor:
    """``(H, tq, tk) -> (H, tq + tk - 1)``: ``out[t] = sum_a g[a, t - (tq - 1) + a]``
    (diagonals, ``anti=False``) or ``sum_a g[a, t - a]`` (anti-diagonals).

    Each row is padded with ``tq - 1`` zeros on both sides (width ``W``); entry
    ``(t, a)`` then sits at ``a * (W + 1) + t`` (diagonals) or ``a * (W - 1) + t + tq - 1``
    (anti-diagonals) of the padded rows, one strided view summed over ``a``.
    """
    H = g.shape[0]
    L, W = tq + tk - 1, tk + 2 * (tq - 1)
    gp = F.pad(g, (tq - 1, tq - 1)).contiguous()  # (H, tq, W)
    if anti:
        return gp.as_strided((H, L, tq), (tq * W, 1, W - 1), tq - 1).sum(-1)  # (H, L)
    return gp.as_strided((H, L, tq), (tq * W, 1, W + 1)).sum(-1)  # (H, L)


def alibi_bias_fn(slopes: torch.Tensor) -> TileBias:
    """ALiBi (Press et al. 2022, "Train Short, Test Long"): ``b_h(i, j) = -m_h |j - i|``.

    ``slopes`` may require grad (learnable slopes); use
    :func:`attnlab.functional.positional.alibi_slopes` for the paper's values. For
    causal attention this equals the paper's ``m_h (j - i)`` on the visible keys.

    Shape: slopes (H,) -> tiles (H, tq, tk).
    """
    check_tensor(slopes, "slopes")
    if slopes.dim() != 1:
        raise ValueError(f"slopes must have shape (H,), got {fmt_shape(slopes.shape)}")

    def per_rel(rel):  # (L,) -> (H, L)
        return -slopes[:, None] * rel.abs().to(slopes.dtype)[None, :]

    def fn(qp, kp):
        q0, k0 = _arange_start(qp), _arange_start(kp)
        if q0 is None or k0 is None:
            return alibi_bias_from_relative(slopes, pairwise_relative(qp, kp))
        return _toeplitz(qp, kp, per_rel)

    # -m_h |rel| with m_h > 0 is the decay promise itself: far keys may be skipped.
    decay = slopes if bool((slopes.detach() > 0).all()) else None
    return TileBias(fn, (slopes,), finite=True, per_rel=per_rel, decay=decay, name="alibi")


def t5_bias_fn(
    table: torch.Tensor, bidirectional: bool = True, num_buckets: int = 32, max_distance: int = 128
) -> TileBias:
    """T5 relative-position bias (Raffel et al. 2020, §2.1):
    ``b_h(i, j) = table[bucket(j - i), h]`` with
    :func:`attnlab.functional.positional.t5_relative_bucket`. Gradients flow into ``table``.

    Shape: table (num_buckets, H) -> tiles (H, tq, tk).
    """
    check_tensor(table, "table", min_ndim=2)
    if table.dim() != 2:
        raise ValueError(f"table must have shape (num_buckets, H), got {fmt_shape(table.shape)}")
    check_positive_int(num_buckets, "num_buckets")
    if table.shape[0] != num_buckets:
        raise ValueError(
            f"num_buckets must equal table.shape[0]: table is {fmt_shape(table.shape)}, num_buckets={num_buckets}"
        )
    # Every distance >= max_distance shares the last bucket of its direction, so the
    # buckets of rel in [-max_distance, max_distance] (computed once, here; this also
    # validates the arguments) serve any rel after clamping: no logs per call.
    md = max_distance
    lut = t5_relative_bucket(torch.arange(-md, md + 1, device=table.device), bidirectional, num_buckets, md)

    def per_rel(rel):  # (L,) -> (H, L)
        buckets = lut[rel.clamp(-md, md) + md]  # (L,)
        return F.embedding(buckets, table).t()  # (L, H) -> (H, L)

    def fn(qp, kp):
        q0, k0 = _arange_start(qp), _arange_start(kp)
        if q0 is None or k0 is None:
            rel = pairwise_relative(qp, kp)
            return t5_bias_from_relative(table, rel, bidirectional=bidirectional, max_distance=md)
        return _toeplitz(qp, kp, per_rel)

    return TileBias(fn, (table,), finite=True, per_rel=per_rel, name="t5")


# --------------------------------------------------------------------------- helpers


def _discover_params(bias_fn, q_position: int, device) -> tuple[torch.Tensor, ...]:
    """Leaf tensors requiring grad that a plain callable closes over, found by running it
    on the 1 x 1 tile (first query, first key) and walking the autograd graph to its
    AccumulateGrad nodes."""
    with torch.enable_grad():
        probe = bias_fn(
            torch.full((1,), q_position, dtype=torch.long, device=device), torch.zeros(1, dtype=torch.long, device=device)
        )
    if not isinstance(probe, torch.Tensor) or probe.grad_fn is None:
        return ()
    found, seen, stack = {}, set(), [probe.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        var = getattr(node, "variable", None)
        if var is not None:
            found[id(var)] = var
        stack.extend(n for n, _ in node.next_functions)
    return tuple(found.values())


def _check_bias_shape(b, H: int, shape: tuple, what: str, name: str = "bias_fn") -> torch.Tensor:
    if not isinstance(b, torch.Tensor) or not b.is_floating_point():
        raise TypeError(f"{name} must return a floating-point torch.Tensor, got {getattr(b, 'dtype', type(b))}")
    if b.dim() != 1 + len(shape) or b.shape[0] not in (1, H) or tuple(b.shape[1:]) != shape:
        want = ", ".join(str(s) for s in shape)
        raise ValueError(f"{name} must return shape (H or 1, {want}) = ({H} or 1, {want}) for {what}, got {fmt_shape(b.shape)}")
    return b


class _Spec:
    """Everything about one call that is not a tensor: sizes, the bias and tile geometry.

    Relative biases work in a *reversed* query frame (row ``r`` holds query
    ``Tq - 1 - r``), where a tile of the bias is a view of ``z``; general biases work in
    the natural frame. :meth:`rows` maps a block of queries to its rows in the frame.
    """

    def __init__(self, bias_fn, H, Tq, Tk, causal, scale, block, dtype, device):
        self.bias_fn, self.H, self.Tq, self.Tk = bias_fn, H, Tq, Tk
        self.causal, self.scale, self.device = causal, scale, device
        self.offset = Tk - Tq  # query i sits at offset + i
        self.per_rel = getattr(bias_fn, "per_rel", None)
        self.relative = self.per_rel is not None
        self.finite = bool(getattr(bias_fn, "finite", False))
        # Masks and the plain-torch backward use at least float32 (a bf16 ALiBi bias of
        # -100 would be off by up to 0.25, a 25% change of a weight).
        self.cdt = torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype
        self.fill = mask_fill_value(self.cdt)
        tq, tk = DEFAULT_BIAS_BLOCK if block is None else block
        self.tile = (min(tq, Tq), min(tk, Tk))  # where tiles are materialized
        if self.relative and block is None:
            bq = -(-Tq // _CAUSAL_QUERY_BLOCKS) if causal else Tq
            self.flash = (max(1, min(Tq, max(bq, 256))), Tk)
        else:
            self.flash = self.tile
        self.z = None  # relative: (H or 1, Tq + Tk - 1) mask values, set by the forward
        decay = getattr(bias_fn, "decay", None) if self.relative else None
        self.decay = decay if decay is not None and decay.numel() == H else None
        self.decay_block = min(Tq, block[0] if block is not None else _DECAY_QUERY_BLOCK)
        self.plan = None  # decay: [(h, i0, i1, j0, j1, partial)], set by the forward
        self.kept = 1.0  # decay: fraction of the (head, query, key) work done

    # ---- geometry
    def rows(self, i0: int, i1: int) -> slice:
        return slice(self.Tq - i1, self.Tq - i0) if self.relative else slice(i0, i1)

    def blocks(self, bq: int, bk: int):
        """``(i0, i1, [(j0, j1, partial), ...])`` for query blocks of ``bq`` rows; key
        tiles a causal mask hides completely are left out; ``partial``: the causal
        boundary cuts the tile."""
        for i0 in range(0, self.Tq, bq):
            i1 = min(self.Tq, i0 + bq)
            kend = min(self.Tk, i1 + self.offset) if self.causal else self.Tk  # keys j <= last query
            keys = []
            for j0 in range(0, max(kend, 0), bk):
                j1 = min(kend, j0 + bk)
                keys.append((j0, j1, self.causal and (j1 - 1 > i0 + self.offset)))
            yield i0, i1, keys

    # ---- relative bias
    def rel_all(self) -> torch.Tensor:
        """``rel`` of every entry of ``z``: ``-(offset + Tq - 1) .. Tk - 1 - offset``."""
        L = self.Tq + self.Tk - 1
        return torch.arange(L, device=self.device) - (self.offset + self.Tq - 1)  # (L,)

    def per_rel_all(self) -> torch.Tensor:
        z = self.per_rel(self.rel_all())
        return _check_bias_shape(z, self.H, (self.Tq + self.Tk - 1,), "all relative positions", "per_rel")

    def build_z(self) -> None:
        with torch.no_grad():
            z = self.per_rel_all().to(self.cdt)  # (H or 1, L)
            if not self.finite:
                z = z.clamp_min(self.fill)
            if self.causal:  # the causal cut depends on rel only: fold it into z
                z = z.masked_fill(self.rel_all() > 0, self.fill)
            self.z = z.contiguous()

    # ---- masks
    def bias(self, i0, i1, j0, j1) -> torch.Tensor:
        """The general bias tile in the natural frame, as ``bias_fn`` returns it."""
        qp = torch.arange(i0, i1, device=self.device) + self.offset
        kp = torch.arange(j0, j1, device=self.device)
        return _check_bias_shape(
            self.bias_fn(qp, kp), self.H, (i1 - i0, j1 - j0), f"{i1 - i0} query and {j1 - j0} key positions"
        )

    def causal_keep(self, i0, i1, j0, j1) -> torch.Tensor:
        qp = torch.arange(i0, i1, device=self.device) + self.offset
        kp = torch.arange(j0, j1, device=self.device)
        return kp[None, :] <= qp[:, None]  # (tq, tk)

    def mask(self, i0, i1, j0, j1, partial: bool) -> torch.Tensor:
        """The tile's additive mask in the frame, ``(1, H or 1, tq, tk)``, dtype ``cdt``;
        masked entries hold ``fill`` (a fully masked row then has lse ~ fill)."""
        tq, tk = i1 - i0, j1 - j0
        if self.relative:
            # Row r of the block is query i1 - 1 - r; entry (r, b) has rel at z index
            # (j0 + Tq - i1) + r + b: an overlapping view, strides (1, 1).
            Hz, L = self.z.shape
            return self.z.as_strided((1, Hz, tq, tk), (Hz * L, L, 1, 1), self.z.storage_offset() + j0 + self.Tq - i1)
        m = self.bias(i0, i1, j0, j1).to(self.cdt)
        if not self.finite:
            m = m.clamp_min(self.fill)  # -inf -> fill; copies, so a user tensor is never written
        if partial:
            m = m.masked_fill(~self.causal_keep(i0, i1, j0, j1), self.fill)
        return m.unsqueeze(0)


def _decay_plan(spec: _Spec, qw: torch.Tensor, k: torch.Tensor):
    """The key band each (head, query block) needs under a decaying bias, or None.

    With ``b_h(i, j) <= -m_h |p_i - j|`` (query ``i`` at position ``p_i``), a weight is
    bounded without computing it:

    .. math::
        w_{ij} = e^{s q_i \\cdot k_j + b_{ij} - \\mathrm{lse}_i}
        \\le e^{s |q_i| \\max_j |k_j| - m_h |p_i - j| - \\ell_i},
        \\qquad \\ell_i = s q_i \\cdot k_{j^*} + b_{i j^*} \\le \\mathrm{lse}_i

    for any one key ``j*`` (the nearest: ``clamp(p_i, 0, Tk - 1)``). So keys farther than
    ``R_i = (s |q_i| max|k| - l_i + tau) / m_h`` have ``w_ij < e^-tau`` and are skipped;
    the bound uses the data (the norms of these very q and k), so large or adversarial
    scores only widen the band, never break it. A query block keeps the union of its
    rows' bands (over the batch too).

    Returns ``[(h, i0, i1, j0, j1, partial), ...]`` in the natural query frame (a head
    whose band is every key for every block, non-causal, gets one call for all rows), or
    None when the bound is not finite (inf / NaN inputs): then nothing is skipped.
    """
    B, H, Tq, _ = qw.shape
    Tk, bq, off = spec.Tk, spec.decay_block, spec.offset
    with torch.no_grad():
        cdt = spec.cdt
        q = (qw.flip(2) if spec.relative else qw).to(cdt)  # (B, H, Tq, D) natural order
        kc = k.to(cdt)
        m = spec.decay.to(device=q.device, dtype=cdt)[None, :, None]  # (1, H, 1)
        p = torch.arange(Tq, device=q.device) + off  # (Tq,) query positions
        jstar = p.clamp(0, Tk - 1)
        kmax = kc.norm(dim=-1).amax(dim=(0, 2))[None, :, None]  # (1, H, 1)
        ell = spec.scale * (q * kc[:, :, jstar]).sum(-1) - m * (p - jstar).abs().to(cdt)  # (B, H, Tq)
        radius = ((spec.scale * q.norm(dim=-1) * kmax - ell + _DECAY_TAU) / m).amax(0)  # (H, Tq)
        if not bool(torch.isfinite(radius).all()):
            return None
        if spec.causal:  # rows before the first key see nothing: no band to keep
            radius = radius.masked_fill(p[None, :] < 0, 0.0)
        nb = -(-Tq // bq)
        pad = nb * bq - Tq
        lo = F.pad(p[None, :] - radius, (0, pad), value=math.inf).view(H, nb, bq).amin(-1).floor()  # (H, nb)
        hi = F.pad(p[None, :] + radius, (0, pad), value=-math.inf).view(H, nb, bq).amax(-1).floor() + 1
        lo = lo.clamp(0, Tk).long().tolist()
        hi = hi.clamp(0, Tk).long().tolist()
    plan, work = [], 0
    for h in range(H):
        blocks = []
        for b in range(nb):
            i0, i1 = b * bq, min(Tq, (b + 1) * bq)
            kend = min(Tk, i1 + off) if spec.causal else Tk
            j0, j1 = lo[h][b], min(hi[h][b], kend)
            if j1 > j0:
                blocks.append((h, i0, i1, j0, j1, spec.causal and (j1 - 1 > i0 + off)))
                work += (i1 - i0) * (j1 - j0)
        if not spec.causal and all(j0 == 0 and j1 == Tk for *_, j0, j1, _p in blocks) and len(blocks) == nb:
            blocks = [(h, 0, Tq, 0, Tk, False)]
        plan.extend(blocks)
    spec.kept = work / (H * Tq * Tk)
    return plan


def _clear_dead_rows(o: torch.Tensor, lse: torch.Tensor, fill: float):
    """Rows whose every key was masked come out of the flash kernel with lse ~ ``fill``:
    give them zero output and lse +inf (so the backward sees P = 0).

    Shape: o (B, H, tq, D), lse (B, H, tq) -> the same."""
    dead = lse < fill / 2  # (B, H, tq)
    if bool(dead.any()):
        o = o.masked_fill(dead[..., None], 0.0)
        lse = lse.masked_fill(dead, math.inf)
    return o, lse


def _head_mask(spec: _Spec, h: int, i0: int, i1: int, j0: int, j1: int, partial: bool) -> torch.Tensor:
    """Head ``h``'s slice ``(1, 1, tq, tk)`` of :meth:`_Spec.mask` (a view of ``z``)."""
    m = spec.mask(i0, i1, j0, j1, partial)
    return m[:, h : h + 1] if m.shape[1] > 1 else m


# --------------------------------------------------------------------------- autograd


class _BiasedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec: _Spec, q, k, v, *params):
        k, v = k.contiguous(), v.contiguous()
        qw = q.flip(2) if spec.relative else q.contiguous()  # (B, H, Tq, D) in the frame
        if spec.relative:
            spec.build_z()
        B, H, Tq, D = q.shape
        out = q.new_zeros(B, H, Tq, D)
        # +inf marks rows with no visible key: the backward then sees P = exp(S - lse) = 0.
        lse = torch.full((B, H, Tq), math.inf, dtype=spec.cdt, device=q.device)
        spec.plan = _decay_plan(spec, qw, k) if spec.decay is not None else None
        for h, i0, i1, j0, j1, partial in spec.plan or ():
            r, hs = spec.rows(i0, i1), slice(h, h + 1)
            o, l = _flash_fwd(qw[:, hs, r], k[:, hs, j0:j1], v[:, hs, j0:j1],
                              attn_mask=_head_mask(spec, h, i0, i1, j0, j1, partial), scale=spec.scale)  # fmt: skip
            out[:, hs, r], lse[:, hs, r] = _clear_dead_rows(o, l, spec.fill)
        for i0, i1, keys in () if spec.plan is not None else spec.blocks(*spec.flash):
            r = spec.rows(i0, i1)
            o_acc = l_acc = None
            for j0, j1, partial in keys:
                m = spec.mask(i0, i1, j0, j1, partial)
                o, l = _flash_fwd(qw[:, :, r], k[:, :, j0:j1], v[:, :, j0:j1], attn_mask=m, scale=spec.scale)
                if o_acc is None:
                    o_acc, l_acc = o.to(spec.cdt), l
                else:  # merge two partial softmaxes of the same rows
                    l_new = torch.logaddexp(l_acc, l)  # (B, H, tq)
                    o_acc = o_acc * (l_acc - l_new).exp_()[..., None] + o.to(spec.cdt) * (l - l_new).exp_()[..., None]
                    l_acc = l_new
            if o_acc is None:  # causal and no key at or before any of these queries
                continue
            out[:, :, r], lse[:, :, r] = _clear_dead_rows(o_acc, l_acc, spec.fill)
        ctx.spec = spec
        ctx.save_for_backward(qw, k, v, out, lse, *params)
        return out.flip(2) if spec.relative else out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        qw, k, v, out, lse, *params = ctx.saved_tensors
        spec = ctx.spec
        dout = dout.flip(2) if spec.relative else dout.contiguous()
        want = [i for i in range(len(params)) if ctx.needs_input_grad[4 + i]]
        dparams = [None] * len(params)
        if not want:
            dq, dk, dv = _backward_flash(spec, qw, k, v, out, lse, dout)
        else:
            dq, dk, dv, grads = _backward_torch(spec, qw, k, v, out, lse, dout, [params[i] for i in want])
            for i, g in zip(want, grads):
                dparams[i] = g
        if spec.relative:
            dq = dq.flip(2)
        return (None, dq, dk, dv, *dparams)


def _backward_flash(spec: _Spec, q, k, v, out, lse, dout):
    """Each tile through the flash backward kernel (no gradient for the bias needed).
    The kernel is given the full rows' ``out`` and ``lse``, so each tile's result is
    exact and they only need summing."""
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for h, i0, i1, j0, j1, partial in spec.plan or ():  # the forward's key bands
        r, hs = spec.rows(i0, i1), slice(h, h + 1)
        gq, gk, gv = _flash_bwd(
            dout[:, hs, r], q[:, hs, r], k[:, hs, j0:j1], v[:, hs, j0:j1], out[:, hs, r], lse[:, hs, r], 0.0, False,
            attn_mask=_head_mask(spec, h, i0, i1, j0, j1, partial), scale=spec.scale,
        )
        dq[:, hs, r] += gq
        dk[:, hs, j0:j1] += gk
        dv[:, hs, j0:j1] += gv
    for i0, i1, keys in () if spec.plan is not None else spec.blocks(*spec.flash):
        r = spec.rows(i0, i1)
        for j0, j1, partial in keys:
            gq, gk, gv = _flash_bwd(
                dout[:, :, r], q[:, :, r], k[:, :, j0:j1], v[:, :, j0:j1], out[:, :, r], lse[:, :, r], 0.0, False,
                attn_mask=spec.mask(i0, i1, j0, j1, partial), scale=spec.scale,
            )
            dq[:, :, r] += gq
            dk[:, :, j0:j1] += gk
            dv[:, :, j0:j1] += gv
    return dq, dk, dv


def _acc_bmm(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``acc[:, :n] += a @ b`` with ``n = a.shape[1]`` (a causal cut can shorten a key
    block). In-place ``baddbmm_`` only on a whole contiguous accumulator: on a strided
    slice it falls back to one ``addmm`` per batch entry, many times slower."""
    if a.shape[1] == acc.shape[1]:
        acc.baddbmm_(a, b)
    else:
        acc[:, : a.shape[1]] += torch.bmm(a, b)


def _backward_torch(spec: _Spec, q, k, v, out, lse, dout, params):
    """Tile-by-tile backward in plain torch; ``dS`` also becomes the bias gradient.

    Batched matmuls with fused accumulation (``baddbmm``) keep the elementwise passes
    per tile to three: ``C = bias - lse``, ``P = exp(C + s Q K^T)``,
    ``dS = P * (dO V^T - delta)``.
    """
    B, H, Tq, D = q.shape
    Tk, Dv = k.shape[2], v.shape[3]
    BH, cdt = B * H, spec.cdt
    q3 = q.reshape(BH, Tq, D).to(cdt)  # all in the frame
    k3 = k.reshape(BH, Tk, D).to(cdt)
    v3 = v.reshape(BH, Tk, Dv).to(cdt)
    do3 = dout.reshape(BH, Tq, Dv).to(cdt)
    lse3 = lse.reshape(BH, Tq, 1)
    delta = (do3 * out.reshape(BH, Tq, Dv).to(cdt)).sum(-1, keepdim=True)  # (BH, Tq, 1)
    bq, bk = spec.tile
    dk_blk = [torch.zeros(BH, min(Tk, j0 + bk) - j0, D, dtype=cdt, device=q.device) for j0 in range(0, Tk, bk)]
    dv_blk = [torch.zeros(BH, min(Tk, j0 + bk) - j0, Dv, dtype=cdt, device=q.device) for j0 in range(0, Tk, bk)]
    dq3 = torch.zeros(BH, Tq, D, dtype=cdt, device=q.device)
    gz = torch.zeros_like(spec.z) if spec.relative else None  # (H or 1, L) bias gradient
    pgrads = [None] * len(params)
    for i0, i1, keys in spec.blocks(bq, bk):
        r, tq = spec.rows(i0, i1), i1 - i0
        qs = q3[:, r] * spec.scale  # (BH, tq, D), contiguous
        doi = do3[:, r].contiguous()  # (BH, tq, Dv)
        dqi = torch.zeros(BH, tq, D, dtype=cdt, device=q.device)
        for j0, j1, partial in keys:
            tk = j1 - j0
            kj, vj = k3[:, j0:j1], v3[:, j0:j1]  # (BH, tk, D): strided views are fine as bmm operands
            if spec.relative:
                b = spec.mask(i0, i1, j0, j1, partial)[0]  # (H or 1, tq, tk) view of z, causal cut inside
            else:
                with torch.enable_grad():
                    b = spec.bias(i0, i1, j0, j1)  # (H or 1, tq, tk), attached to the parameters
            # C = bias - lse: masked entries and dead rows (lse = +inf) go to -inf (or
            # ~fill), so P is exactly 0 there.
            # (out= keeps C row-major: the relative bias is an overlapping view whose
            # strides a plain subtraction would copy into C, making baddbmm_ crawl.)
            c = torch.empty(BH, tq, tk, dtype=cdt, device=q.device)
            torch.sub(b.detach().to(cdt).unsqueeze(0), lse3[:, r].view(B, H, tq, 1), out=c.view(B, H, tq, tk))
            if partial and not spec.relative:
                c.masked_fill_(~spec.causal_keep(i0, i1, j0, j1), -math.inf)
            p = c.baddbmm_(qs, kj.transpose(1, 2)).exp_()  # (BH, tq, tk): P = exp(s q.k + bias - lse)
            _acc_bmm(dv_blk[j0 // bk], p.transpose(1, 2), doi)
            ds = torch.baddbmm(-delta[:, r], doi, vj.transpose(1, 2)).mul_(p)  # P * (dP - delta)
            del p, c
            dqi.baddbmm_(ds, kj)
            _acc_bmm(dk_blk[j0 // bk], ds.transpose(1, 2), qs)
            db = ds.view(B, H, tq, tk)
            db = db[0] if B == 1 else db.sum(0)  # (H, tq, tk): the bias has no batch axis
            if b.shape[0] == 1:
                db = db.sum(0, keepdim=True)
            if spec.relative:
                start = j0 + spec.Tq - i1  # z index of the tile's entry (0, 0)
                gz[:, start : start + tq + tk - 1] += _diagonal_sums(db, tq, tk, anti=True)
            elif b.requires_grad:
                # retain_graph: the tile's graph may run through tensors the caller's
                # graph still needs (a bias_fn closing over a non-leaf tensor).
                gs = torch.autograd.grad(b, params, db.to(b.dtype), allow_unused=True, retain_graph=True)
                for n, gp in enumerate(gs):
                    if gp is not None:
                        pgrads[n] = gp if pgrads[n] is None else pgrads[n].add_(gp)
        dq3[:, r] = dqi
    if spec.relative:
        with torch.enable_grad():
            z = spec.per_rel_all()  # (H or 1, L), attached to the parameters
        if z.requires_grad:
            pgrads = list(torch.autograd.grad(z, params, gz.to(z.dtype), allow_unused=True))
    dq = (dq3 * spec.scale).reshape(q.shape).to(q.dtype)
    dk = torch.cat(dk_blk, 1).reshape(k.shape).to(k.dtype)
    dv = torch.cat(dv_blk, 1).reshape(v.shape).to(v.dtype)
    pgrads = [g if g is not None else torch.zeros_like(p) for g, p in zip(pgrads, params)]
    return dq, dk, dv, pgrads


# --------------------------------------------------------------------------- public


def _check_block(block_size) -> tuple[int, int] | None:
    if block_size is None:
        return None
    if isinstance(block_size, int) and not isinstance(block_size, bool):
        check_positive_int(block_size, "block_size")
        return block_size, block_size
    if (
        isinstance(block_size, (tuple, list))
        and len(block_size) == 2
        and all(isinstance(b, int) and not isinstance(b, bool) for b in block_size)
    ):
        check_positive_int(block_size[0], "block_size[0] (query rows)")
        check_positive_int(block_size[1], "block_size[1] (key columns)")
        return int(block_size[0]), int(block_size[1])
    raise TypeError(f"block_size must be None, an int > 0 or a pair (query rows, key columns), got {block_size!r}")


def biased_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    causal: bool = False,
    scale: float | None = None,
    block_size: int | tuple[int, int] | None = None,
    need_weights: bool = False,
    bias_params: Sequence[torch.Tensor] | None = None,
) -> AttentionResult:
    """Scaled dot-product attention plus an additive bias given tile by tile.

    .. math::
        \\mathrm{out} = \\mathrm{softmax}\\big(s\\, Q K^T + b(p_q, p_k) + M\\big) V

    equal to ``attend(q, k, v, bias=b_dense, mask=causal_mask)`` where ``b_dense`` is
    the whole bias; ``-inf`` bias entries are masks, a row with no allowed key gives a
    zero output and zero gradient. Time ``O(Tq Tk D)`` (causal: key tiles above the
    diagonal are skipped, about half the work); memory ``O(T D)`` saved, plus one
    ``(B, H, tq, tk)`` tile where tiles are materialized (general biases; the backward
    of learnable ones), nothing ``Tq x Tk`` for relative biases in the flash kernels.

    Args:
        q, k, v: queries, keys, values with a head axis.
        bias_fn: ``bias_fn(q_positions (tq,), k_positions (tk,)) -> (H or 1, tq, tk)``,
            positions absolute (long): query ``i`` at ``Tk - Tq + i``, key ``j`` at ``j``.
            Called once per tile in the forward and again in the backward. A
            :class:`TileBias` with ``per_rel`` (:func:`alibi_bias_fn`,
            :func:`t5_bias_fn`) is used through ``per_rel`` instead, once per call. It
            may close over learnable tensors: gradients reach those in ``bias_params``,
            else in ``bias_fn.bias_params``, else the leaf tensors requiring grad found
            by running it once on a 1 x 1 tile.
        causal: query ``i`` sees keys ``j <= Tk - Tq + i`` only.
        scale: score scale ``s``; default ``1 / sqrt(D)``.
        block_size: query rows per tile, or ``(query rows, key columns)``, for every
            loop of the call; default :data:`DEFAULT_BIAS_BLOCK` where tiles are
            materialized and whole key rows for relative biases in the flash kernels.
            Any value gives the same result up to rounding.
        need_weights: also return the dense ``(..., H, Tq, Tk)`` weights, recomputed
            exactly (softmax of each query block's full score rows), differentiable;
            ``O(Tq Tk)`` memory, only when asked.
        bias_params: the tensors ``bias_fn`` closes over that need gradients, when they
            cannot be found automatically (non-leaf tensors). Their gradients flow on
            to whatever they were computed from.

    Shape:
        q (..., H, Tq, D), k (..., H, Tk, D), v (..., H, Tk, Dv) -> output
        (..., H, Tq, Dv), weights (..., H, Tq, Tk); a 2-D q is one head. Batch
        dimensions broadcast.

    Returns:
        :class:`attnlab.functional.AttentionResult` ``(output, weights or None)``.
    """
    for t, name in ((q, "q"), (k, "k"), (v, "v")):
        check_tensor(t, name, min_ndim=2)
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not callable(bias_fn):
        raise TypeError(
            f"bias_fn must be a callable (q_positions, k_positions) -> (H or 1, tq, tk), got {type(bias_fn).__name__}"
        )
    for flag, name in ((causal, "causal"), (need_weights, "need_weights")):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale)):
        raise TypeError(f"scale must be a finite float or None, got {scale!r}")
    block = _check_block(block_size)
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must share their last dimension D: q is {fmt_shape(q.shape)}, k is {fmt_shape(k.shape)}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k and v must have the same number of keys Tk: k is {fmt_shape(k.shape)}, v is {fmt_shape(v.shape)}")
    if q.shape[-2] == 0 or k.shape[-2] == 0:
        raise ValueError(f"q and k need at least one position: q is {fmt_shape(q.shape)}, k is {fmt_shape(k.shape)}")
    try:
        lead = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    except RuntimeError:
        raise ValueError(
            f"q, k, v batch dimensions do not broadcast: q is {fmt_shape(q.shape)}, k is {fmt_shape(k.shape)}, "
            f"v is {fmt_shape(v.shape)}"
        ) from None
    if bias_params is not None:
        bias_params = tuple(bias_params)
        for n, p in enumerate(bias_params):
            check_tensor(p, f"bias_params[{n}]", min_ndim=0)
    Tq, Tk, D, Dv = q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]
    H = lead[-1] if len(lead) >= 1 else 1
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)

    q4 = q.expand(*lead, Tq, D).reshape(-1, H, Tq, D)  # (B, H, Tq, D)
    k4 = k.expand(*lead, Tk, D).reshape(-1, H, Tk, D)
    v4 = v.expand(*lead, Tk, Dv).reshape(-1, H, Tk, Dv)

    if bias_params is None:
        bias_params = getattr(bias_fn, "bias_params", None)
    if bias_params is None:
        bias_params = _discover_params(bias_fn, Tk - Tq, q.device) if torch.is_grad_enabled() else ()

    # The flash kernel wants one head size for q, k and v: zero columns change neither
    # the scores (q, k) nor the kept output columns (v).
    Dm = max(D, Dv)
    if q.device.type != "cpu" or q.dtype not in _FLASH_DTYPES:
        raise TypeError(f"biased_attention runs on CPU tensors of dtype {_FLASH_DTYPES}, got {q.dtype} on {q.device}")
    qf, kf, vf = q4, k4, v4
    if D != Dv:
        qf, kf = F.pad(q4, (0, Dm - D)), F.pad(k4, (0, Dm - D))
        vf = F.pad(v4, (0, Dm - Dv))
    spec = _Spec(bias_fn, H, Tq, Tk, causal, scale, block, q.dtype, q.device)
    out = _BiasedAttention.apply(spec, qf, kf, vf, *bias_params)  # (B, H, Tq, Dm)
    out = out[..., :Dv].reshape(*lead, Tq, Dv)

    weights = None
    if need_weights:
        weights = _dense_weights(spec, q4, k4).reshape(*lead, Tq, Tk).to(q.dtype)
    return AttentionResult(out, weights)


def _dense_weights(spec: _Spec, q4, k4) -> torch.Tensor:
    """Exact softmax weights ``(B, H, Tq, Tk)``, one query block of full rows at a time,
    through autograd (so gradients reach q, k and the bias parameters)."""
    cdt = torch.float32 if q4.dtype in (torch.float16, torch.bfloat16) else q4.dtype
    Tq, Tk = spec.Tq, spec.Tk
    fill = mask_fill_value(cdt)
    rows = []
    for i0 in range(0, Tq, spec.tile[0]):
        i1 = min(Tq, i0 + spec.tile[0])
        s = (q4[:, :, i0:i1].to(cdt) @ k4.to(cdt).transpose(-1, -2)) * spec.scale  # (B, H, tq, Tk)
        b = spec.bias(i0, i1, 0, Tk).to(cdt)  # (H or 1, tq, Tk)
        keep = ~torch.isneginf(b)  # (H or 1, tq, Tk)
        if spec.causal:
            keep = keep & spec.causal_keep(i0, i1, 0, Tk)
        s = (s + b.masked_fill(~keep, 0.0)).masked_fill(~keep, fill)
        rows.append(torch.softmax(s, -1) * keep)  # fully masked rows: uniform * 0 = 0
    return torch.cat(rows, 2)  # (B, H, Tq, Tk)
