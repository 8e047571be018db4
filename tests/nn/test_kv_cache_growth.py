"""KVCache growing mode: doubling buffers without autograd, concatenation with it."""

import pytest
import torch

from attnlab.nn import KVCache, MultiheadAttention


def _steps(n, B=2, H=3, D=5, Dv=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(B, H, t, D, generator=g), torch.randn(B, H, t, Dv, generator=g)) for t in [1, 3] + [1] * n]


def test_no_grad_growth_matches_concatenation_and_keeps_old_views():
    steps = _steps(20)
    cache = KVCache()
    returned = []
    with torch.no_grad():
        for k, v in steps:
            returned.append(cache.append(k, v))
    want_k = torch.cat([k for k, _ in steps], dim=2)  # (B, H, 24, D)
    want_v = torch.cat([v for _, v in steps], dim=2)
    assert cache.length == 24
    torch.testing.assert_close(cache.k, want_k, rtol=0, atol=0)
    torch.testing.assert_close(cache.v, want_v, rtol=0, atol=0)
    # buffers grow by doubling: far fewer reallocations than steps
    assert cache._k.shape[2] >= 24 and cache._k.shape[2] < 64
    # a view returned at step t still holds exactly the first positions
    k5, _ = returned[5]
    torch.testing.assert_close(k5, want_k[:, :, : k5.shape[2]], rtol=0, atol=0)
    # the caller's first tensor was never written into
    torch.testing.assert_close(steps[0][0], want_k[:, :, :1], rtol=0, atol=0)


def test_grad_mode_still_backpropagates_through_steps():
    cache = KVCache()
    k1 = torch.randn(1, 2, 1, 3, requires_grad=True)
    k2 = torch.randn(1, 2, 1, 3, requires_grad=True)
    cache.append(k1, k1 * 2)
    k_all, v_all = cache.append(k2, k2 * 2)
    (k_all.sum() + v_all.sum()).backward()
    torch.testing.assert_close(k1.grad, torch.full_like(k1, 3.0))
    torch.testing.assert_close(k2.grad, torch.full_like(k2, 3.0))


def test_signature_change_is_still_checked():
    cache = KVCache()
    with torch.no_grad():
        cache.append(torch.randn(1, 2, 1, 3), torch.randn(1, 2, 1, 3))
        cache.append(torch.randn(1, 2, 1, 3), torch.randn(1, 2, 1, 3))
        with pytest.raises(ValueError, match="do not match the cache"):
            cache.append(torch.randn(1, 3, 1, 3), torch.randn(1, 3, 1, 3))
        with pytest.raises(TypeError, match="dtype"):
            cache.append(torch.randn(1, 2, 1, 3, dtype=torch.float64), torch.randn(1, 2, 1, 3, dtype=torch.float64))
    fixed = KVCache(max_len=2)
    fixed.append(torch.randn(1, 2, 1, 3), torch.randn(1, 2, 1, 3))
    fixed.append(torch.randn(1, 2, 1, 3), torch.randn(1, 2, 1, 3))
    with pytest.raises(ValueError, match="overflow"):
        fixed.append(torch.randn(1, 2, 1, 3), torch.randn(1, 2, 1, 3))


def test_decode_with_growing_cache_matches_full_causal_pass():
    torch.manual_seed(0)
    m = MultiheadAttention(12, 3, batch_first=True).eval()
    x = torch.randn(2, 9, 12)
    full, _ = m(x, x, x, is_causal=True, need_weights=False)
    cache = KVCache()
    with torch.no_grad():
        outs = [m(x[:, :4], x[:, :4], x[:, :4], kv_cache=cache, need_weights=False)[0]]
        for t in range(4, 9):
            xt = x[:, t : t + 1]
            outs.append(m(xt, xt, xt, kv_cache=cache, need_weights=False)[0])
    torch.testing.assert_close(torch.cat(outs, dim=1), full, atol=1e-5, rtol=1e-5)
