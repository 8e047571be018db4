"""Builders of the benchmark cases (imported only inside the benchmark subprocesses).

Every builder takes a scenario's shape as keyword arguments, builds fp32 inputs, and
returns ``step()``: one forward + backward pass. attnlab modules are imported inside
the builders, so a module that does not exist yet makes only its own scenario fail
("not available yet: <module> missing").
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F

__all__ = ["fwd_bwd", "additive_broadcast"]


# --------------------------------------------------------------------------- helpers


def _leaves(*shape_list: tuple[int, ...]) -> list[torch.Tensor]:
    return [torch.randn(*s, requires_grad=True) for s in shape_list]


def _out(result) -> torch.Tensor:
    """The output tensor of an attention call returning a tensor or ``(output, weights)``."""
    return result[0] if isinstance(result, (tuple, list)) else result


def fwd_bwd(forward: Callable[[], Any], params: list[torch.Tensor]) -> Callable[[], torch.Tensor]:
    """``step()``: clear the gradients of ``params``, run ``forward`` and backpropagate a
    fixed random output gradient (made once, so its cost is not timed)."""
    grad: list[torch.Tensor] = []

    def step() -> torch.Tensor:
        for p in params:
            p.grad = None
        out = _out(forward())
        if not grad:
            grad.append(torch.randn_like(out))
        out.backward(grad[0])
        return out.detach()

    return step



# --------------------------------------------------------------------------- sdpa


def build_sdpa_attnlab(B: int, H: int, L: int, D: int) -> Callable:
    """attnlab's MultiheadAttention core (:func:`attnlab.nn.multihead.sdpa_attention`)."""
    from attnlab.nn.multihead import sdpa_attention

    q, k, v = _leaves((B, H, L, D), (B, H, L, D), (B, H, L, D))
    return fwd_bwd(lambda: sdpa_attention(q, k, v).output, [q, k, v])


def build_sdpa_direct(B: int, H: int, L: int, D: int) -> Callable:
    """``torch.nn.functional.scaled_dot_product_attention`` called directly."""
    q, k, v = _leaves((B, H, L, D), (B, H, L, D), (B, H, L, D))
    return fwd_bwd(lambda: F.scaled_dot_product_attention(q, k, v), [q, k, v])


def build_mha_attnlab(B: int, H: int, L: int, D: int, need_weights: bool = False) -> Callable:
    """The whole :class:`attnlab.nn.MultiheadAttention` module (projections included),
    self-attention, batch-first. ``need_weights`` returns per-head weights."""
    from attnlab.nn.multihead import MultiheadAttention

    E = H * D
    mha = MultiheadAttention(E, H, batch_first=True)
    (x,) = _leaves((B, L, E))

    def forward():
        out, w = mha(x, x, x, need_weights=need_weights, average_attn_weights=False)
        if need_weights and w is None:
            raise RuntimeError("attnlab MultiheadAttention returned no weights for need_weights=True")
        return out

    return fwd_bwd(forward, [x, *mha.parameters()])


def build_mha_torch(B: int, H: int, L: int, D: int, need_weights: bool = False) -> Callable:
    """:class:`torch.nn.MultiheadAttention`, same sizes and layout as :func:`build_mha_attnlab`."""
    E = H * D
    mha = torch.nn.MultiheadAttention(E, H, batch_first=True)
    (x,) = _leaves((B, L, E))

    def forward():
        out, _ = mha(x, x, x, need_weights=need_weights, average_attn_weights=False)
        return out

    return fwd_bwd(forward, [x, *mha.parameters()])



# --------------------------------------------------------------------------- window


def build_window_attnlab(B: int, H: int, L: int, D: int, w: int) -> Callable:
    """:func:`attnlab.kernels.window.window_attention`, two-sided window ``|i - j| <= w``."""
    from attnlab.kernels.window import window_attention

    q, k, v = _leaves((B, H, L, D), (B, H, L, D), (B, H, L, D))
    return fwd_bwd(lambda: window_attention(q, k, v, w), [q, k, v])


