"""Additive (Bahdanau) attention as a module.

Bahdanau, Cho & Bengio (2014), "Neural Machine Translation by Jointly Learning to
Align and Translate": the decoder state ``s_{i-1}`` scores every encoder annotation
``h_j`` with a one-hidden-layer network,

    e_ij = v^T tanh(W_q s_{i-1} + W_k h_j + b),    a_ij = softmax_j(e_ij),
    c_i  = sum_j a_ij h_j.

This file also holds the small input checks shared by the modules of
:mod:`attnlab.nn` that accept a single decoder step ``(B, D)`` as well as a
sequence of queries ``(B, Tq, D)``.
"""

from __future__ import annotations

import torch
from torch import nn

from .._checks import check_positive_int
from ..functional.attend import AttentionResult, attend
from ..kernels.dispatch import PATHS, attention, record_path
from ..functional.scores import additive_score_from_projections
from ._inputs import _check_seq, _squeeze_step, _uniform_, prepare_inputs

__all__ = ["AdditiveAttention"]


def _additive_score_projected(q, pk, *, w_q, v, bias):
    """``v^T tanh(W_q q + b + pk)`` where ``pk = W_k k`` was computed once beforehand.

    The same equation as :func:`attnlab.functional.scores.additive_score` with its
    key projection taken out, so a decoder loop does not redo ``W_k k`` every step.

    Shape: q (B, Tq, Dq), pk (B, Tk, hidden) -> (B, Tq, Tk).
    """
    pq = q @ w_q.transpose(0, 1) + bias  # (B, Tq, hidden)
    return additive_score_from_projections(pq, pk, v)  # (B, Tq, Tk)


# ------------------------------------------------------------------------------ module


class AdditiveAttention(nn.Module):
    r"""Bahdanau additive attention.

    .. math::
        e_{ij} = v^\top \tanh(W_q q_i + W_k k_j + b), \quad
        a_{ij} = \mathrm{softmax}_j(e_{ij}), \quad c_i = \sum_j a_{ij} v_j

    Bahdanau, Cho & Bengio (2014). ``q_i`` is the previous decoder state ``s_{i-1}``,
    ``k_j = v_j`` the encoder annotations ``h_j`` unless ``values`` are given.
    Parameters are initialised like ``nn.Linear`` (not the paper's ``v = 0``, which
    blocks the first gradients to ``W_q``/``W_k``).

    Args:
        query_dim: size ``Dq`` of a query (decoder state).
        key_dim: size ``Dk`` of a key (encoder annotation).
        hidden_dim: size of the alignment network's hidden layer.
        value_dim: if given, ``values`` must have this last size (checked). ``None``:
            any size (values default to the keys).
        impl: "auto" (default: the fused kernel :func:`attnlab.kernels.additive_attention`
            via :func:`attnlab.kernels.dispatch.attention`) or "reference"
            (:func:`attnlab.functional.attend`); ``forward(impl=...)`` overrides it.

    Parameters: ``w_q`` (hidden, Dq), ``w_k`` (hidden, Dk), ``bias`` (hidden,),
    ``v`` (hidden,).

    Shape:
        query (B, Tq, Dq), or (B, Dq) for one decoder step; keys (B, Tk, Dk);
        values (B, Tk, Dv); mask bool broadcastable to (B, Tq, Tk) (for a single step
        also (B, Tk)) -> output (B, Tq, Dv) and weights (B, Tq, Tk), without the Tq
        axis for a single step.
    """

    def __init__(
        self, query_dim: int, key_dim: int, hidden_dim: int, value_dim: int | None = None, *, impl: str = "auto"
    ):
        super().__init__()
        self.impl = _check_impl(impl)
        self.query_dim = check_positive_int(query_dim, "query_dim")
        self.key_dim = check_positive_int(key_dim, "key_dim")
        self.hidden_dim = check_positive_int(hidden_dim, "hidden_dim")
        self.value_dim = None if value_dim is None else check_positive_int(value_dim, "value_dim")
        self.w_q = nn.Parameter(torch.empty(hidden_dim, query_dim))
        self.w_k = nn.Parameter(torch.empty(hidden_dim, key_dim))
        self.bias = nn.Parameter(torch.empty(hidden_dim))
        self.v = nn.Parameter(torch.empty(hidden_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _uniform_(self.w_q, self.query_dim)
        _uniform_(self.w_k, self.key_dim)
        _uniform_(self.bias, self.query_dim)
        _uniform_(self.v, self.hidden_dim)

    def precompute_keys(self, keys: torch.Tensor) -> torch.Tensor:
        """``W_k k`` for every key, computed once before a decoder loop.

        Pass the result as ``projected_keys=`` to every :meth:`forward` call of the
        loop (with the same ``keys``); it saves ``Tk * hidden * Dk`` multiply-adds per step.

        Shape: keys (B, Tk, Dk) -> (B, Tk, hidden).
        """
        _check_seq(keys, "keys", self.key_dim, "key_dim")
        return keys @ self.w_k.transpose(0, 1)  # (B, Tk, hidden)

    def forward(
        self,
        query: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor | None = None,
        *,
        mask: torch.Tensor | None = None,
        need_weights: bool = False,
        projected_keys: torch.Tensor | None = None,
        impl: str | None = None,
    ) -> AttentionResult:
        """Attend from ``query`` over ``keys``; see the class docstring for shapes.

        Args:
            query: decoder state(s) ``s_{i-1}``.
            keys: encoder annotations ``h_j``.
            values: what is averaged; defaults to ``keys``.
            mask: bool, True = may attend.
            need_weights: also return the weights ``a_ij``.
            projected_keys: :meth:`precompute_keys` of these ``keys`` (always the
                reference path: the fused kernel projects the keys itself).
            impl: override ``self.impl`` for this call.

        Returns:
            ``AttentionResult(output, weights)``; ``weights`` is ``None`` unless asked.
        """
        q, values, mask, single = prepare_inputs(self, query, keys, values, mask, self.value_dim)
        B, Tk = q.shape[0], keys.shape[1]
        impl = self.impl if impl is None else _check_impl(impl)
        if projected_keys is None:
            result = attention(
                q,
                keys,
                values,
                score="additive",
                score_kwargs=dict(w_q=self.w_q, w_k=self.w_k, v=self.v, bias=self.bias),
                mask=mask,
                need_weights=need_weights,
                impl=impl,
                caller="AdditiveAttention",
            )
        else:
            record_path("AdditiveAttention", "reference", "projected_keys given")
            _check_seq(projected_keys, "projected_keys", self.hidden_dim, "hidden_dim", batch=B, length=Tk)
            result = attend(
                q,
                projected_keys,
                values,
                score=_additive_score_projected,
                score_kwargs=dict(w_q=self.w_q, v=self.v, bias=self.bias),
                mask=mask,
                need_weights=need_weights,
            )
        return _squeeze_step(result, single)

    def extra_repr(self) -> str:
        return (
            f"query_dim={self.query_dim}, key_dim={self.key_dim}, hidden_dim={self.hidden_dim}, "
            f"value_dim={self.value_dim}, impl={self.impl!r}"
        )


def _check_impl(impl) -> str:
    """``impl`` of the dispatching modules: "auto", "reference" or a path of
    :data:`attnlab.kernels.dispatch.PATHS`."""
    if not isinstance(impl, str) or (impl != "auto" and impl not in PATHS):
        raise ValueError(f"unknown impl {impl!r}; valid impls: auto, {', '.join(PATHS)}")
    return impl
