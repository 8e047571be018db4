"""Ring (context-parallel) attention: the sequence split across ranks.

Each of ``W`` ranks holds one shard of the sequence: its queries, keys and values. The
queries stay where they are; the key/value blocks travel around the ring (rank ``r``
sends to ``r + 1`` and receives from ``r - 1``), so after ``W`` steps every query block
has met every key block while no rank ever holds more than two key/value blocks.
Partial results are merged exactly with the log-sum-exp of each block (Milakov &
Gimelshein 2018, "Online normalizer calculation for softmax"; Liu, Zaharia & Abbeel 2023,
"Ring Attention with Blockwise Transformers for Near-Infinite Context"):

    lse   = logaddexp(lse_a, lse_b)
    out   = exp(lse_a - lse) * out_a + exp(lse_b - lse) * out_b

Backward is the flash-attention backward (Dao et al. 2022) run block by block with the
saved global ``lse``: ``P = exp(S - lse)``, ``D = rowsum(dO * O)``,
``dS = P * (dO V^T - D)``; ``dQ`` stays on its rank, ``dK``/``dV`` accumulators travel
around the ring with their key/value block and arrive home after one more hop.

Causal attention with a contiguous split would leave rank 0 almost idle (its queries see
only its own keys) and the last rank doing ``W`` blocks. The zig-zag split (used by
Megatron-LM's context parallelism and ``ring-flash-attention``) cuts the sequence into
``2W`` chunks and gives rank ``r`` the chunks ``r`` and ``2W - 1 - r``; every rank then
computes the same number of (query chunk, key chunk) pairs. :func:`zigzag_shard` and
:func:`zigzag_unshard` split a full sequence that way and put it back.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.distributed as dist

from .._checks import check_positive_int, check_tensor, fmt_shape, mask_fill_value

__all__ = ["ring_attention", "zigzag_shard", "zigzag_unshard", "zigzag_positions"]


# --------------------------------------------------------------------------- zig-zag layout


def _check_zigzag(x: torch.Tensor, name: str, world: int, dim: int) -> int:
    n = x.shape[dim]
    if n % (2 * world):
        raise ValueError(
            f"{name} has {n} positions along dim {dim} (shape {fmt_shape(x.shape)}); the zig-zag split "
            f"needs a multiple of 2 * world = {2 * world}"
        )
    return n // (2 * world)


def zigzag_shard(x: torch.Tensor, rank: int, world: int, dim: int = -2) -> torch.Tensor:
    """Rank ``rank``'s zig-zag shard of a full sequence: chunks ``rank`` and ``2W-1-rank``.

    Shape:
        x (..., T, ...) along ``dim`` -> (..., 2 T / (2W), ...), ``T`` a multiple of ``2W``.
    """
    check_positive_int(world, "world")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world:
        raise ValueError(f"rank must be an int in [0, world={world}), got {rank!r}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    c = _check_zigzag(x, "x", world, dim)
    first = x.narrow(dim, rank * c, c)
    second = x.narrow(dim, (2 * world - 1 - rank) * c, c)
    return torch.cat([first, second], dim=dim)


def zigzag_unshard(shards: Sequence[torch.Tensor], dim: int = -2) -> torch.Tensor:
    """Inverse of :func:`zigzag_shard`: the full sequence from every rank's shard, in rank order.

    Shape:
        W shards (..., 2c, ...) -> (..., 2 W c, ...).
    """
    if not isinstance(shards, (list, tuple)) or not shards:
        raise ValueError("shards must be a non-empty list of tensors, one per rank in rank order")
    world = len(shards)
    n = shards[0].shape[dim]
    for r, s in enumerate(shards):
        if s.shape != shards[0].shape:
            raise ValueError(f"shards[{r}] has shape {fmt_shape(s.shape)}, shards[0] {fmt_shape(shards[0].shape)}; they must match")
    if n % 2:
        raise ValueError(f"each shard must hold two chunks (an even length along dim {dim}), got {n}")
    c = n // 2
    chunks: list[torch.Tensor | None] = [None] * (2 * world)
    for r, s in enumerate(shards):
        chunks[r] = s.narrow(dim, 0, c)
        chunks[2 * world - 1 - r] = s.narrow(dim, c, c)
    return torch.cat(chunks, dim=dim)


def zigzag_positions(rank: int, world: int, local_len: int) -> torch.Tensor:
    """Global positions (int64, ``(local_len,)``) of the tokens of rank ``rank``'s zig-zag
    shard: what positional encodings (RoPE, sinusoidal) must be given on that rank."""
    if local_len % 2:
        raise ValueError(f"local_len must be even (two chunks per rank), got {local_len}")
    c = local_len // 2
    return torch.cat([torch.arange(rank * c, (rank + 1) * c), torch.arange((2 * world - 1 - rank) * c, (2 * world - rank) * c)])


# --------------------------------------------------------------------------- ring communication


class _Ring:
    """Point-to-point exchange with the ring neighbours of a process group."""

    def __init__(self, group):
        self.group = group
        if dist.is_available() and dist.is_initialized():
            self.rank = dist.get_rank(group)
            self.world = dist.get_world_size(group)
        else:
            self.rank, self.world = 0, 1
        if self.world > 1:
            glob = (lambda r: r) if group is None else (lambda r: dist.get_global_rank(group, r))
            self.send_to = glob((self.rank + 1) % self.world)
            self.recv_from = glob((self.rank - 1) % self.world)

    def start(self, tensors: Sequence[torch.Tensor]):
        """Send ``tensors`` to the next rank and receive as many from the previous one,
        asynchronously (computation overlaps); ``finish`` waits and returns what came in."""
        bufs = [torch.empty_like(t) for t in tensors]
        ops = [dist.P2POp(dist.isend, t, self.send_to, self.group) for t in tensors]
        ops += [dist.P2POp(dist.irecv, b, self.recv_from, self.group) for b in bufs]
        return dist.batch_isend_irecv(ops), bufs

    @staticmethod
    def finish(pending) -> list[torch.Tensor]:
        reqs, bufs = pending
        for req in reqs:
            req.wait()
        return bufs


# --------------------------------------------------------------------------- blocks


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _block_pairs(rank: int, src: int, world: int, causal: bool, t_local: int):
    """The (query slice, key slice, diagonal?) pairs to compute when the keys of rank
    ``src`` are here. Causal: zig-zag chunks; a key chunk after a query chunk is skipped,
    the same chunk gets the triangular mask."""
    if not causal:
        return [(slice(None), slice(None), False)]  # every query against every key
    c = t_local // 2
    q_chunks = (rank, 2 * world - 1 - rank)
    k_chunks = (src, 2 * world - 1 - src)
    pairs = []
    for a, qi in enumerate(q_chunks):
        for b, kj in enumerate(k_chunks):
            if qi >= kj:
                pairs.append((slice(a * c, (a + 1) * c), slice(b * c, (b + 1) * c), qi == kj))
    return pairs


def _scores(q, k, scale, diag):
    s = (q @ k.transpose(-2, -1)) * scale  # (..., c, c)
    if diag:
        allowed = torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).tril()  # (c, c)
        s = s.masked_fill(~allowed, mask_fill_value(s.dtype))
        return s, allowed
    return s, None


def _block_forward(q, k, v, scale, diag):
    """Softmax attention of one block and its log-sum-exp.
    q (..., cq, D), k (..., ck, D), v (..., ck, Dv) -> out (..., cq, Dv), lse (..., cq)."""
    s, _ = _scores(q, k, scale, diag)
    m = s.amax(dim=-1, keepdim=True)  # (..., cq, 1)
    p = torch.exp(s - m)  # (..., cq, ck); a masked score underflows to exactly 0
    l = p.sum(dim=-1, keepdim=True)  # (..., cq, 1) >= 1: each row keeps its maximum
    return (p @ v) / l, (m + torch.log(l)).squeeze(-1)


def _merge(out, lse, out_b, lse_b):
    """Combine two partial softmax results over disjoint key sets (in place into out/lse)."""
    new = torch.logaddexp(lse, lse_b)  # (..., cq)
    out.mul_(torch.exp(lse - new).unsqueeze(-1)).add_(out_b * torch.exp(lse_b - new).unsqueeze(-1))
    lse.copy_(new)


def _block_backward(q, k, v, do, lse, delta, scale, diag):
    """Flash-attention backward of one block with the global lse and delta = rowsum(dO*O)."""
    s, allowed = _scores(q, k, scale, diag)
    p = torch.exp(s - lse.unsqueeze(-1))  # (..., cq, ck): the global softmax weights of this block
    if allowed is not None:
        p = p.masked_fill(~allowed, 0.0)
    dv = p.transpose(-2, -1) @ do  # (..., ck, Dv)
    dp = do @ v.transpose(-2, -1)  # (..., cq, ck)
    ds = p * (dp - delta.unsqueeze(-1))  # (..., cq, ck)
    dq = (ds @ k) * scale  # (..., cq, D)
    dk = (ds.transpose(-2, -1) @ q) * scale  # (..., ck, D)
    return dq, dk, dv


# --------------------------------------------------------------------------- autograd


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, scale, group):
        ring = _Ring(group)
        acc = _acc_dtype(q.dtype)
        qa, ka, va = q.to(acc), k.to(acc).contiguous(), v.to(acc).contiguous()
        t = q.shape[-2]
        out = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=acc, device=q.device)  # (..., T_local, Dv)
        lse = torch.full(q.shape[:-1], -math.inf, dtype=acc, device=q.device)  # (..., T_local)
        kv_k, kv_v = ka, va
        for step in range(ring.world):
            src = (ring.rank - step) % ring.world
            pending = ring.start([kv_k, kv_v]) if step < ring.world - 1 else None
            for qs, ks, diag in _block_pairs(ring.rank, src, ring.world, causal, t):
                o_b, l_b = _block_forward(qa[..., qs, :], kv_k[..., ks, :], kv_v[..., ks, :], scale, diag)
                _merge(out[..., qs, :], lse[..., qs], o_b, l_b)
            if pending is not None:
                kv_k, kv_v = _Ring.finish(pending)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.causal, ctx.scale, ctx.group = causal, scale, group
        return out.to(q.dtype), lse

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        q, k, v, out, lse = ctx.saved_tensors
        causal, scale = ctx.causal, ctx.scale
        ring = _Ring(ctx.group)
        acc = out.dtype
        qa, ka, va = q.to(acc), k.to(acc).contiguous(), v.to(acc).contiguous()
        do = grad_out.to(acc)  # (..., T_local, Dv)
        delta = (do * out).sum(-1)  # (..., T_local)
        if grad_lse is not None:
            # d lse_i / d s_ij = P_ij: it enters dS exactly like -delta.
            delta = delta - grad_lse.to(acc)
        t = q.shape[-2]
        dq = torch.zeros_like(qa)
        kv_k, kv_v = ka, va
        dk, dv = torch.zeros_like(ka), torch.zeros_like(va)  # travel with (kv_k, kv_v)
        for step in range(ring.world):
            src = (ring.rank - step) % ring.world
            pending = ring.start([kv_k, kv_v]) if step < ring.world - 1 else None
            for qs, ks, diag in _block_pairs(ring.rank, src, ring.world, causal, t):
                dq_b, dk_b, dv_b = _block_backward(
                    qa[..., qs, :], kv_k[..., ks, :], kv_v[..., ks, :], do[..., qs, :], lse[..., qs], delta[..., qs], scale, diag
                )
                dq[..., qs, :] += dq_b
                dk[..., ks, :] += dk_b
                dv[..., ks, :] += dv_b
            if pending is not None:
                kv_k, kv_v = _Ring.finish(pending)
            if ring.world > 1:
                # The accumulators follow their block (after the key/value exchange, so the
                # two never share the wire); the hop after the last step brings each home.
                dk, dv = _Ring.finish(ring.start([dk, dv]))
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None


def ring_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    scale: float | None = None,
    group=None,
    return_lse: bool = False,
):
    """Softmax attention over a sequence sharded across the ranks of ``group``.

    ``softmax(q k^T * scale [+ causal mask]) v`` over the whole (global) sequence, each
    rank computing the rows of its own queries. Ring attention: Liu, Zaharia & Abbeel
    (2023); zig-zag load balancing for ``causal=True`` as in Megatron-LM; the blockwise
    backward of FlashAttention (Dao et al. 2022).

    Without an initialized process group (or with a group of one) this is plain
    attention on the local tensors.

    Args:
        q, k, v: this rank's shard. ``causal=False``: any split of the sequence (keys and
            queries need not be split alike; cross-attention works). ``causal=True``:
            self-attention split by :func:`zigzag_shard` (``q``, ``k``, ``v`` the same
            positions, ``T_local`` even); positional encodings must use
            :func:`zigzag_positions`. Every rank must pass the same shapes.
        causal: key ``j`` visible to query ``i`` only when ``j <= i`` (global positions).
        scale: multiplier of the scores; default ``1 / sqrt(D)``.
        group: the ``torch.distributed`` process group holding the shards (default: the
            whole world).
        return_lse: also return the log-sum-exp of each query's scores (it has a gradient).

    Shape:
        q (..., T_local, D), k (..., Tk_local, D), v (..., Tk_local, Dv) ->
        output (..., T_local, Dv); lse (..., T_local), float32 for half-precision inputs.

    Returns:
        ``output``, or ``(output, lse)`` with ``return_lse=True``. Output dtype follows q.
    """
    check_tensor(q, "q", min_ndim=2)
    check_tensor(k, "k", min_ndim=2)
    check_tensor(v, "v", min_ndim=2)
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k and v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.shape[:-1] != v.shape[:-1]:
        raise ValueError(f"k and v must have the same leading dims and keys: k is {fmt_shape(k.shape)}, v is {fmt_shape(v.shape)}")
    if q.shape[:-2] != k.shape[:-2]:
        raise ValueError(f"q and k must have the same batch dims: q is {fmt_shape(q.shape)}, k is {fmt_shape(k.shape)}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must have the same feature size D: q is {fmt_shape(q.shape)}, k is {fmt_shape(k.shape)}")
    if q.shape[-2] == 0 or k.shape[-2] == 0:
        raise ValueError(f"q and k need at least one position: q is {fmt_shape(q.shape)}, k is {fmt_shape(k.shape)}")
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if causal:
        if k.shape[-2] != q.shape[-2]:
            raise ValueError(
                f"causal ring attention is self-attention: k must have as many positions as q, got q "
                f"{fmt_shape(q.shape)}, k {fmt_shape(k.shape)}"
            )
        if q.shape[-2] % 2:
            raise ValueError(
                f"q has {q.shape[-2]} local positions (shape {fmt_shape(q.shape)}); causal ring attention needs "
                "the two zig-zag chunks of zigzag_shard, an even number"
            )
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    elif isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number or None, got {scale!r}")
    out, lse = _RingAttention.apply(q, k, v, causal, float(scale), group)
    return (out, lse) if return_lse else out
