"""Self- and cross-attention modules (single head).

- :class:`SimpleSelfAttention`: no parameters, ``softmax(X X^T) X`` (the weight-free
  form textbooks start from, e.g. Raschka's "Build a Large Language Model (From
  Scratch)" ch. 3 and d2l.ai; unscaled there).
- :class:`SelfAttention`: ``softmax(Q K^T / sqrt(d_qk)) V`` with ``Q = X W_q``,
  ``K = X W_k``, ``V = X W_v`` (Vaswani et al. 2017, one head).
- :class:`CrossAttention`: the same with queries from one sequence and keys/values
  from another (the encoder-decoder attention of Vaswani et al. 2017).

None of them adds positional information: without it self-attention is permutation
equivariant (permuting the rows of ``X`` permutes the rows of the output). Add
positional encodings to ``X`` before, as the models do.
"""

from __future__ import annotations

import torch
from torch import nn

from .._checks import check_positive_int, check_probability, resolve
from ..functional.attend import AttentionResult
from ..kernels.dispatch import attention
from ..functional.masks import causal_mask
from ..functional.normalizers import get_normalizer
from ..functional.scores import SCORES
from ._inputs import _check_seq, _prepare_mask
from .additive import _check_impl

__all__ = ["SimpleSelfAttention", "SelfAttention", "CrossAttention"]

# The scores a parameter-free projection-based attention may use (others own weights;
# see attnlab.nn.luong.AlignmentScore).
_PLAIN_SCORES = {"dot": SCORES["dot"], "scaled_dot": SCORES["scaled_dot"]}


def _with_causal(mask, is_causal: bool, T: int, device):
    if not isinstance(is_causal, bool):
        raise TypeError(f"is_causal must be a bool, got {type(is_causal).__name__}")
    if not is_causal:
        return mask
    causal = causal_mask(T, device=device)  # (T, T)
    return causal if mask is None else mask & causal  # (B, T, T) or (T, T)


class SimpleSelfAttention(nn.Module):
    r"""Weight-free self-attention: every token is its own query, key and value.

    .. math:: \mathrm{output} = \mathrm{softmax}(X X^\top \cdot s)\, X,
        \quad s = 1 \text{ (default, as in the textbooks) or } 1/\sqrt{d}

    Args:
        scale: ``False`` (default): no scaling, as the textbooks write it; ``True``:
            divide the scores by ``sqrt(d)``.

    Shape:
        x (B, T, D); mask bool broadcastable to (B, T, T) -> output (B, T, D),
        weights (B, T, T).
    """

    def __init__(self, scale: bool = False, *, impl: str = "auto"):
        super().__init__()
        if not isinstance(scale, bool):
            raise TypeError(f"scale must be a bool, got {type(scale).__name__}")
        self.scale = scale
        self.impl = _check_impl(impl)

    def forward(
        self,
        x: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
        need_weights: bool = False,
        impl: str | None = None,
    ) -> AttentionResult:
        """Returns ``AttentionResult(output, weights)``; weights only if ``need_weights``."""
        _check_seq(x, "x", None, "D")
        B, T, _ = x.shape
        mask = _with_causal(_prepare_mask(mask, False, (B, T, T)), is_causal, T, x.device)
        return attention(
            x, x, x, score="scaled_dot" if self.scale else "dot", mask=mask, need_weights=need_weights,
            impl=self.impl if impl is None else _check_impl(impl), caller="SimpleSelfAttention",
        )  # fmt: skip

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


class _ProjectedAttention(nn.Module):
    """Shared body: project queries, keys and values, then one call to :func:`attend`."""

    def __init__(self, query_dim, kv_dim, d_qk, d_v, bias, score, normalizer, normalizer_kwargs, dropout, dim_names, impl):
        super().__init__()
        self.impl = _check_impl(impl)
        self.query_dim = check_positive_int(query_dim, dim_names[0])
        self.kv_dim = check_positive_int(kv_dim, dim_names[1])
        self.d_qk = check_positive_int(d_qk, "d_qk")
        self.d_v = d_qk if d_v is None else check_positive_int(d_v, "d_v")
        if not isinstance(bias, bool):
            raise TypeError(f"bias must be a bool, got {type(bias).__name__}")
        self.score = resolve(_PLAIN_SCORES, score, "score")
        self.normalizer = get_normalizer(normalizer)
        self.normalizer_kwargs = dict(normalizer_kwargs or {})
        self.dropout = check_probability(dropout, "dropout")
        self.w_q = nn.Linear(query_dim, self.d_qk, bias=bias)  # W_q
        self.w_k = nn.Linear(kv_dim, self.d_qk, bias=bias)  # W_k
        self.w_v = nn.Linear(kv_dim, self.d_v, bias=bias)  # W_v

    def _attend(self, x_q, x_kv, mask, need_weights, generator, impl) -> AttentionResult:
        q = self.w_q(x_q)  # (B, Tq, d_qk)
        k = self.w_k(x_kv)  # (B, Tk, d_qk)
        v = self.w_v(x_kv)  # (B, Tk, d_v)
        return attention(
            q,
            k,
            v,
            score=self.score,
            normalizer=self.normalizer,
            normalizer_kwargs=self.normalizer_kwargs,
            mask=mask,
            dropout_p=self.dropout,
            training=self.training,
            need_weights=need_weights,
            generator=generator,
            impl=self.impl if impl is None else _check_impl(impl),
            caller=type(self).__name__,
        )

    def extra_repr(self) -> str:
        name = getattr(self.score, "__name__", "callable")
        return f"d_qk={self.d_qk}, d_v={self.d_v}, score={name}, dropout={self.dropout}, impl={self.impl!r}"


