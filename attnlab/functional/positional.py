"""Positional encodings: the parameter-free math.

Attention by itself is permutation-equivariant: shuffling the keys shuffles nothing
in the result. Each scheme here puts order back in one of three places:

- **input** (absolute): add a vector per position to the token embeddings
  (:func:`sinusoidal_table`, Vaswani et al. 2017).
- **score bias** (relative): add a term that depends on ``j - i`` to the scores
  (Shaw et al. 2018 :func:`shaw_scores`, T5 :func:`t5_bias`, ALiBi :func:`alibi_bias`).
- **rotation** (relative through absolute): rotate q and k by an angle proportional to
  their positions, so ``q_m . k_n`` depends on ``m - n`` only (RoPE, :func:`apply_rope`).

Position convention (shared with :mod:`attnlab.functional.masks`): query ``i`` sits at
absolute position ``offset + i`` and key ``j`` at ``j``; ``offset`` defaults to
``Tk - Tq`` (the queries are the last ``Tq`` positions, as when decoding with a KV
cache). Relative position is ``rel[i, j] = pos_k(j) - pos_q(i)``: negative for keys in
the past, positive for keys in the future.

Learnable tables (Shaw embeddings, T5 bucket biases) are passed in as tensors; the
modules in :mod:`attnlab.nn.positional` own them.
"""

from __future__ import annotations

import math

import torch

from .._checks import broadcast_shape, check_positive_int, check_tensor, fmt_shape

__all__ = [
    "sinusoidal_table",
    "relative_positions",
    "pairwise_relative",
    "shaw_relative_index",
    "shaw_scores",
    "shaw_table_scores",
    "t5_relative_bucket",
    "t5_bias",
    "t5_bias_from_relative",
    "rope_frequencies",
    "apply_rope",
    "alibi_slopes",
    "alibi_bias",
    "alibi_bias_from_relative",
]


# --------------------------------------------------------------------------- helpers


def _check_base(base, name: str = "base") -> float:
    if isinstance(base, bool) or not isinstance(base, (int, float)):
        raise TypeError(f"{name} must be a positive float, got {type(base).__name__}")
    if not math.isfinite(base) or base <= 0:
        raise ValueError(f"{name} must be a finite float > 0, got {base}")
    return float(base)


def _check_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return value


