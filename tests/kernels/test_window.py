import math

import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab.functional import attend, window_mask
from attnlab.kernels.window import window_attention

F64 = torch.float64


def qkv(*shape, dtype=F64, dv=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(*shape, generator=g, dtype=dtype)
    k = torch.randn(*shape, generator=g, dtype=dtype)
    v = torch.randn(*shape[:-1], dv or shape[-1], generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (q, k, v)]


def reference(q, k, v, window, causal):
    T = q.shape[-2]
    return attend(q, k, v, mask=window_mask(T, T, window, causal=causal), need_weights=True)


def grads(out, inputs, seed=1):
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return torch.autograd.grad(out, inputs, g, retain_graph=True)


def loop_window(q, k, v, window, causal):
    # One query at a time over the keys its window allows: the definition, written out.
    T, D = q.shape
    out = torch.zeros(T, v.shape[1], dtype=q.dtype)
    for i in range(T):
        js = [j for j in range(T) if (0 <= i - j <= window if causal else abs(i - j) <= window)]
        s = torch.stack([q[i] @ k[j] / math.sqrt(D) for j in js])
        out[i] = torch.softmax(s, 0) @ v[js]
    return out


@pytest.mark.parametrize("causal", [False, True])
def test_matches_textbook_loop(causal):
    q, k, v = (t.detach() for t in qkv(11, 5, dv=3))
    out = window_attention(q, k, v, 2, causal=causal, block_size=4).output
    torch.testing.assert_close(out, loop_window(q, k, v, 2, causal))


@pytest.mark.parametrize("T", [5, 7, 11, 37])
@pytest.mark.parametrize("window", [0, 1, 3, "T-1", "T+2"])
@pytest.mark.parametrize("causal", [False, True])
def test_values_and_gradients_match_reference(T, window, causal):
    window = {"T-1": T - 1, "T+2": T + 2}.get(window, window)
    q, k, v = qkv(2, 3, T, 8, seed=T + window)
    for block in (None, 3, 4):  # 3 and 4 divide none of 5, 7, 11, 37
        out, w = window_attention(q, k, v, window, causal=causal, block_size=block, need_weights=True)
        ref_out, ref_w = reference(q, k, v, window, causal)
        torch.testing.assert_close(out, ref_out)
        torch.testing.assert_close(w, ref_w)
        for a, b in zip(grads(out, (q, k, v)), grads(ref_out, (q, k, v))):
            torch.testing.assert_close(a, b)


def test_weights_are_banded_rows_on_the_simplex_and_differentiable():
    q, k, v = qkv(2, 3, 11, 8)
    out, w = window_attention(q, k, v, 2, causal=True, block_size=4, need_weights=True)
    assert w.shape == (2, 3, 11, 11)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3, 11, dtype=F64))
    assert (w[..., ~window_mask(11, 11, 2, causal=True)] == 0).all()
    torch.testing.assert_close(w @ v, out)
    ref_w = reference(q, k, v, 2, True).weights
    for a, b in zip(grads(w, (q, k)), grads(ref_w, (q, k))):
        torch.testing.assert_close(a, b)
    assert window_attention(q, k, v, 2).weights is None


@pytest.mark.parametrize("causal", [False, True])
def test_gradcheck_float64(causal):
    q, k, v = qkv(1, 1, 7, 2)
    fn = lambda q, k, v: window_attention(q, k, v, 2, causal=causal, block_size=3).output  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v))


