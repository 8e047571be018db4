"""Ring attention against single-process attention, on 1, 2 and 4 gloo processes.

Every rank builds the same full inputs (seeded), computes the single-process reference
(torch SDPA and attnlab.functional.attend, float64), runs ring attention on its own
shard and compares its rows of the output and of the gradients. One launch per world
size checks every case, so process start-up is paid once.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from attnlab.distributed.ring import ring_attention, zigzag_positions, zigzag_shard, zigzag_unshard
from attnlab.functional.attend import attend

TOL = 1e-5


def _reference(q, k, v, causal):
    """attnlab's readable reference (mask True = may attend) and its log-sum-exp."""
    tq, tk = q.shape[-2], k.shape[-2]
    mask = torch.ones(tq, tk, dtype=torch.bool).tril() if causal else None  # (Tq, Tk)
    out = attend(q, k, v, mask=mask).output
    s = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (..., Tq, Tk)
    if causal:
        s = s.masked_fill(~mask, -math.inf)
    return out, torch.logsumexp(s, dim=-1)


def _contiguous(x, rank, world, dim=-2):
    return x.chunk(world, dim=dim)[rank]


def _check_case(rank, world, *, causal, shape, dv, tk=None, use_lse=False, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    *lead, t, d = shape
    tk = t if tk is None else tk
    q = torch.randn(*lead, t, d, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(*lead, tk, d, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(*lead, tk, dv, generator=g, dtype=torch.float64, requires_grad=True)
    d_out = torch.randn(*lead, t, dv, generator=g, dtype=torch.float64)
    d_lse = torch.randn(*lead, t, generator=g, dtype=torch.float64)

    ref, ref_lse = _reference(q, k, v, causal)
    sdpa = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    assert (ref - sdpa).abs().max() < 1e-12  # the two references agree
    ((ref * d_out).sum() + ((ref_lse * d_lse).sum() if use_lse else 0)).backward()

    # Causal: the zig-zag split; otherwise a plain contiguous split (keys split alike,
    # or into their own number of positions for cross-attention).
    def split(x, dim=-2):
        return zigzag_shard(x, rank, world, dim) if causal else _contiguous(x, rank, world, dim)

    ql, kl, vl = (split(x.detach()).to(dtype).requires_grad_() for x in (q, k, v))
    out, lse = ring_attention(ql, kl, vl, causal=causal, return_lse=True)
    assert out.dtype == dtype and out.shape == ql.shape[:-1] + (dv,)
    loss = (out.double() * split(d_out)).sum()
    if use_lse:
        loss = loss + (lse.double() * split(d_lse, -1)).sum()
    loss.backward()
    tol = TOL if dtype == torch.float64 else (1e-5 if dtype == torch.float32 else 3e-2)
    for name, got, want in (
        ("output", out, split(ref.detach())),
        ("lse", lse, split(ref_lse.detach(), -1)),
        ("dq", ql.grad, split(q.grad)),
        ("dk", kl.grad, split(k.grad)),
        ("dv", vl.grad, split(v.grad)),
    ):
        err = (got.double() - want).abs().max().item()
        assert err < tol, f"rank {rank}/{world} causal={causal} {shape} {dtype}: {name} differs by {err:.2e}"


def _ring_cases(rank, world):
    # Distinct sizes (B=2, H=3, D=5, Dv=7) so a swapped axis fails; T = 2 chunks per rank.
    for causal in (False, True):
        _check_case(rank, world, causal=causal, shape=(2, 3, 6 * world, 5), dv=7)
        _check_case(rank, world, causal=causal, shape=(2, 3, 2 * world, 5), dv=7, use_lse=True, seed=1)
        _check_case(rank, world, causal=causal, shape=(3, 4 * world, 5), dv=5, dtype=torch.float32, seed=2)
    # Cross-attention: 11 keys per rank against 3 queries per rank.
    _check_case(rank, world, causal=False, shape=(2, 3, 3 * world, 5), dv=7, tk=11 * world, seed=3)
    _check_case(rank, world, causal=True, shape=(1, 2, 4 * world, 8), dv=8, dtype=torch.bfloat16, seed=4)


@pytest.mark.parametrize("world", [2, 4])
def test_ring_attention_matches_single_process(ranks, world):
    ranks(_ring_cases, world)


def test_ring_attention_in_a_subgroup(ranks):
    """A group of ranks {1, 2} out of 3: neighbours are found by global rank."""

    def body(rank, world):
        import torch.distributed as dist

        sub = dist.new_group([1, 2])
        if rank == 0:
            return
        g = torch.Generator().manual_seed(5)
        q, k, v = (torch.randn(2, 8, 3, generator=g, dtype=torch.float64) for _ in range(3))
        ref, _ = _reference(q, k, v, True)
        r = rank - 1
        out = ring_attention(*(zigzag_shard(x, r, 2) for x in (q, k, v)), causal=True, group=sub)
        assert (out - zigzag_shard(ref, r, 2)).abs().max() < TOL

    ranks(body, 3)


# --------------------------------------------------------------------------- one process


@pytest.mark.parametrize("causal", [False, True])
def test_without_process_group_is_plain_attention(causal):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 6, 5, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    ref, ref_lse = _reference(q, k, v, causal)
    out, lse = ring_attention(q, k, v, causal=causal, return_lse=True)
    assert (out - ref).abs().max() < 1e-12 and (lse - ref_lse).abs().max() < 1e-12


@pytest.mark.parametrize("causal", [False, True])
def test_gradcheck(causal):
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 4, 3, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradcheck(lambda a, b, c: ring_attention(a, b, c, causal=causal, return_lse=True), (q, k, v))


def test_scale_is_used():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(3, 5, 7, generator=g, dtype=torch.float64) for _ in range(3))
    want = F.scaled_dot_product_attention(q, k, v, scale=0.3)
    assert (ring_attention(q, k, v, scale=0.3) - want).abs().max() < 1e-12


# --------------------------------------------------------------------------- zig-zag layout


def test_zigzag_shard_takes_chunks_r_and_2w_minus_1_minus_r():
    x = torch.arange(16).view(1, 16, 1)  # (B, T, D): positions as values
    assert zigzag_shard(x, 0, 4).flatten().tolist() == [0, 1, 14, 15]
    assert zigzag_shard(x, 3, 4).flatten().tolist() == [6, 7, 8, 9]
    shards = [zigzag_shard(x, r, 4) for r in range(4)]
    assert torch.equal(zigzag_unshard(shards), x)
    for r in range(4):
        assert zigzag_positions(r, 4, 4).tolist() == zigzag_shard(x, r, 4).flatten().tolist()


def test_zigzag_other_dim_roundtrip():
    x = torch.randn(3, 10, 2)
    shards = [zigzag_shard(x, r, 5, dim=1) for r in range(5)]
    assert all(s.shape == (3, 2, 2) for s in shards)
    assert torch.equal(zigzag_unshard(shards, dim=1), x)


def test_zigzag_bad_input():
    with pytest.raises(ValueError, match="x has 10 positions.*multiple of 2 \\* world = 4"):
        zigzag_shard(torch.zeros(10, 2), 0, 2)
    with pytest.raises(ValueError, match="rank must be an int in \\[0, world=2\\)"):
        zigzag_shard(torch.zeros(8, 2), 2, 2)
    with pytest.raises(ValueError, match="world must be > 0"):
        zigzag_shard(torch.zeros(8, 2), 0, 0)
    with pytest.raises(ValueError, match="shards\\[1\\] has shape"):
        zigzag_unshard([torch.zeros(4, 2), torch.zeros(6, 2)])
    with pytest.raises(ValueError, match="shards must be a non-empty list"):
        zigzag_unshard([])
    with pytest.raises(ValueError, match="local_len must be even"):
        zigzag_positions(0, 2, 3)


def test_ring_attention_bad_input():
    q = torch.randn(2, 6, 5)
    with pytest.raises(TypeError, match="q must be a floating-point tensor"):
        ring_attention(q.long(), q, q)
    with pytest.raises(TypeError, match="q, k and v must share a dtype"):
        ring_attention(q, q.double(), q)
    with pytest.raises(ValueError, match="k and v must have the same leading dims and keys"):
        ring_attention(q, q, torch.randn(2, 7, 5))
    with pytest.raises(ValueError, match="q and k must have the same feature size D"):
        ring_attention(q, torch.randn(2, 6, 4), torch.randn(2, 6, 4))
    with pytest.raises(ValueError, match="q and k must have the same batch dims"):
        ring_attention(q, torch.randn(3, 6, 5), torch.randn(3, 6, 5))
    with pytest.raises(ValueError, match="causal ring attention is self-attention: k must have as many positions"):
        ring_attention(q, torch.randn(2, 4, 5), torch.randn(2, 4, 5), causal=True)
    with pytest.raises(ValueError, match="q has 5 local positions.*even number"):
        ring_attention(torch.randn(2, 5, 5), torch.randn(2, 5, 5), torch.randn(2, 5, 5), causal=True)
    with pytest.raises(ValueError, match="scale must be a finite number"):
        ring_attention(q, q, q, scale=float("nan"))
    with pytest.raises(TypeError, match="causal must be a bool"):
        ring_attention(q, q, q, causal=1)