def _check_long(x, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be an integer torch.Tensor, got {type(x).__name__}")
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor (e.g. torch.long), got {x.dtype}")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # Angles and tables are computed in at least float32: bf16 has 8 mantissa bits, so
    # bf16 positions or angles would be wrong by whole radians beyond a few hundred tokens.
    return torch.float64 if dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------- sinusoidal


def sinusoidal_table(
    T: int, d_model: int, base: float = 10000.0, *, dtype: torch.dtype | None = None, device=None
) -> torch.Tensor:
    """Fixed sinusoidal position table (Vaswani et al. 2017, "Attention Is All You Need", §3.5).

    .. math::
        PE(pos, 2i) = \\sin(pos / base^{2i / d}), \\qquad PE(pos, 2i+1) = \\cos(pos / base^{2i / d})

    Each pair of dimensions is a clock of wavelength ``2 pi base^{2i/d}``, from ``2 pi``
    to ``2 pi base``; ``PE(pos + k)`` is a fixed linear function (a rotation) of ``PE(pos)``.
    An odd ``d_model`` is allowed: the last (even) index gets its ``sin`` and no ``cos``.

    Args:
        T: number of positions (0 .. T-1).
        d_model: embedding width.
        base: the wavelength base (10000 in the paper).
        dtype: result dtype (default: ``torch.get_default_dtype()``); computed in at
            least float32.

    Shape:
        returns ``(T, d_model)``.
    """
    check_positive_int(T, "T")
    check_positive_int(d_model, "d_model")
    base = _check_base(base)
    dtype = torch.get_default_dtype() if dtype is None else dtype
    cdt = _compute_dtype(dtype)
    half = (d_model + 1) // 2  # sin/cos pairs; an odd d_model drops the last cos
    pos = torch.arange(T, dtype=cdt, device=device)  # (T,)
    inv_freq = base ** (-torch.arange(0, 2 * half, 2, dtype=cdt, device=device) / d_model)  # (half,)
    angles = pos[:, None] * inv_freq[None, :]  # (T, half)
    table = torch.stack((angles.sin(), angles.cos()), dim=-1)  # (T, half, 2): sin at even, cos at odd
    return table.reshape(T, 2 * half)[:, :d_model].to(dtype)  # (T, d_model)


# --------------------------------------------------------------------------- relative positions


def relative_positions(Tq: int, Tk: int, offset: int | None = None, *, device=None) -> torch.Tensor:
    """Relative position of key ``j`` seen from query ``i``: ``rel[i, j] = j - (offset + i)``.

    Query ``i`` sits at absolute position ``offset + i``; ``offset`` defaults to
    ``Tk - Tq`` (queries are the last positions, as with a KV cache), so for
    self-attention (``Tq == Tk``) ``rel[i, j] = j - i``.

    Shape:
        returns ``(Tq, Tk)`` long.
    """
    check_positive_int(Tq, "Tq")
    check_positive_int(Tk, "Tk")
    if offset is None:
        offset = Tk - Tq
    offset = _check_int(offset, "offset")
    qpos = torch.arange(Tq, device=device) + offset  # (Tq,)
    kpos = torch.arange(Tk, device=device)  # (Tk,)
    return kpos[None, :] - qpos[:, None]  # (Tq, Tk)


def pairwise_relative(q_positions: torch.Tensor, k_positions: torch.Tensor) -> torch.Tensor:
    """``rel[i, j] = k_positions[j] - q_positions[i]`` for explicit absolute positions.

    Shape:
        q_positions (Tq,), k_positions (Tk,) integer -> ``(Tq, Tk)`` long.
    """
    _check_long(q_positions, "q_positions")
    _check_long(k_positions, "k_positions")
    if q_positions.dim() != 1:
        raise ValueError(f"q_positions must have shape (Tq,), got {fmt_shape(q_positions.shape)}")
    if k_positions.dim() != 1:
        raise ValueError(f"k_positions must have shape (Tk,), got {fmt_shape(k_positions.shape)}")
    return k_positions.long()[None, :] - q_positions.long()[:, None]  # (Tq, Tk)


# --------------------------------------------------------------------------- Shaw et al. 2018


def shaw_relative_index(rel: torch.Tensor, max_distance: int) -> torch.Tensor:
    """Shaw et al. (2018), "Self-Attention with Relative Position Representations", §3.2.

    .. math:: \\mathrm{clip}(j - i, -k, k) + k \\in [0, 2k]

    Distances beyond ``k = max_distance`` share the edge embedding, so a table of
    ``2k + 1`` rows serves any sequence length.

    Shape:
        rel (...) integer -> (...) long, values in ``[0, 2 * max_distance]``.
    """
    _check_long(rel, "rel")
    k = check_positive_int(max_distance, "max_distance", allow_zero=True)
    return rel.long().clamp(-k, k) + k


def shaw_scores(q: torch.Tensor, rel_emb_k: torch.Tensor) -> torch.Tensor:
    """Key-side relative term of Shaw et al. (2018), eq. (5): ``s_ij = q_i . a^K_ij``.

    The full score of the paper is ``q_i . (k_j + a^K_ij) / sqrt(d)``; this returns the
    unscaled second half. ``rel_emb_k[i, j]`` is ``a^K_ij``, usually
    ``table[shaw_relative_index(rel)]``. This reference materializes ``(Tq, Tk, D)``;
    :func:`shaw_table_scores` computes the same from the ``(2k+1, D)`` table without it.

    Shape:
        q (..., Tq, D), rel_emb_k (Tq, Tk, D) -> (..., Tq, Tk).
    """
    check_tensor(q, "q", min_ndim=2)
    check_tensor(rel_emb_k, "rel_emb_k", min_ndim=3)
    if rel_emb_k.dim() != 3:
        raise ValueError(f"rel_emb_k must have shape (Tq, Tk, D), got {fmt_shape(rel_emb_k.shape)}")
    if rel_emb_k.shape[0] != q.shape[-2] or rel_emb_k.shape[2] != q.shape[-1]:
        raise ValueError(
            f"rel_emb_k must have shape (Tq, Tk, D) = ({q.shape[-2]}, Tk, {q.shape[-1]}) to match "
            f"q {fmt_shape(q.shape)}, got {fmt_shape(rel_emb_k.shape)}"
        )
    return torch.einsum("...qd,qkd->...qk", q, rel_emb_k.to(q.dtype))  # (..., Tq, Tk)


def shaw_table_scores(q: torch.Tensor, table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """:func:`shaw_scores` from the embedding table: ``s_ij = q_i . table[index_ij]``.

    ``q_i . table[r]`` is computed once per row ``r`` (``q @ table^T``, ``(..., Tq, 2k+1)``)
    and then gathered, so memory is ``O(Tq * (2k+1 + Tk))`` instead of ``O(Tq * Tk * D)``.

    Shape:
        q (..., Tq, D), table (R, D), index (Tq, Tk) integer in ``[0, R)`` -> (..., Tq, Tk).
    """
    check_tensor(q, "q", min_ndim=2)
    check_tensor(table, "table", min_ndim=2)
    _check_long(index, "index")
    if table.dim() != 2 or table.shape[1] != q.shape[-1]:
        raise ValueError(f"table must have shape (R, D) with D = {q.shape[-1]}, got {fmt_shape(table.shape)}")
    if index.dim() != 2 or index.shape[0] != q.shape[-2]:
        raise ValueError(f"index must have shape (Tq, Tk) with Tq = {q.shape[-2]}, got {fmt_shape(index.shape)}")
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= table.shape[0]):
        raise ValueError(
            f"index values must lie in [0, {table.shape[0]}) (rows of table), "
            f"got [{int(index.min())}, {int(index.max())}]"
        )
    per_row = q @ table.to(q.dtype).transpose(0, 1)  # (..., Tq, R)
    idx = index.long().expand(*q.shape[:-2], *index.shape)  # (..., Tq, Tk)
    return per_row.gather(-1, idx)  # (..., Tq, Tk)


# --------------------------------------------------------------------------- T5


def _check_t5_sizes(bidirectional: bool, num_buckets: int, max_distance: int) -> int:
    if not isinstance(bidirectional, bool):
        raise TypeError(f"bidirectional must be a bool, got {type(bidirectional).__name__}")
    check_positive_int(num_buckets, "num_buckets")
    check_positive_int(max_distance, "max_distance")
    side = num_buckets // 2 if bidirectional else num_buckets
    if side < 2:
        raise ValueError(
            f"num_buckets must be >= {4 if bidirectional else 2} "
            f"({'bidirectional' if bidirectional else 'unidirectional'}), got {num_buckets}"
        )
    max_exact = side // 2
    if max_distance <= max_exact:
        raise ValueError(
            f"max_distance must be > {max_exact} (the exact buckets, half of the "
            f"{'per-direction ' if bidirectional else ''}buckets), got {max_distance}"
        )
    return max_exact


def t5_relative_bucket(
    rel: torch.Tensor, bidirectional: bool = True, num_buckets: int = 32, max_distance: int = 128
) -> torch.Tensor:
    """T5 relative-position buckets (Raffel et al. 2020, "Exploring the Limits of Transfer
    Learning with a Unified Text-to-Text Transformer", §2.1), exactly as
    ``T5Attention._relative_position_bucket`` in Mesh TensorFlow / Hugging Face.

    With ``n`` buckets per direction (``num_buckets / 2`` if bidirectional, the sign of
    ``rel > 0`` picking the upper half; else ``num_buckets`` and future keys share
    bucket 0) and ``e = n / 2``, a distance ``d = |rel|`` maps to

    .. math::
        b(d) = d \\quad (d < e), \\qquad
        b(d) = \\min\\Big(n - 1,\\; e + \\big\\lfloor \\frac{\\log(d / e)}{\\log(m / e)} (n - e) \\big\\rfloor\\Big)
        \\quad (d \\ge e)

    with ``m = max_distance``: half the buckets exact, the rest log-spaced up to ``m``,
    beyond which all distances share the last bucket. The log is taken in float32 as
    in the reference, so bucket edges match it bit for bit.

    Args:
        rel: ``j - i`` (key minus query position), integer.

    Shape:
        rel (...) -> (...) long, values in ``[0, num_buckets)``.
    """
    _check_long(rel, "rel")
    max_exact = _check_t5_sizes(bidirectional, num_buckets, max_distance)
    rel = rel.long()
    buckets = torch.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (rel > 0).long() * num_buckets
        dist = rel.abs()
    else:
        dist = -torch.clamp(rel, max=0)  # keys in the future: distance 0
    is_small = dist < max_exact
    # Clamping only the (unused) small distances keeps log() away from 0 -> -inf -> long.
    large = max_exact + (
        torch.log(dist.clamp(min=max_exact).float() / max_exact)
        / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).long()
    large = large.clamp(max=num_buckets - 1)
    return buckets + torch.where(is_small, dist, large)


def _check_table(table, name: str = "table") -> None:
    check_tensor(table, name, min_ndim=2)
    if table.dim() != 2:
        raise ValueError(f"{name} must have shape (num_buckets, H), got {fmt_shape(table.shape)}")


def t5_bias_from_relative(
    table: torch.Tensor, rel: torch.Tensor, *, bidirectional: bool = True, max_distance: int = 128
) -> torch.Tensor:
    """T5 bias for explicit relative positions: ``bias[h, i, j] = table[bucket(rel[i, j]), h]``.

    Shape:
        table (num_buckets, H), rel (Tq, Tk) integer -> (H, Tq, Tk).
    """
    _check_table(table)
    _check_long(rel, "rel")
    if rel.dim() != 2:
        raise ValueError(f"rel must have shape (Tq, Tk), got {fmt_shape(rel.shape)}")
    buckets = t5_relative_bucket(rel, bidirectional, table.shape[0], max_distance)  # (Tq, Tk)
    return table[buckets].permute(2, 0, 1)  # (Tq, Tk, H) -> (H, Tq, Tk)


def t5_bias(
    table: torch.Tensor,
    Tq: int,
    Tk: int,
    *,
    bidirectional: bool = True,
    max_distance: int = 128,
    offset: int | None = None,
) -> torch.Tensor:
    """T5 relative attention bias (Raffel et al. 2020): one learned scalar per
    (bucket, head), added to the scores (T5 does not scale its scores by ``1/sqrt(d)``;
    the bias is added to whatever scores the model uses).

    .. math:: B_{h,i,j} = \\mathrm{table}[\\mathrm{bucket}(j - i), h]

    ``num_buckets`` is ``table.shape[0]``; see :func:`t5_relative_bucket`. Encoders use
    ``bidirectional=True``, decoders ``False``. Gradients flow into ``table``.

    Shape:
        table (num_buckets, H) -> (H, Tq, Tk).
    """
    _check_table(table)
    rel = relative_positions(Tq, Tk, offset, device=table.device)  # (Tq, Tk)
    return t5_bias_from_relative(table, rel, bidirectional=bidirectional, max_distance=max_distance)


# --------------------------------------------------------------------------- RoPE


def _check_head_dim_even(head_dim: int, name: str) -> None:
    if head_dim % 2:
        raise ValueError(f"{name} must be even for rotary embeddings (pairs of dimensions rotate), got {head_dim}")


def rope_frequencies(
    head_dim: int, base: float = 10000.0, *, dtype: torch.dtype = torch.float32, device=None
) -> torch.Tensor:
    """RoPE angular frequencies (Su et al. 2021, "RoFormer: Enhanced Transformer with
    Rotary Position Embedding", eq. 15): ``theta_i = base^{-2i / D}``, ``i = 0 .. D/2 - 1``.

    Shape:
        returns ``(head_dim // 2,)``.
    """
    check_positive_int(head_dim, "head_dim")
    _check_head_dim_even(head_dim, "head_dim")
    base = _check_base(base)
    cdt = _compute_dtype(dtype)
    exps = torch.arange(0, head_dim, 2, dtype=cdt, device=device) / head_dim  # (D/2,)
    return (base ** (-exps)).to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)  # each (..., D/2)
    return torch.cat((-x2, x1), dim=-1)  # (..., D)