def test_float32_flash_path_and_dtype():
    q, k, v = qkv(2, 3, 37, 16, dtype=torch.float32)
    out = window_attention(q, k, v, 5, block_size=8).output
    ref = reference(q, k, v, 5, False).output
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads(out, (q, k, v)), grads(ref, (q, k, v))):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_bfloat16_runs_and_keeps_dtype():
    q, k, v = qkv(2, 3, 37, 16, dtype=torch.bfloat16)
    out, w = window_attention(q, k, v, 4, causal=True, need_weights=True)
    assert out.dtype == torch.bfloat16 and w.dtype == torch.bfloat16
    ref = reference(*(t.detach().double() for t in (q, k, v)), 4, True).output
    torch.testing.assert_close(out.double(), ref, atol=3e-2, rtol=3e-2)
    out.float().sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_value_dim_differs_and_leading_dims():
    q, k, v = qkv(3, 11, 5, dv=2)  # (N, T, D) with Dv != D: plain-torch path
    out = window_attention(q, k, v, 2, block_size=4).output
    ref = reference(q, k, v, 2, False).output
    torch.testing.assert_close(out, ref)
    for a, b in zip(grads(out, (q, k, v)), grads(ref, (q, k, v))):
        torch.testing.assert_close(a, b)
    q2, k2, v2 = (t.detach()[0] for t in (q, k, v))  # 2-D (T, D)
    torch.testing.assert_close(window_attention(q2, k2, v2, 2).output, ref[0].detach())


def test_batch_dims_broadcast():
    q, _, _ = qkv(2, 3, 7, 4)
    _, k, v = qkv(1, 3, 7, 4, seed=5)
    out = window_attention(q, k, v, 1).output
    torch.testing.assert_close(out, reference(q, k.expand(2, 3, 7, 4), v.expand(2, 3, 7, 4), 1, False).output)


def test_window_covering_everything_is_full_attention():
    q, k, v = (t.detach() for t in qkv(2, 3, 7, 4))
    torch.testing.assert_close(window_attention(q, k, v, 100).output, TF.scaled_dot_product_attention(q, k, v))
    torch.testing.assert_close(
        window_attention(q, k, v, 6, causal=True).output, TF.scaled_dot_product_attention(q, k, v, is_causal=True)
    )


def test_window_zero_is_identity_on_values():
    q, k, v = (t.detach() for t in qkv(2, 3, 11, 4))
    torch.testing.assert_close(window_attention(q, k, v, 0, block_size=4).output, v)


def test_custom_scale():
    q, k, v = (t.detach() for t in qkv(1, 2, 11, 4))
    out = window_attention(q, k, v, 3, scale=0.3, block_size=5).output
    ref = attend(q * (0.3 * 2), k, v, mask=window_mask(11, 11, 3)).output  # attend scales by 1/sqrt(4)
    torch.testing.assert_close(out, ref)


@settings(max_examples=30, deadline=None)
@given(
    T=st.integers(1, 40),
    window=st.integers(0, 45),
    block=st.integers(1, 20),
    causal=st.booleans(),
)
def test_random_sizes_match_reference(T, window, block, causal):
    q, k, v = qkv(1, 2, T, 3, seed=T * 100 + window)
    out = window_attention(q, k, v, window, causal=causal, block_size=block).output
    ref = reference(q, k, v, window, causal).output
    torch.testing.assert_close(out, ref)
    for a, b in zip(grads(out, (q, k, v)), grads(ref, (q, k, v))):
        torch.testing.assert_close(a, b)


def test_bad_inputs_name_the_argument():
    q, k, v = (t.detach() for t in qkv(2, 3, 7, 4))
    with pytest.raises(ValueError, match="window"):
        window_attention(q, k, v, -1)
    with pytest.raises(TypeError, match="window"):
        window_attention(q, k, v, 1.5)
    with pytest.raises(ValueError, match="q and k"):
        window_attention(q, k[..., :5, :], v[..., :5, :], 1)
    with pytest.raises(ValueError, match="last dimension"):
        window_attention(q, k[..., :3], v, 1)
    with pytest.raises(ValueError, match="k and v"):
        window_attention(q, k, torch.randn(2, 3, 5, 4, dtype=F64), 1)
    with pytest.raises(ValueError, match="broadcast"):
        window_attention(q, k[:1].expand(5, 3, 7, 4), v, 1)
    with pytest.raises(ValueError, match="block_size"):
        window_attention(q, k, v, 1, block_size=0)
    with pytest.raises(TypeError, match="q"):
        window_attention(q.numpy(), k, v, 1)
    with pytest.raises(TypeError, match="dtype"):
        window_attention(q.float(), k, v, 1)
    with pytest.raises(TypeError, match="causal"):
        window_attention(q, k, v, 1, causal="yes")