def build_window_dense(B: int, H: int, L: int, D: int, w: int) -> Callable:
    """SDPA with a dense ``(L, L)`` bool band mask (True = may attend, SDPA's convention too)."""
    from attnlab.functional.masks import window_mask

    mask = window_mask(L, L, w)  # (L, L)
    q, k, v = _leaves((B, H, L, D), (B, H, L, D), (B, H, L, D))
    return fwd_bwd(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask), [q, k, v])


def build_window_local_attention(B: int, H: int, L: int, D: int, w: int) -> Callable:
    """The ``local-attention`` PyPI package (lucidrains): blocks of ``w`` keys, each query
    sees its own block and one on either side (so between w and 2w keys on each side,
    a superset of ``|i - j| <= w`` up to block alignment; exact_windowsize=False)."""
    from local_attention import LocalAttention

    # No ``dim``: passing it turns on the package's rotary position embedding, extra work
    # the other rows do not do.
    attn = LocalAttention(window_size=w, causal=False, look_backward=1, look_forward=1, autopad=True)
    q, k, v = _leaves((B, H, L, D), (B, H, L, D), (B, H, L, D))
    return fwd_bwd(lambda: attn(q, k, v), [q, k, v])



# --------------------------------------------------------------------------- bias


def _t5_table(H: int, num_buckets: int) -> torch.Tensor:
    return (0.1 * torch.randn(num_buckets, H)).requires_grad_()  # (num_buckets, H)


def build_bias_alibi_attnlab(B: int, H: int, L: int, D: int, num_buckets: int, max_distance: int) -> Callable:
    """:func:`attnlab.kernels.bias.biased_attention` with the ALiBi bias function."""
    from attnlab.functional.positional import alibi_slopes
    from attnlab.kernels.bias import alibi_bias_fn, biased_attention

    fn = alibi_bias_fn(alibi_slopes(H))
    q, k, v = _leaves((B, H, L, D), (B, H, L, D), (B, H, L, D))
    return fwd_bwd(lambda: biased_attention(q, k, v, fn), [q, k, v])


def build_bias_alibi_dense(B: int, H: int, L: int, D: int, num_buckets: int, max_distance: int) -> Callable:
    """SDPA with the ALiBi bias as a dense ``(H, L, L)`` float mask, built once."""
    from attnlab.functional.positional import alibi_bias

    bias = alibi_bias(H, L, L)  # (H, L, L)
    q, k, v = _leaves((B, H, L, D), (B, H, L, D), (B, H, L, D))
    return fwd_bwd(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=bias), [q, k, v])


def build_bias_t5_attnlab(B: int, H: int, L: int, D: int, num_buckets: int, max_distance: int) -> Callable:
    """:func:`attnlab.kernels.bias.biased_attention` with a learnable T5 bucket table
    (gradients flow into the table)."""
    from attnlab.kernels.bias import biased_attention, t5_bias_fn

    table = _t5_table(H, num_buckets)
    fn = t5_bias_fn(table, bidirectional=True, num_buckets=num_buckets, max_distance=max_distance)
    q, k, v = _leaves((B, H, L, D), (B, H, L, D), (B, H, L, D))
    return fwd_bwd(lambda: biased_attention(q, k, v, fn), [q, k, v, table])


def build_bias_t5_dense(B: int, H: int, L: int, D: int, num_buckets: int, max_distance: int) -> Callable:
    """SDPA with the T5 bias gathered from the table into a dense ``(H, L, L)`` float mask
    on every step (it is learnable, so it cannot be built once)."""
    from attnlab.functional.positional import t5_bias

    table = _t5_table(H, num_buckets)
    q, k, v = _leaves((B, H, L, D), (B, H, L, D), (B, H, L, D))

    def forward():
        bias = t5_bias(table, L, L, bidirectional=True, max_distance=max_distance)  # (H, L, L)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)

    return fwd_bwd(forward, [q, k, v, table])



