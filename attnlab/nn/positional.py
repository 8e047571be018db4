"""Positional encodings as modules, behind one protocol that attention modules call.

Every scheme is a :class:`PositionalScheme`:

.. code-block:: python

    class Scheme(PositionalScheme):
        kind: str   # "input": added to the token embeddings; "attention": acts inside attention
        def forward(self, x, positions=None) -> x           # "input": x + P; otherwise identity
        def rotate(self, x, positions) -> x                 # rotates q / k (RoPE); else identity
        def score_bias(self, q, q_positions, k_positions)   # float bias or None

How a model uses one (``pos`` any scheme)::

    h = pos(token_embeddings)                       # (B, T, d_model); identity unless kind == "input"
    q, k = pos.rotate(q, q_pos), pos.rotate(k, k_pos)   # (B, H, T, D); identity unless RoPE
    s = q @ k.transpose(-2, -1) / sqrt(D)           # (B, H, Tq, Tk)
    bias = pos.score_bias(q_unrotated, q_pos, k_pos)    # broadcastable to (B, H, Tq, Tk) or None
    if bias is not None: s = s + bias               # added to the ALREADY SCALED scores

Positions are absolute ``long`` tensors, ``q_positions`` (Tq,) and ``k_positions``
(Tk,); with a KV cache the queries are the last positions
(``q_positions = arange(Tk - Tq, Tk)``). The math lives in
:mod:`attnlab.functional.positional`; these modules own the tables and check shapes.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .._checks import check_positive_int, check_probability, check_tensor, fmt_shape
from ..functional.positional import (
    alibi_bias_from_relative,
    alibi_slopes,
    apply_rope,
    pairwise_relative,
    shaw_relative_index,
    shaw_table_scores,
    sinusoidal_table,
    t5_bias_from_relative,
    t5_relative_bucket,
)

__all__ = [
    "PositionalScheme",
    "NoPositionalEncoding",
    "SinusoidalPositionalEncoding",
    "LearnedPositionalEmbedding",
    "ShawRelativePosition",
    "T5RelativeBias",
    "RotaryEmbedding",
    "ALiBi",
    "POSITIONAL",
    "build_positional",
]

KINDS = ("input", "attention")


# --------------------------------------------------------------------------- checks


def _check_positions(positions, name: str, length: int | None, what: str) -> torch.Tensor:
    if not isinstance(positions, torch.Tensor):
        raise TypeError(f"{name} must be a long torch.Tensor of shape ({what},), got {type(positions).__name__}")
    if positions.dtype.is_floating_point or positions.dtype.is_complex or positions.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer (long) tensor of absolute positions, got {positions.dtype}")
    if positions.dim() != 1 or (length is not None and positions.shape[0] != length):
        want = f"({what},) = ({length},)" if length is not None else f"({what},)"
        raise ValueError(f"{name} must have shape {want}, got {fmt_shape(positions.shape)}")
    return positions


def _check_q(q, head_dim: int | None = None, num_heads: int | None = None) -> None:
    check_tensor(q, "q", min_ndim=2)
    if head_dim is not None and q.shape[-1] != head_dim:
        raise ValueError(f"q must have shape (B, H, Tq, D) with D = head_dim = {head_dim}, got {fmt_shape(q.shape)}")
    if num_heads is not None and (q.dim() < 3 or q.shape[-3] != num_heads):
        raise ValueError(
            f"q must have shape (B, H, Tq, D) with H = num_heads = {num_heads}, got {fmt_shape(q.shape)}"
        )


# --------------------------------------------------------------------------- protocol


class PositionalScheme(nn.Module):
    """Base class: every hook is the identity / ``None`` unless a scheme overrides it.

    ``kind`` is ``"input"`` (the scheme adds to the token embeddings in ``forward``) or
    ``"attention"`` (it acts through ``rotate`` and/or ``score_bias``). A model can call
    all three hooks on any scheme; the ones a scheme does not use do nothing.
    """

    kind: str = "attention"

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Shape: x (B, T, d_model) -> (B, T, d_model); identity for attention schemes."""
        return x

    def rotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Shape: x (B, H, T, D), positions (T,) -> (B, H, T, D); identity unless RoPE."""
        return x

    def score_bias(
        self, q: torch.Tensor, q_positions: torch.Tensor, k_positions: torch.Tensor
    ) -> torch.Tensor | None:
        """Shape: q (B, H, Tq, D), positions (Tq,), (Tk,) -> broadcastable to
        (B, H, Tq, Tk), added to the already scaled scores; or ``None``."""
        return None

    @classmethod
    def from_sizes(cls, *, num_heads: int, head_dim: int, d_model: int, max_len: int, **kw) -> "PositionalScheme":
        """Build from the sizes an attention module knows (see :func:`build_positional`)."""
        return cls(**kw)


class NoPositionalEncoding(PositionalScheme):
    """No position information at all (attention stays permutation-equivariant)."""

    kind = "attention"


# --------------------------------------------------------------------------- input schemes


class _InputScheme(PositionalScheme):
    kind = "input"

    def _positions(self, x: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
        check_tensor(x, "x", min_ndim=2)
        if x.shape[-1] != self.d_model:
            raise ValueError(
                f"x must have shape (B, T, d_model) with d_model = {self.d_model}, got {fmt_shape(x.shape)}"
            )
        T = x.shape[-2]
        if positions is None:
            if T > self.max_len:
                raise ValueError(
                    f"x has T = {T} positions (shape {fmt_shape(x.shape)}) but max_len = {self.max_len}; "
                    f"build the module with max_len >= {T}"
                )
            return torch.arange(T, device=x.device)  # (T,)
        positions = _check_positions(positions, "positions", T, "T")
        if positions.numel() and (int(positions.min()) < 0 or int(positions.max()) >= self.max_len):
            raise ValueError(
                f"positions must lie in [0, max_len) = [0, {self.max_len}), "
                f"got [{int(positions.min())}, {int(positions.max())}]"
            )
        return positions


class SinusoidalPositionalEncoding(_InputScheme):
    """Fixed sinusoids added to the embeddings (Vaswani et al. 2017, §3.5):
    ``y = dropout(x + PE[pos])``, ``PE`` from :func:`~attnlab.functional.positional.sinusoidal_table`.

    The paper multiplies the token embeddings by ``sqrt(d_model)`` first; that is the
    model's job, not this module's. The table is a non-persistent buffer (it is a
    function of the sizes, so checkpoints do not carry it).

    Shape:
        x (B, T, d_model), positions (T,) optional (default ``arange(T)``) -> (B, T, d_model).
    """

    def __init__(self, d_model: int, max_len: int = 2048, dropout: float = 0.0, base: float = 10000.0):
        super().__init__()
        self.d_model = check_positive_int(d_model, "d_model")
        self.max_len = check_positive_int(max_len, "max_len")
        self.base = base
        self.dropout = nn.Dropout(check_probability(dropout, "dropout"))
        self.register_buffer("pe", sinusoidal_table(max_len, d_model, base, dtype=torch.float32), persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        pos = self._positions(x, positions)  # (T,)
        return self.dropout(x + self.pe[pos].to(x.dtype))  # (B, T, d_model) + (T, d_model)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, max_len={self.max_len}, base={self.base}"

    @classmethod
    def from_sizes(cls, *, num_heads, head_dim, d_model, max_len, **kw):
        return cls(d_model, max_len=max_len, **kw)


class LearnedPositionalEmbedding(_InputScheme):
    """One learned vector per absolute position, added to the embeddings (as in BERT
    and GPT-2; Gehring et al. 2017). Cannot represent positions ``>= max_len``.

    Initialized ``N(0, 0.02^2)`` like BERT/GPT-2, so it starts small next to unit-scale
    token embeddings.

    Shape:
        x (B, T, d_model), positions (T,) optional (default ``arange(T)``) -> (B, T, d_model).
    """

    def __init__(self, max_len: int, d_model: int, init_std: float = 0.02):
        super().__init__()
        self.max_len = check_positive_int(max_len, "max_len")
        self.d_model = check_positive_int(d_model, "d_model")
        self.weight = nn.Parameter(torch.empty(max_len, d_model))  # (max_len, d_model)
        nn.init.normal_(self.weight, std=init_std)

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        pos = self._positions(x, positions)  # (T,)
        return x + self.weight[pos].to(x.dtype)  # (B, T, d_model) + (T, d_model)

    def extra_repr(self) -> str:
        return f"max_len={self.max_len}, d_model={self.d_model}"

    @classmethod
    def from_sizes(cls, *, num_heads, head_dim, d_model, max_len, **kw):
        return cls(max_len, d_model, **kw)


# --------------------------------------------------------------------------- attention schemes


class ShawRelativePosition(PositionalScheme):
    """Relative position representations (Shaw et al. 2018), key side:

    .. math:: e_{ij} = \\frac{q_i \\cdot k_j}{\\sqrt{D}} + \\frac{q_i \\cdot a^K_{\\mathrm{clip}(j - i, -k, k)}}{\\sqrt{D}}

    ``score_bias`` returns the second term, already divided by ``sqrt(D)`` (or times
    ``scale`` if given) since it is added to scaled scores. One table of ``2k + 1`` rows
    is shared by all heads, as in the paper.

    The value-side term of the paper, ``z_i = sum_j w_ij (v_j + a^V_ij)``, is omitted (as
    in most implementations; the paper's ablation found it adds little) because it
    changes the output rather than the scores and does not fit this protocol.

    Shape:
        q (B, H, Tq, D), q_positions (Tq,), k_positions (Tk,) -> (B, H, Tq, Tk).
    """

    kind = "attention"

    def __init__(self, head_dim: int, max_distance: int = 16, scale: float | None = None):
        super().__init__()
        self.head_dim = check_positive_int(head_dim, "head_dim")
        self.max_distance = check_positive_int(max_distance, "max_distance", allow_zero=True)
        self.scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
        self.weight = nn.Parameter(torch.empty(2 * max_distance + 1, head_dim))  # (2k+1, D)
        # std D^-1/2 gives q . a the same spread as q . k for unit-variance q and k.
        nn.init.normal_(self.weight, std=head_dim**-0.5)

    def score_bias(self, q, q_positions, k_positions):
        _check_q(q, head_dim=self.head_dim)
        _check_positions(q_positions, "q_positions", q.shape[-2], "Tq")
        _check_positions(k_positions, "k_positions", None, "Tk")
        rel = pairwise_relative(q_positions, k_positions)  # (Tq, Tk)
        index = shaw_relative_index(rel, self.max_distance)  # (Tq, Tk) in [0, 2k]
        return shaw_table_scores(q, self.weight, index) * self.scale  # (B, H, Tq, Tk)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, max_distance={self.max_distance}"

    @classmethod
    def from_sizes(cls, *, num_heads, head_dim, d_model, max_len, **kw):
        return cls(head_dim, **kw)


class T5RelativeBias(PositionalScheme):
    """T5 relative attention bias (Raffel et al. 2020): a learned scalar per
    (log-spaced distance bucket, head), see :func:`~attnlab.functional.positional.t5_bias`.

    In T5 one table per stack is shared by all layers; share this module to do the same.

    Shape:
        q (B, H, Tq, D), q_positions (Tq,), k_positions (Tk,) -> (H, Tq, Tk)
        (broadcasts over B).
    """

    kind = "attention"

    def __init__(self, num_heads: int, num_buckets: int = 32, max_distance: int = 128, bidirectional: bool = True,
                 init_std: float = 0.02):
        super().__init__()
        self.num_heads = check_positive_int(num_heads, "num_heads")
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.bidirectional = bidirectional
        # Validate the sizes now rather than on the first forward.
        t5_relative_bucket(torch.zeros(1, dtype=torch.long), bidirectional, num_buckets, max_distance)
        self.weight = nn.Parameter(torch.empty(num_buckets, num_heads))  # (num_buckets, H)
        nn.init.normal_(self.weight, std=init_std)

    def score_bias(self, q, q_positions, k_positions):
        _check_q(q, num_heads=self.num_heads)
        _check_positions(q_positions, "q_positions", q.shape[-2], "Tq")
        _check_positions(k_positions, "k_positions", None, "Tk")
        rel = pairwise_relative(q_positions, k_positions)  # (Tq, Tk)
        bias = t5_bias_from_relative(
            self.weight, rel, bidirectional=self.bidirectional, max_distance=self.max_distance
        )  # (H, Tq, Tk)
        return bias.to(q.dtype)

    def extra_repr(self) -> str:
        return (f"num_heads={self.num_heads}, num_buckets={self.num_buckets}, "
                f"max_distance={self.max_distance}, bidirectional={self.bidirectional}")

    @classmethod
    def from_sizes(cls, *, num_heads, head_dim, d_model, max_len, **kw):
        return cls(num_heads, **kw)


class RotaryEmbedding(PositionalScheme):
    """Rotary position embedding (Su et al. 2021), "rotate-half" pairing (GPT-NeoX / HF
    LLaMA): see :func:`~attnlab.functional.positional.apply_rope`. Rotates q and k; adds
    no bias. No parameters and no buffers: angles are recomputed in float32 each call
    so a module cast to bf16 keeps exact angles.

    Shape:
        x (B, H, T, D), positions (T,) -> (B, H, T, D).
    """

    kind = "attention"

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        self.head_dim = check_positive_int(head_dim, "head_dim")
        if head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings (pairs of dimensions rotate), got {head_dim}")
        self.base = base

    def rotate(self, x, positions):
        check_tensor(x, "x", min_ndim=2)
        if x.shape[-1] != self.head_dim:
            raise ValueError(f"x must have shape (B, H, T, D) with D = head_dim = {self.head_dim}, got {fmt_shape(x.shape)}")
        _check_positions(positions, "positions", x.shape[-2], "T")
        return apply_rope(x, positions, self.base)  # (B, H, T, D)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, base={self.base}"

    @classmethod
    def from_sizes(cls, *, num_heads, head_dim, d_model, max_len, **kw):
        return cls(head_dim, **kw)


class ALiBi(PositionalScheme):
    """Attention with linear biases (Press et al. 2022): ``-m_h |i - j|`` added to the
    scores, see :func:`~attnlab.functional.positional.alibi_bias`. For causal attention
    only ``j <= i`` matters (the mask removes the rest), where this equals the paper's
    ``m_h (j - i)``. Slopes are recomputed each call (no buffer to lose precision in bf16).

    Shape:
        q (B, H, Tq, D), q_positions (Tq,), k_positions (Tk,) -> (H, Tq, Tk)
        (broadcasts over B).
    """

    kind = "attention"

    def __init__(self, num_heads: int):
        super().__init__()
        self.num_heads = check_positive_int(num_heads, "num_heads")

    def score_bias(self, q, q_positions, k_positions):
        _check_q(q, num_heads=self.num_heads)
        _check_positions(q_positions, "q_positions", q.shape[-2], "Tq")
        _check_positions(k_positions, "k_positions", None, "Tk")
        cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
        slopes = alibi_slopes(self.num_heads, dtype=cdt, device=q.device)  # (H,)
        rel = pairwise_relative(q_positions, k_positions)  # (Tq, Tk)
        return alibi_bias_from_relative(slopes, rel).to(q.dtype)  # (H, Tq, Tk)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}"

    @classmethod
    def from_sizes(cls, *, num_heads, head_dim, d_model, max_len, **kw):
        return cls(num_heads, **kw)


# --------------------------------------------------------------------------- registry

POSITIONAL: dict[str, type[PositionalScheme]] = {
    "none": NoPositionalEncoding,
    "sinusoidal": SinusoidalPositionalEncoding,
    "learned": LearnedPositionalEmbedding,
    "shaw": ShawRelativePosition,
    "t5": T5RelativeBias,
    "rope": RotaryEmbedding,
    "alibi": ALiBi,
}


def build_positional(
    name_or_module, *, num_heads: int, head_dim: int, d_model: int | None = None, max_len: int = 2048, **kw
) -> nn.Module:
    """A positional scheme from a name in :data:`POSITIONAL`, or a ready module.

    Each scheme takes the sizes it needs: ``sinusoidal`` (d_model, max_len), ``learned``
    (max_len, d_model), ``shaw`` (head_dim), ``t5`` / ``alibi`` (num_heads), ``rope``
    (head_dim). ``d_model`` defaults to ``num_heads * head_dim``. Extra keyword arguments
    go to the scheme's constructor (``max_distance=``, ``base=``, ``dropout=`` ...).

    A module is returned as is if it follows the protocol (``kind``, ``rotate``,
    ``score_bias``).
    """
    if isinstance(name_or_module, nn.Module):
        missing = [a for a in ("kind", "rotate", "score_bias") if not hasattr(name_or_module, a)]
        if missing or getattr(name_or_module, "kind", None) not in KINDS:
            raise TypeError(
                f"positional module {type(name_or_module).__name__} must follow the PositionalScheme protocol "
                f"(kind in {KINDS}, rotate, score_bias); missing or invalid: {missing or ['kind']}"
            )
        if kw:
            raise TypeError(f"keyword arguments {sorted(kw)} cannot be applied to an already built module")
        return name_or_module
    if not isinstance(name_or_module, str) or name_or_module not in POSITIONAL:
        raise ValueError(
            f"unknown positional encoding {name_or_module!r}; valid positional encodings: "
            f"{', '.join(sorted(POSITIONAL))}, or pass a PositionalScheme module"
        )
    check_positive_int(num_heads, "num_heads")
    check_positive_int(head_dim, "head_dim")
    d_model = num_heads * head_dim if d_model is None else check_positive_int(d_model, "d_model")
    check_positive_int(max_len, "max_len")
    cls = POSITIONAL[name_or_module]
    return cls.from_sizes(num_heads=num_heads, head_dim=head_dim, d_model=d_model, max_len=max_len, **kw)
