"""attnlab.nn.kv_cache.KVCache: storage semantics of both modes (growing, preallocated).
Decoding equivalence with the full causal forward is tested in test_multihead.py."""

from __future__ import annotations

import pytest
import torch

from attnlab.nn.kv_cache import KVCache

B, HKV, DK, DV = 3, 2, 5, 7  # distinct sizes; Dv != Dk on purpose


def chunks(lengths, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(B, HKV, t, DK, generator=g, dtype=dtype), torch.randn(B, HKV, t, DV, generator=g, dtype=dtype))
        for t in lengths
    ]


@pytest.mark.parametrize("max_len", [None, 11])
def test_append_returns_everything_so_far(max_len):
    cache = KVCache(max_len=max_len)
    assert cache.length == 0 and len(cache) == 0 and cache.k is None and cache.v is None
    parts = chunks([3, 1, 2])
    seen = 0
    for i, (k, v) in enumerate(parts):
        k_all, v_all = cache.append(k, v)
        seen += k.shape[2]
        want_k = torch.cat([p[0] for p in parts[: i + 1]], dim=2)  # (B, H_kv, seen, Dk)
        want_v = torch.cat([p[1] for p in parts[: i + 1]], dim=2)  # (B, H_kv, seen, Dv)
        assert k_all.shape == (B, HKV, seen, DK) and v_all.shape == (B, HKV, seen, DV)
        assert torch.equal(k_all, want_k) and torch.equal(v_all, want_v)
        assert cache.length == seen
        assert torch.equal(cache.k, want_k) and torch.equal(cache.v, want_v)


def test_preallocated_buffers_are_allocated_once_and_reused_after_reset():
    cache = KVCache(max_len=6)
    (k1, v1), (k2, v2) = chunks([2, 3])
    cache.append(k1, v1)
    buf = cache._k
    assert buf.shape == (B, HKV, 6, DK)
    k_all, _ = cache.append(k2, v2)
    assert cache._k is buf and k_all.data_ptr() == buf.data_ptr()  # a view, no copy
    cache.reset()
    assert cache.length == 0 and cache.k is None
    (k3, v3), = chunks([4], seed=1)
    k_all, v_all = cache.append(k3, v3)
    assert cache._k is buf
    assert torch.equal(k_all, k3) and torch.equal(v_all, v3)  # old positions are not visible


def test_preallocated_reallocates_for_a_new_batch_shape_after_reset():
    cache = KVCache(max_len=4)
    cache.append(*chunks([2])[0])
    cache.reset()
    k = torch.randn(1, HKV, 2, DK, dtype=torch.float64)
    v = torch.randn(1, HKV, 2, DV, dtype=torch.float64)
    k_all, v_all = cache.append(k, v)
    assert k_all.dtype == torch.float64 and torch.equal(k_all, k) and torch.equal(v_all, v)


def test_growing_reset_frees_and_autograd_flows_through_steps():
    cache = KVCache()
    (k1, v1), (k2, v2) = chunks([2, 1])
    k1.requires_grad_()
    k2.requires_grad_()
    cache.append(k1, v1)
    k_all, _ = cache.append(k2, v2)
    (k_all * torch.arange(3.0).view(1, 1, 3, 1)).sum().backward()
    assert torch.equal(k1.grad, torch.cat([torch.zeros_like(k1[:, :, :1]), torch.ones_like(k1[:, :, :1])], 2))
    assert torch.equal(k2.grad, torch.full_like(k2, 2.0))
    cache.reset()
    assert cache._k is None and cache.length == 0


def test_bf16_keeps_dtype():
    cache = KVCache(max_len=5)
    (k, v), = chunks([2], dtype=torch.bfloat16)
    k_all, v_all = cache.append(k, v)
    assert k_all.dtype == v_all.dtype == torch.bfloat16


def test_bad_input():
    with pytest.raises(ValueError, match="max_len must be > 0"):
        KVCache(max_len=0)
    with pytest.raises(TypeError, match="max_len must be an int"):
        KVCache(max_len=2.5)
    cache = KVCache(max_len=4)
    (k, v), = chunks([3])
    with pytest.raises(TypeError, match="k must be a torch.Tensor"):
        cache.append(k.numpy(), v)
    with pytest.raises(ValueError, match=r"k and v must have shape \(B, H_kv, T, D\)"):
        cache.append(k[None], v[None])
    with pytest.raises(ValueError, match="v must have at least 4 dimensions"):
        cache.append(k, v[0])
    with pytest.raises(ValueError, match=r"k and v must agree on \(B, H_kv, T\)"):
        cache.append(k, v[:, :, :2])
    cache.append(k, v)
    with pytest.raises(ValueError, match=r"do not match the cache: expected \(B, H_kv, T, Dk\) = \(3, 2, 1, 5\)"):
        cache.append(k[:2, :, :1], v[:2, :, :1])
    with pytest.raises(TypeError, match="k has dtype torch.float64"):
        cache.append(k[:, :, :1].double(), v[:, :, :1].double())
    with pytest.raises(ValueError, match=r"overflow: 3 cached \+ 2 new positions exceed max_len=4"):
        cache.append(k[:, :, :2], v[:, :, :2])
    assert cache.length == 3  # a failed append changes nothing
    grow = KVCache()
    grow.append(k, v)
    with pytest.raises(ValueError, match="do not match the cache"):
        grow.append(k[:, :1], v[:, :1])
    assert "length=3" in repr(grow)