class SelfAttention(_ProjectedAttention):
    r"""Single-head self-attention with learned projections.

    .. math::
        Q = X W_q,\ K = X W_k,\ V = X W_v, \quad
        \mathrm{output} = \mathrm{normalize}(Q K^\top / \sqrt{d_{qk}})\, V

    Vaswani et al. (2017), one head. ``d_qk`` and ``d_v`` may differ.

    Args:
        d_model: size of an input row of ``X``.
        d_qk: size of queries and keys.
        d_v: size of values and of the output (default ``d_qk``).
        bias: give the three projections a bias.
        score: "scaled_dot" (default) or "dot", or a parameter-free callable.
        normalizer: a name of :data:`attnlab.functional.normalizers.NORMALIZERS` or a callable.
        normalizer_kwargs: extra arguments of the normalizer (e.g. ``tau`` for "gumbel").
        dropout: dropout on the attention weights in training mode.
        impl: "auto" (default: :func:`attnlab.kernels.dispatch.attention` picks SDPA for
            softmax, the tiled kernel for sigmoid/relu, else the reference) or
            "reference"; ``forward(impl=...)`` overrides it.

    Shape:
        x (B, T, d_model); mask bool broadcastable to (B, T, T) -> output (B, T, d_v),
        weights (B, T, T).
    """

    def __init__(
        self,
        d_model: int,
        d_qk: int,
        d_v: int | None = None,
        *,
        bias: bool = False,
        score="scaled_dot",
        normalizer="softmax",
        normalizer_kwargs: dict | None = None,
        dropout: float = 0.0,
        impl: str = "auto",
    ):
        super().__init__(
            d_model, d_model, d_qk, d_v, bias, score, normalizer, normalizer_kwargs, dropout, ("d_model", "d_model"), impl
        )
        self.d_model = d_model

    def forward(
        self,
        x: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
        need_weights: bool = False,
        generator: torch.Generator | None = None,
        impl: str | None = None,
    ) -> AttentionResult:
        """Returns ``AttentionResult(output, weights)``; weights only if ``need_weights``.

        ``is_causal=True`` lets row ``i`` see rows ``j <= i`` (combined with ``mask``).
        ``generator`` seeds dropout (and then selects the reference path, whose noise
        it drives). ``impl`` overrides ``self.impl`` for this call.
        """
        _check_seq(x, "x", self.d_model, "d_model")
        B, T, _ = x.shape
        mask = _with_causal(_prepare_mask(mask, False, (B, T, T)), is_causal, T, x.device)
        return self._attend(x, x, mask, need_weights, generator, impl)


class CrossAttention(_ProjectedAttention):
    r"""Single-head cross-attention: queries from ``x``, keys and values from ``context``.

    .. math::
        Q = X W_q,\ K = C W_k,\ V = C W_v, \quad
        \mathrm{output} = \mathrm{normalize}(Q K^\top / \sqrt{d_{qk}})\, V

    Vaswani et al. (2017), encoder-decoder attention, one head.

    Args:
        query_dim: size of a row of ``x``.
        kv_dim: size of a row of ``context``.
        d_qk, d_v, bias, score, normalizer, normalizer_kwargs, dropout, impl: as :class:`SelfAttention`.

    Shape:
        x (B, Tq, query_dim), context (B, Tk, kv_dim); mask bool broadcastable to
        (B, Tq, Tk) (e.g. (B, 1, Tk) for key padding) -> output (B, Tq, d_v),
        weights (B, Tq, Tk).
    """

    def __init__(
        self,
        query_dim: int,
        kv_dim: int,
        d_qk: int,
        d_v: int | None = None,
        *,
        bias: bool = False,
        score="scaled_dot",
        normalizer="softmax",
        normalizer_kwargs: dict | None = None,
        dropout: float = 0.0,
        impl: str = "auto",
    ):
        super().__init__(
            query_dim, kv_dim, d_qk, d_v, bias, score, normalizer, normalizer_kwargs, dropout, ("query_dim", "kv_dim"), impl
        )

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        need_weights: bool = False,
        generator: torch.Generator | None = None,
        impl: str | None = None,
    ) -> AttentionResult:
        """Returns ``AttentionResult(output, weights)``; weights only if ``need_weights``."""
        _check_seq(x, "x", self.query_dim, "query_dim")
        B, Tq, _ = x.shape
        _check_seq(context, "context", self.kv_dim, "kv_dim", batch=B)
        mask = _prepare_mask(mask, False, (B, Tq, context.shape[1]))
        return self._attend(x, context, mask, need_weights, generator, impl)