def apply_rope(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding (Su et al. 2021, RoFormer, §3.2).

    Each pair of dimensions of the vector at position ``m`` is rotated by the angle
    ``m * theta_i`` (:func:`rope_frequencies`):

    .. math::
        \\begin{pmatrix} y_i \\\\ y_{i + D/2} \\end{pmatrix} =
        \\begin{pmatrix} \\cos m\\theta_i & -\\sin m\\theta_i \\\\ \\sin m\\theta_i & \\cos m\\theta_i \\end{pmatrix}
        \\begin{pmatrix} x_i \\\\ x_{i + D/2} \\end{pmatrix}

    Rotations compose, so ``<R(m) q, R(n) k> = <q, R(n - m) k>``: applied to q and k it
    makes their dot product depend on ``m - n`` only, and it preserves norms.

    Pairing: the "rotate-half" layout of GPT-NeoX and Hugging Face LLaMA, pairing
    dimension ``i`` with ``i + D/2``. The paper (and the original RoFormer / Meta LLaMA
    code) pairs adjacent dimensions ``(2i, 2i+1)``; the two differ by a fixed permutation
    of the q/k projection rows, so checkpoints from one need their weights permuted to
    use the other.

    Angles are computed in float32 (float64 for float64 input), then the result is cast
    back to ``x.dtype``.

    Args:
        x: queries or keys, last dimension even.
        positions: absolute positions (long or float), one per row of ``x``.

    Shape:
        x (..., T, D), positions (T,) or broadcastable to ``x.shape[:-1]`` -> (..., T, D).
    """
    check_tensor(x, "x", min_ndim=2)
    if not isinstance(positions, torch.Tensor):
        raise TypeError(f"positions must be a torch.Tensor of shape (T,), got {type(positions).__name__}")
    if positions.dtype == torch.bool or positions.dtype.is_complex:
        raise TypeError(f"positions must be an integer or float tensor, got {positions.dtype}")
    D, T = x.shape[-1], x.shape[-2]
    _check_head_dim_even(D, "x.shape[-1] (head_dim)")
    if positions.dim() == 0 or positions.shape[-1] != T or positions.dim() > x.dim() - 1:
        raise ValueError(
            f"positions must have shape (T,) = ({T},) (or broadcast to {fmt_shape(x.shape[:-1])}) "
            f"for x {fmt_shape(x.shape)}, got {fmt_shape(positions.shape)}"
        )
    try:
        broadcast_shape(positions.shape, x.shape[:-1])
    except ValueError:
        raise ValueError(
            f"positions of shape {fmt_shape(positions.shape)} does not broadcast to x.shape[:-1] "
            f"{fmt_shape(x.shape[:-1])}"
        ) from None
    cdt = _compute_dtype(x.dtype)
    inv_freq = rope_frequencies(D, base, dtype=cdt, device=x.device)  # (D/2,)
    angles = positions.to(cdt)[..., None] * inv_freq  # (..., T, D/2)
    angles = torch.cat((angles, angles), dim=-1)  # (..., T, D): dim i and i + D/2 share an angle
    xf = x.to(cdt)
    out = xf * angles.cos() + _rotate_half(xf) * angles.sin()  # (..., T, D)
    return out.to(x.dtype)


# --------------------------------------------------------------------------- ALiBi


def _power_of_2_slopes(n: int) -> list[float]:
    start = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))  # = 2^(-8/n)
    return [start * start**i for i in range(n)]


def _slopes(n: int) -> list[float]:
    if math.log2(n).is_integer():
        return _power_of_2_slopes(n)
    # Not a power of 2: the slopes of the nearest lower power of 2, then every other
    # slope of the next power of 2 (the paper's rule, ofirpress/attention_with_linear_biases).
    closest = 2 ** math.floor(math.log2(n))
    return _power_of_2_slopes(closest) + _slopes(2 * closest)[0::2][: n - closest]


def alibi_slopes(num_heads: int, *, dtype: torch.dtype | None = None, device=None) -> torch.Tensor:
    """ALiBi head slopes (Press et al. 2022, "Train Short, Test Long: Attention with Linear
    Biases Enables Input Length Extrapolation", §3).

    For ``n`` a power of 2: the geometric sequence ``m_h = 2^{-8h/n}``, ``h = 1 .. n``
    (8 heads: 1/2, 1/4, ..., 1/256). Otherwise, with ``c`` the largest power of 2 below
    ``n``: the ``c`` slopes for ``c`` heads followed by the first ``n - c`` of every other
    slope for ``2c`` heads (6 heads: 1/4, 1/16, 1/64, 1/256, then 1/2, 1/8).

    Shape:
        returns ``(num_heads,)``.
    """
    check_positive_int(num_heads, "num_heads")
    dtype = torch.get_default_dtype() if dtype is None else dtype
    return torch.tensor(_slopes(num_heads), dtype=dtype, device=device)


def alibi_bias_from_relative(slopes: torch.Tensor, rel: torch.Tensor) -> torch.Tensor:
    """``bias[h, i, j] = -slopes[h] * |rel[i, j]|``.

    Shape:
        slopes (H,), rel (Tq, Tk) integer -> (H, Tq, Tk).
    """
    check_tensor(slopes, "slopes")
    if slopes.dim() != 1:
        raise ValueError(f"slopes must have shape (H,), got {fmt_shape(slopes.shape)}")
    _check_long(rel, "rel")
    if rel.dim() != 2:
        raise ValueError(f"rel must have shape (Tq, Tk), got {fmt_shape(rel.shape)}")
    return -slopes[:, None, None] * rel.abs().to(slopes.dtype)[None]  # (H, Tq, Tk)


def alibi_bias(
    num_heads: int,
    Tq: int,
    Tk: int,
    offset: int | None = None,
    *,
    dtype: torch.dtype | None = None,
    device=None,
) -> torch.Tensor:
    """ALiBi bias (Press et al. 2022): a linear penalty on distance, one slope per head.

    .. math:: B_{h,i,j} = -m_h \\, |i - j|

    The paper is causal and writes the bias as ``m_h (j - i)`` for ``j <= i``; that
    equals ``-m_h |i - j|`` there, and the causal mask removes ``j > i``, so for causal
    attention only the lower triangle matters. This symmetric form also serves
    bidirectional attention (as in encoder ports of ALiBi). No ``1/sqrt(d)`` applies:
    add it to the scaled scores. Computed in float32 unless ``dtype`` is float64.

    Shape:
        returns ``(H, Tq, Tk)``; query ``i`` at absolute position ``offset + i``
        (default ``Tk - Tq``).
    """
    dtype = torch.get_default_dtype() if dtype is None else dtype
    slopes = alibi_slopes(num_heads, dtype=_compute_dtype(dtype), device=device)  # (H,)
    rel = relative_positions(Tq, Tk, offset, device=device)  # (Tq, Tk)
    return alibi_bias_from_relative(slopes, rel).to(dtype)  # (H, Tq, Tk)
