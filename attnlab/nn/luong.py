"""Luong attention: global and local (monotonic / predictive) with dot, general, concat scores.

Luong, Pham & Manning (2015), "Effective Approaches to Attention-based Neural Machine
Translation". The current decoder state ``h_t`` scores the source states ``h_s``:

    dot:      score(h_t, h_s) = h_t^T h_s
    general:  score(h_t, h_s) = h_t^T W_a h_s
    concat:   score(h_t, h_s) = v_a^T tanh(W_a [h_t; h_s])

    a_t(s) = softmax_s(score(h_t, h_s))       over the allowed source positions
    c_t    = sum_s a_t(s) h_s                  (the context vector)
    h~_t   = tanh(W_c [c_t; h_t])              (the attentional hidden state)

Global attention looks at every source position. Local attention looks only at the
window ``[p_t - D, p_t + D]``:

    local-m (monotonic):  p_t = t
    local-p (predictive): p_t = S * sigmoid(v_p^T tanh(W_p h_t)),  S = source length,
                          a_t(s) = softmax(...)(s) * exp(-(s - p_t)^2 / (2 sigma^2)), sigma = D / 2

This file also holds :class:`AlignmentScore`, the parameters of a named score
function, shared with :mod:`attnlab.nn.hard`.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .._checks import check_positive_int, check_tensor, fmt_shape, resolve
from ..functional.attend import AttentionResult
from ..kernels.dispatch import attention
from ..functional.masks import local_p_window
from ..functional.normalizers import softmax
from ..functional.scores import SCORES
from ._inputs import _squeeze_step, _uniform_, prepare_inputs
from .additive import _check_impl

__all__ = ["AlignmentScore", "LuongAttention", "LUONG_MODES"]


# ------------------------------------------------------------------- score parameters


def _same_dims(m: "AlignmentScore") -> None:
    if m.query_dim != m.key_dim:
        raise ValueError(
            f"score={m.name!r} needs query_dim == key_dim, got query_dim={m.query_dim}, key_dim={m.key_dim}; "
            "use score='general' or 'concat' for different sizes"
        )


def _build_dot(m: "AlignmentScore") -> None:
    _same_dims(m)


def _build_general(m: "AlignmentScore") -> None:
    m.weight = nn.Parameter(_uniform_(torch.empty(m.query_dim, m.key_dim), m.key_dim))  # W_a (Dq, Dk)


def _build_concat(m: "AlignmentScore") -> None:
    fan_in = m.query_dim + m.key_dim
    m.weight = nn.Parameter(_uniform_(torch.empty(m.hidden_dim, fan_in), fan_in))  # W_a (hidden, Dq + Dk)
    m.v = nn.Parameter(_uniform_(torch.empty(m.hidden_dim), m.hidden_dim))  # v_a (hidden,)


def _build_additive(m: "AlignmentScore") -> None:
    m.w_q = nn.Parameter(_uniform_(torch.empty(m.hidden_dim, m.query_dim), m.query_dim))
    m.w_k = nn.Parameter(_uniform_(torch.empty(m.hidden_dim, m.key_dim), m.key_dim))
    m.bias = nn.Parameter(_uniform_(torch.empty(m.hidden_dim), m.query_dim))
    m.v = nn.Parameter(_uniform_(torch.empty(m.hidden_dim), m.hidden_dim))


# Which parameters each named score of attnlab.functional.scores takes (keyword names
# of that function), and how to create them.
_SCORE_PARAMS: dict[str, tuple[Callable, tuple[str, ...]]] = {
    "dot": (_build_dot, ()),
    "scaled_dot": (_build_dot, ()),
    "general": (_build_general, ("weight",)),
    "concat": (_build_concat, ("weight", "v")),
    "additive": (_build_additive, ("w_q", "w_k", "v", "bias")),
}


class AlignmentScore(nn.Module):
    """The learned parameters of one named score of :mod:`attnlab.functional.scores`.

    It does not compute scores itself: :meth:`kwargs` gives the ``score_kwargs`` to
    pass with ``score=self.name`` to :func:`attnlab.functional.attend`.

    Args:
        score: "dot", "scaled_dot" (no parameters; need ``query_dim == key_dim``),
            "general" (``weight`` (Dq, Dk)), "concat" (``weight`` (hidden, Dq + Dk),
            ``v`` (hidden,)), "additive" (``w_q``, ``w_k``, ``bias``, ``v``), or a
            parameter-free callable ``f(q, k) -> (..., Tq, Tk)``.
        query_dim, key_dim: sizes ``Dq``, ``Dk``.
        hidden_dim: hidden size of "concat"/"additive" (default ``query_dim``).
        allowed: restrict the names (e.g. Luong's three).
    """

    def __init__(self, score, query_dim: int, key_dim: int, hidden_dim: int | None = None, *, allowed=None):
        super().__init__()
        self.query_dim = check_positive_int(query_dim, "query_dim")
        self.key_dim = check_positive_int(key_dim, "key_dim")
        self.hidden_dim = query_dim if hidden_dim is None else check_positive_int(hidden_dim, "hidden_dim")
        registry = {n: SCORES[n] for n in (allowed or _SCORE_PARAMS)}
        if callable(score):
            self.name, self.fn, self._param_names = getattr(score, "__name__", "callable"), score, ()
            return
        self.fn = resolve(registry, score, "score")
        self.name = score
        build, self._param_names = _SCORE_PARAMS[score]
        build(self)

    def kwargs(self) -> dict:
        """The ``score_kwargs`` for :func:`attend` (the live parameters)."""
        return {n: getattr(self, n) for n in self._param_names}

    def extra_repr(self) -> str:
        return f"{self.name!r}, query_dim={self.query_dim}, key_dim={self.key_dim}, hidden_dim={self.hidden_dim}"


# ------------------------------------------------------------------------ window modes
#
# A mode maps (module, query (B, Tq, Dq), Tk, mask, query_positions, single step?) to
# (window mask (B, Tq, Tk) or None, multiplicative factor (B, Tq, Tk) or None).


def _mode_global(m, q, Tk, mask, query_positions, single):
    if query_positions is not None:
        raise ValueError("query_positions is only used by mode='local-m'; got it with mode='global'")
    return None, None


def _positions(query_positions, B: int, Tq: int, single: bool, device) -> torch.Tensor:
    """Target positions ``t`` of the queries as a float (B, Tq) tensor."""
    if query_positions is None:
        query_positions = 0
    if isinstance(query_positions, int) and not isinstance(query_positions, bool):
        # An int is the position of the first query (a decoder loop passes its step).
        pos = torch.arange(Tq, device=device) + query_positions  # (Tq,)
        return pos.float().expand(B, Tq)
    if not isinstance(query_positions, torch.Tensor):
        raise TypeError(f"query_positions must be an int or a tensor, got {type(query_positions).__name__}")
    pos = query_positions
    if single and pos.dim() == 1 and pos.shape[0] == B:
        pos = pos.unsqueeze(-1)  # (B,) -> (B, 1)
    if pos.dim() > 2 or not all(s in (1, t) for s, t in zip(reversed(pos.shape), (Tq, B))):
        raise ValueError(
            f"query_positions must broadcast to (B, Tq) = {fmt_shape((B, Tq))}, got {fmt_shape(query_positions.shape)}"
        )
    return pos.to(device=device, dtype=torch.float32).expand(B, Tq)


def _mode_local_m(m, q, Tk, mask, query_positions, single):
    B, Tq = q.shape[0], q.shape[1]
    p = _positions(query_positions, B, Tq, single, q.device)  # (B, Tq)
    # local_p_window's mask is |s - p_t| <= D for any (B, Tq) centres; local-m uses
    # the mask alone (no Gaussian), as in Luong et al.
    window, _ = local_p_window(p, Tk, m.window)  # (B, Tq, Tk)
    return window, None


def _mode_local_p(m, q, Tk, mask, query_positions, single):
    if query_positions is not None:
        raise ValueError("query_positions is only used by mode='local-m'; mode='local-p' predicts its centres")
    B, Tq = q.shape[0], q.shape[1]
    gate = m.v_p(torch.tanh(m.w_p(q))).squeeze(-1)  # (B, Tq)
    # Positions up to Tk need more precision than bf16/fp16 has (0.25 steps near 50).
    gate = gate.float() if gate.dtype in (torch.float16, torch.bfloat16) else gate
    if mask is None:
        S = torch.full((B, Tq), float(Tk), device=q.device, dtype=gate.dtype)  # (B, Tq)
    else:
        # Source length per batch element (and query): the number of keys it may see.
        S = mask.expand(B, Tq, Tk).sum(-1).to(gate.dtype)  # (B, Tq)
    centers = S * torch.sigmoid(gate)  # p_t in [0, S], (B, Tq)
    window, gaussian = local_p_window(centers, Tk, m.window)  # each (B, Tq, Tk)
    return window, gaussian


LUONG_MODES = {"global": _mode_global, "local-m": _mode_local_m, "local-p": _mode_local_p}


def _softmax_times(scores, mask=None, dim=-1, *, factor):
    """Softmax over the allowed positions, then times ``factor`` (local-p's Gaussian)."""
    return softmax(scores, mask=mask, dim=dim) * factor.to(scores.dtype)


# ------------------------------------------------------------------------------ module


class LuongAttention(nn.Module):
    r"""Luong global / local attention with a "dot", "general" or "concat" score.

    See the module docstring for the equations (Luong, Pham & Manning 2015).

    The attentional hidden state ``h~_t = tanh(W_c [c_t; h_t])`` is a separate method,
    :meth:`combine`, rather than an option of :meth:`forward`: every attention module
    of :mod:`attnlab.nn` returns ``(context, weights)``, and a decoder with input
    feeding needs ``c_t`` and ``h~_t`` at different places anyway.

    Args:
        query_dim: size ``Dq`` of a decoder state ``h_t``.
        key_dim: size ``Dk`` of a source state ``h_s``.
        score: "dot" (needs ``query_dim == key_dim``), "general" or "concat".
        mode: "global", "local-m" (window centred at the target position ``t``) or
            "local-p" (window centred at a predicted ``p_t``, Gaussian-weighted).
        window: half width ``D`` >= 0 of the local window (ignored by "global").
        hidden_dim: hidden size of the "concat" score and of the local-p centre
            predictor (default ``query_dim``).
        attentional_dim: if given, create ``W_c`` (attentional_dim, Dv + Dq) for
            :meth:`combine`.
        value_dim: size ``Dv`` of the values (default ``key_dim``); only used by ``W_c``.
        impl: "auto" (default: :func:`attnlab.kernels.dispatch.attention` picks SDPA for
            dot/general, the fused additive kernel for concat, the reference for
            local-p's Gaussian) or "reference"; ``forward(impl=...)`` overrides it.

    Shape:
        query (B, Tq, Dq) or (B, Dq) for one decoder step; keys (B, Tk, Dk); values
        (B, Tk, Dv); mask bool broadcastable to (B, Tq, Tk) (a single step also takes
        (B, Tk)); query_positions (local-m) an int (position of the first query;
        default 0) or a tensor broadcastable to (B, Tq) ((B,) for a single step)
        -> output (B, Tq, Dv), weights (B, Tq, Tk); no Tq axis for a single step.

    local-p takes the source length ``S`` as the number of keys the mask allows
    (``Tk`` without a mask). Local weights are exactly zero outside the window; a
    window that holds no allowed key gives a zero context.
    """

    def __init__(
        self,
        query_dim: int,
        key_dim: int,
        score="dot",
        mode: str = "global",
        window: int = 10,
        hidden_dim: int | None = None,
        attentional_dim: int | None = None,
        value_dim: int | None = None,
        *,
        impl: str = "auto",
    ):
        super().__init__()
        self.impl = _check_impl(impl)
        self.query_dim = check_positive_int(query_dim, "query_dim")
        self.key_dim = check_positive_int(key_dim, "key_dim")
        self.score = AlignmentScore(score, query_dim, key_dim, hidden_dim, allowed=("dot", "general", "concat"))
        if not isinstance(mode, str) or mode not in LUONG_MODES:
            raise ValueError(f"unknown mode {mode!r}; valid modes: {', '.join(LUONG_MODES)}")
        self.mode = mode
        self.window = check_positive_int(window, "window", allow_zero=True)
        hidden = self.score.hidden_dim
        if mode == "local-p":
            self.w_p = nn.Linear(query_dim, hidden, bias=False)  # W_p
            self.v_p = nn.Linear(hidden, 1, bias=False)  # v_p
        self.value_dim = key_dim if value_dim is None else check_positive_int(value_dim, "value_dim")
        self.attentional_dim = None if attentional_dim is None else check_positive_int(attentional_dim, "attentional_dim")
        if attentional_dim is not None:
            self.w_c = nn.Linear(self.value_dim + query_dim, attentional_dim, bias=False)  # W_c

    def forward(
        self,
        query: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor | None = None,
        *,
        mask: torch.Tensor | None = None,
        query_positions=None,
        need_weights: bool = False,
        impl: str | None = None,
    ) -> AttentionResult:
        """Context vectors ``c_t`` (and weights ``a_t``); see the class docstring.

        Returns:
            ``AttentionResult(output, weights)``; ``weights`` is ``None`` unless asked.
        """
        q, values, mask, single = prepare_inputs(self, query, keys, values, mask)
        Tk = keys.shape[1]
        window, factor = LUONG_MODES[self.mode](self, q, Tk, mask, query_positions, single)
        if window is not None:
            mask = window if mask is None else mask & window  # (B, Tq, Tk)
        result = attention(
            q,
            keys,
            values,
            impl=self.impl if impl is None else _check_impl(impl),
            caller=f"LuongAttention({self.score.name}, {self.mode})",
            score=self.score.fn,
            score_kwargs=self.score.kwargs(),
            normalizer="softmax" if factor is None else _softmax_times,
            normalizer_kwargs=None if factor is None else {"factor": factor},
            mask=mask,
            need_weights=need_weights,
        )
        return _squeeze_step(result, single)

    def combine(self, context: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """The attentional hidden state ``h~_t = tanh(W_c [c_t; h_t])``.

        Needs ``attentional_dim`` at construction.

        Shape: context (..., Dv), query (..., Dq) -> (..., attentional_dim).
        """
        if self.attentional_dim is None:
            raise ValueError("combine needs W_c: construct LuongAttention with attentional_dim=<size of h~_t>")
        check_tensor(context, "context")
        check_tensor(query, "query")
        if context.shape[-1] != self.value_dim or query.shape[-1] != self.query_dim or context.shape[:-1] != query.shape[:-1]:
            raise ValueError(
                f"context and query must be (..., value_dim={self.value_dim}) and (..., query_dim={self.query_dim}) "
                f"with the same leading dims, got context {fmt_shape(context.shape)}, query {fmt_shape(query.shape)}"
            )
        return torch.tanh(self.w_c(torch.cat([context, query], dim=-1)))  # (..., attentional_dim)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, window={self.window}, attentional_dim={self.attentional_dim}, impl={self.impl!r}"
