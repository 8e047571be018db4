"""Input handling shared by the RNN-era attention modules (additive, Luong, hard).

They all take a decoder query ``(B, Tq, Dq)`` or a single step ``(B, Dq)``, encoder
keys ``(B, Tk, Dk)``, optional values, and a bool mask (True = may attend).
"""

from __future__ import annotations

import math

import torch

from .._checks import check_bool_mask, check_nonempty, check_tensor, fmt_shape
from ..functional.attend import AttentionResult

def _as_query_seq(query, query_dim: int) -> tuple[torch.Tensor, bool]:
    """Accept ``(B, Tq, query_dim)`` or one decoder step ``(B, query_dim)``.

    Returns the query as ``(B, Tq, query_dim)`` and whether it was a single step (so
    the caller squeezes ``Tq`` back out of its results).
    """
    check_tensor(query, "query", min_ndim=2)
    if query.dim() not in (2, 3) or query.shape[-1] != query_dim:
        raise ValueError(
            f"query must have shape (B, Tq, query_dim={query_dim}) or (B, query_dim={query_dim}) "
            f"for one decoder step, got {fmt_shape(query.shape)}"
        )
    single = query.dim() == 2
    q = query.unsqueeze(1) if single else query  # (B, Tq, Dq)
    check_nonempty(q, "query", 1, "query axis Tq")
    return q, single


def _check_seq(x, name: str, dim: int | None, dim_name: str, *, batch: int | None = None, length: int | None = None):
    """``x`` must be ``(B, T, dim)`` (``dim=None``: any feature size), matching ``batch``/``length``."""
    check_tensor(x, name, min_ndim=3)
    want = f"(B, T, {dim_name}={dim})" if dim is not None else "(B, T, D)"
    if x.dim() != 3 or (dim is not None and x.shape[-1] != dim):
        raise ValueError(f"{name} must have shape {want}, got {fmt_shape(x.shape)}")
    if batch is not None and x.shape[0] != batch:
        raise ValueError(f"{name} must have batch size B={batch} (that of query), got {fmt_shape(x.shape)}")
    if length is not None and x.shape[1] != length:
        raise ValueError(f"{name} must have T={length} positions (that of keys), got {fmt_shape(x.shape)}")
    check_nonempty(x, name, 1, "sequence axis")


def _prepare_mask(mask, single: bool, target) -> torch.Tensor | None:
    """Validate a bool mask (True = may attend) against ``target = (B, Tq, Tk)``.

    For a single decoder step the natural mask is ``(B, Tk)``; it is read as
    ``(B, 1, Tk)``. For a query sequence the mask broadcasts as usual, so a 2-D mask
    there means ``(Tq, Tk)`` (e.g. causal).
    """
    if mask is None:
        return None
    if single and isinstance(mask, torch.Tensor) and mask.dim() == 2:
        mask = mask.unsqueeze(-2)  # (B, Tk) -> (B, 1, Tk)
    check_bool_mask(mask, "mask", target, "the scores (B, Tq, Tk)")
    return mask


def _squeeze_step(result: AttentionResult, single: bool) -> AttentionResult:
    if not single:
        return result
    out, w = result
    return AttentionResult(out.squeeze(1), None if w is None else w.squeeze(1))  # (B, Dv), (B, Tk)


def _uniform_(t: torch.Tensor, fan_in: int) -> torch.Tensor:
    # nn.Linear's default scale. (Bahdanau et al. start v at 0, which makes every
    # gradient to W_q and W_k vanish at the first step; a small uniform v does not.)
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        return t.uniform_(-bound, bound)



def prepare_inputs(module, query, keys, values, mask, value_dim: int | None = None):
    """Validate query/keys/values/mask for a module with ``query_dim``/``key_dim``.

    Returns ``(q (B, Tq, Dq), values (B, Tk, Dv), mask or None, single)`` where
    ``single`` says the query was one decoder step (its Tq axis is squeezed back out).
    """
    q, single = _as_query_seq(query, module.query_dim)  # (B, Tq, Dq)
    B, Tq = q.shape[0], q.shape[1]
    _check_seq(keys, "keys", module.key_dim, "key_dim", batch=B)
    Tk = keys.shape[1]
    if values is None:
        values = keys
    _check_seq(values, "values", value_dim, "value_dim", batch=B, length=Tk)
    return q, values, _prepare_mask(mask, single, (B, Tq, Tk)), single