# --------------------------------------------------------------------------- additive


def _additive_inputs(B: int, T: int, D: int, hidden: int):
    q, k, v = _leaves((B, T, D), (B, T, D), (B, T, D))
    w_q = (torch.randn(hidden, D) / math.sqrt(D)).requires_grad_()  # (hidden, Dq), nn.Linear layout
    w_k = (torch.randn(hidden, D) / math.sqrt(D)).requires_grad_()  # (hidden, Dk)
    v_att = (torch.randn(hidden) / math.sqrt(hidden)).requires_grad_()  # (hidden,)
    bias = torch.zeros(hidden, requires_grad=True)  # (hidden,)
    return q, k, v, w_q, w_k, v_att, bias


def additive_broadcast(q, k, v, w_q, w_k, v_att, bias):
    """The textbook (d2l ``AdditiveAttention`` / Keras ``AdditiveAttention``) version:
    broadcast every query against every key into a ``(B, Tq, Tk, hidden)`` tensor.

    Shape: q (B, Tq, D), k (B, Tk, D), v (B, Tk, Dv) -> (B, Tq, Dv).
    """
    pq = q @ w_q.T + bias  # (B, Tq, hidden)
    pk = k @ w_k.T  # (B, Tk, hidden)
    features = torch.tanh(pq.unsqueeze(2) + pk.unsqueeze(1))  # (B, Tq, Tk, hidden)
    scores = features @ v_att  # (B, Tq, Tk)
    return torch.softmax(scores, dim=-1) @ v  # (B, Tq, Dv)


def build_additive_attnlab(B: int, T: int, D: int, hidden: int) -> Callable:
    """:func:`attnlab.kernels.additive.additive_attention` (fused numba kernel)."""
    from attnlab.kernels.additive import additive_attention

    xs = _additive_inputs(B, T, D, hidden)
    q, k, v, w_q, w_k, v_att, bias = xs
    return fwd_bwd(lambda: additive_attention(q, k, v, w_q, w_k, v_att, bias).output, list(xs))


def build_additive_broadcast(B: int, T: int, D: int, hidden: int) -> Callable:
    xs = _additive_inputs(B, T, D, hidden)
    return fwd_bwd(lambda: additive_broadcast(*xs), list(xs))


def build_additive_compiled(B: int, T: int, D: int, hidden: int, compile_backend: str = "inductor") -> Callable:
    """``torch.compile`` of :func:`additive_broadcast` (compiled in the warm-up call)."""
    xs = _additive_inputs(B, T, D, hidden)
    fn = torch.compile(additive_broadcast, backend=compile_backend, dynamic=False)
    return fwd_bwd(lambda: fn(*xs), list(xs))



# --------------------------------------------------------------------------- normalizers


def build_normalized_attnlab(B: int, H: int, L: int, D: int, normalizer: str = "sigmoid") -> Callable:
    """:func:`attnlab.kernels.normalized.normalized_attention` (query-tiled sigmoid / ReLU)."""
    from attnlab.kernels.normalized import normalized_attention

    q, k, v = _leaves((B, H, L, D), (B, H, L, D), (B, H, L, D))
    return fwd_bwd(lambda: normalized_attention(q, k, v, normalizer).output, [q, k, v])


def build_normalized_reference(B: int, H: int, L: int, D: int, normalizer: str = "sigmoid") -> Callable:
    """:func:`attnlab.functional.attend` with the same normalizer (dense ``(L, L)`` weights)."""
    from attnlab.functional.attend import attend

    q, k, v = _leaves((B, H, L, D), (B, H, L, D), (B, H, L, D))
    return fwd_bwd(lambda: attend(q, k, v, normalizer=normalizer).output, [q, k, v])

