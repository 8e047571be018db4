import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab.nn.self_attention import CrossAttention, SelfAttention, SimpleSelfAttention

B, T, TK, D, DQK, DV = 3, 5, 7, 4, 11, 2


def ref_attention(q, k, v, scale, mask=None, normalizer="softmax"):
    """softmax_j(q_i . k_j * scale) v_j, one query row at a time, float64."""
    q, k, v = q.double(), k.double(), v.double()
    Bn, Tq, Tk = q.shape[0], q.shape[1], k.shape[1]
    out = torch.zeros(Bn, Tq, v.shape[-1], dtype=torch.float64)
    weights = torch.zeros(Bn, Tq, Tk, dtype=torch.float64)
    for b in range(Bn):
        for i in range(Tq):
            allowed = [j for j in range(Tk) if mask is None or bool(mask[b, i, j])]
            if not allowed:
                continue
            e = {j: float(q[b, i] @ k[b, j]) * scale for j in allowed}
            if normalizer == "softmax":
                z = max(e.values())
                denom = sum(math.exp(e[j] - z) for j in allowed)
                a = {j: math.exp(e[j] - z) / denom for j in allowed}
            else:  # sigmoid gates
                a = {j: 1.0 / (1.0 + math.exp(-e[j])) for j in allowed}
            for j in allowed:
                weights[b, i, j] = a[j]
                out[b, i] += a[j] * v[b, j]
    return out, weights


def projections(m, x_q, x_kv):
    """X W^T + b with the module's own weights, row by row (independent of nn.Linear)."""

    def lin(layer, x):
        W = layer.weight.detach().double()
        b = layer.bias.detach().double() if layer.bias is not None else torch.zeros(W.shape[0], dtype=torch.float64)
        return torch.stack([torch.stack([W @ row + b for row in seq]) for seq in x.double()])

    return lin(m.w_q, x_q), lin(m.w_k, x_kv), lin(m.w_v, x_kv)


def random_mask(Bn, Tq, Tk, seed=1):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(Bn, Tq, Tk, generator=g) > 0.4
    mask[1, 2] = False  # a fully masked row
    return mask


def causal(Tn):
    return torch.tensor([[j <= i for j in range(Tn)] for i in range(Tn)])


# ------------------------------------------------------------------ SimpleSelfAttention


@pytest.mark.parametrize("scale", [False, True])
def test_simple_self_attention_matches_textbook_loop(scale):
    x = torch.randn(B, T, D)
    mask = random_mask(B, T, T)
    out, w = SimpleSelfAttention(scale=scale)(x, mask=mask, need_weights=True)
    ref_out, ref_w = ref_attention(x, x, x, 1 / math.sqrt(D) if scale else 1.0, mask)
    assert out.shape == (B, T, D) and w.shape == (B, T, T)
    torch.testing.assert_close(out.double(), ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w.double(), ref_w, atol=1e-5, rtol=1e-5)
    assert torch.equal(out[1, 2], torch.zeros(D))


def test_simple_self_attention_is_unscaled_by_default_and_causal_option():
    x = torch.randn(2, T, D) * 3
    out, w = SimpleSelfAttention()(x, is_causal=True, need_weights=True)
    ref_out, ref_w = ref_attention(x, x, x, 1.0, causal(T).expand(2, T, T))
    torch.testing.assert_close(w.double(), ref_w, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.double(), ref_out, atol=1e-5, rtol=1e-5)
    assert list(SimpleSelfAttention().parameters()) == []


# ------------------------------------------------------------------------ SelfAttention


@pytest.mark.parametrize("bias", [False, True])
def test_self_attention_matches_loop_with_d_qk_not_d_v(bias):
    torch.manual_seed(0)
    m = SelfAttention(D, DQK, DV, bias=bias)
    x = torch.randn(B, T, D)
    mask = random_mask(B, T, T, seed=2)
    out, w = m(x, mask=mask, need_weights=True)
    q, k, v = projections(m, x, x)
    ref_out, ref_w = ref_attention(q, k, v, 1 / math.sqrt(DQK), mask)
    assert out.shape == (B, T, DV) and w.shape == (B, T, T)
    torch.testing.assert_close(out.double(), ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w.double(), ref_w, atol=1e-5, rtol=1e-5)
    assert m.w_q.weight.shape == (DQK, D) and m.w_v.weight.shape == (DV, D)
    assert (m.w_q.bias is not None) == bias


def test_self_attention_is_causal_combines_with_mask():
    torch.manual_seed(0)
    m = SelfAttention(D, DQK)
    x = torch.randn(B, T, D)
    pad = torch.ones(B, 1, T, dtype=torch.bool)
    pad[0, 0, 3:] = False
    out, w = m(x, mask=pad, is_causal=True, need_weights=True)
    q, k, v = projections(m, x, x)
    ref_out, ref_w = ref_attention(q, k, v, 1 / math.sqrt(DQK), causal(T) & pad)
    torch.testing.assert_close(out.double(), ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w.double(), ref_w, atol=1e-5, rtol=1e-5)
    assert torch.all(w.triu(1) == 0)
    assert out.shape == (B, T, DQK)  # d_v defaults to d_qk


def test_self_attention_normalizer_and_dot_score_choices():
    torch.manual_seed(0)
    m = SelfAttention(D, DQK, DV, score="dot", normalizer="sigmoid")
    x = torch.randn(B, T, D)
    mask = random_mask(B, T, T, seed=3)
    out, w = m(x, mask=mask, need_weights=True)
    q, k, v = projections(m, x, x)
    ref_out, ref_w = ref_attention(q, k, v, 1.0, mask, normalizer="sigmoid")
    torch.testing.assert_close(out.double(), ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w.double(), ref_w, atol=1e-5, rtol=1e-5)


def test_self_attention_dropout_only_in_training():
    torch.manual_seed(0)
    m = SelfAttention(D, DQK, DV, dropout=0.5)
    x = torch.randn(B, T, D)
    plain = SelfAttention(D, DQK, DV)
    plain.load_state_dict(m.state_dict())
    m.eval()
    eval_out = m(x)[0]
    torch.testing.assert_close(eval_out, plain(x)[0])
    m.train()
    a = m(x, generator=torch.Generator().manual_seed(7))[0]
    b = m(x, generator=torch.Generator().manual_seed(7))[0]
    torch.testing.assert_close(a, b)  # seeded
    assert not torch.allclose(a, eval_out)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.sampled_from([3, 5, 7]), data=st.data())
def test_self_attention_is_permutation_equivariant(seed, n, data):
    torch.manual_seed(seed)
    m = SelfAttention(D, DQK, DV, bias=True)
    x = torch.randn(2, n, D)
    perm = torch.tensor(data.draw(st.permutations(range(n))))
    out, w = m(x, need_weights=True)
    out_p, w_p = m(x[:, perm], need_weights=True)
    torch.testing.assert_close(out_p, out[:, perm], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w_p, w[:, perm][:, :, perm], atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------- CrossAttention


def test_cross_attention_matches_loop():
    torch.manual_seed(0)
    DKV = 6
    m = CrossAttention(D, DKV, DQK, DV, bias=True)
    x, ctx = torch.randn(B, T, D), torch.randn(B, TK, DKV)
    mask = random_mask(B, T, TK, seed=4)
    out, w = m(x, ctx, mask=mask, need_weights=True)
    q, k, v = projections(m, x, ctx)
    ref_out, ref_w = ref_attention(q, k, v, 1 / math.sqrt(DQK), mask)
    assert out.shape == (B, T, DV) and w.shape == (B, T, TK)
    torch.testing.assert_close(out.double(), ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w.double(), ref_w, atol=1e-5, rtol=1e-5)
    # key padding as (B, 1, Tk)
    pad = torch.ones(B, 1, TK, dtype=torch.bool)
    pad[2, 0, 5:] = False
    _, w = m(x, ctx, mask=pad, need_weights=True)
    assert torch.all(w[2, :, 5:] == 0)


# -------------------------------------------------------------------- shared properties


def modules():
    torch.manual_seed(0)
    return [
        (SelfAttention(D, DQK, DV, bias=True), lambda m, x, c, **kw: m(x, **kw)),
        (CrossAttention(D, 6, DQK, DV, bias=True), lambda m, x, c, **kw: m(x, c, **kw)),
        (SimpleSelfAttention(scale=True), lambda m, x, c, **kw: m(x, **kw)),
    ]


def test_gradients_reach_every_parameter_and_input():
    for m, call in modules():
        x = torch.randn(B, T, D, requires_grad=True)
        c = torch.randn(B, TK, 6, requires_grad=True)
        out, _ = call(m, x, c)
        (out * torch.randn_like(out)).sum().backward()
        for name, p in list(m.named_parameters()) + [("x", x)]:
            assert p.grad is not None and p.grad.abs().sum() > 0, (type(m).__name__, name)


def test_gradcheck_float64():
    torch.manual_seed(0)
    x = torch.randn(2, 3, D, dtype=torch.float64, requires_grad=True)
    c = torch.randn(2, 4, 6, dtype=torch.float64, requires_grad=True)
    self_attn = SelfAttention(D, 3, 2, bias=True).double()
    torch.autograd.gradcheck(lambda x: self_attn(x, is_causal=True)[0], (x,))
    simple = SimpleSelfAttention(scale=True)
    torch.autograd.gradcheck(lambda x: simple(x, is_causal=True)[0], (x,))
    cross = CrossAttention(D, 6, 3, 2).double()
    torch.autograd.gradcheck(lambda x, c: cross(x, c)[0], (x, c))


def test_fully_masked_rows_zero_output_finite_zero_gradient():
    for m, call in modules():
        x = torch.randn(B, T, D, requires_grad=True)
        c = torch.randn(B, TK, 6)
        tk = TK if isinstance(m, CrossAttention) else T
        mask = torch.ones(B, T, tk, dtype=torch.bool)
        mask[0, 4] = False
        out, w = call(m, x, c, mask=mask, need_weights=True)
        out.sum().backward()
        assert torch.equal(out[0, 4], torch.zeros_like(out[0, 4])) and torch.equal(w[0, 4], torch.zeros(tk))
        assert torch.isfinite(x.grad).all()
        assert all(torch.isfinite(p.grad).all() for p in m.parameters())
        if isinstance(m, CrossAttention):
            assert torch.equal(x.grad[0, 4], torch.zeros(D))


def test_bfloat16():
    for m, call in modules():
        x, c = torch.randn(B, T, D), torch.randn(B, TK, 6)
        ref, _ = call(m, x, c)
        m = m.to(torch.bfloat16)
        out, w = call(m, x.bfloat16(), c.bfloat16(), need_weights=True)
        assert out.dtype == torch.bfloat16 and w.dtype == torch.bfloat16
        torch.testing.assert_close(out.float(), ref, atol=5e-2, rtol=5e-2)


def test_bad_inputs_name_the_argument():
    m = SelfAttention(D, DQK, DV)
    x = torch.randn(B, T, D)
    with pytest.raises(ValueError, match=r"x must have shape \(B, T, d_model=4\)"):
        m(torch.randn(B, T, D + 1))
    with pytest.raises(ValueError, match="x must have at least 3 dimensions"):
        m(torch.randn(T, D))
    with pytest.raises(TypeError, match="mask must have dtype torch.bool"):
        m(x, mask=torch.ones(B, T, T))
    with pytest.raises(ValueError, match="mask of shape"):
        m(x, mask=torch.ones(B, T, T + 1, dtype=torch.bool))
    with pytest.raises(TypeError, match="is_causal must be a bool"):
        m(x, is_causal=1)
    with pytest.raises(ValueError, match="d_qk must be > 0"):
        SelfAttention(D, 0)
    with pytest.raises(ValueError, match="d_model must be > 0"):
        SelfAttention(0, DQK)
    with pytest.raises(ValueError, match="unknown score 'general'; valid scores: dot, scaled_dot"):
        SelfAttention(D, DQK, score="general")
    with pytest.raises(ValueError, match="unknown normalizer 'softmin'; valid normalizers:"):
        SelfAttention(D, DQK, normalizer="softmin")
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        SelfAttention(D, DQK, dropout=1.0)
    c = CrossAttention(D, 6, DQK)
    with pytest.raises(ValueError, match=r"context must have shape \(B, T, kv_dim=6\)"):
        c(x, torch.randn(B, TK, D))
    with pytest.raises(ValueError, match="context must have batch size B=3"):
        c(x, torch.randn(B - 1, TK, 6))
    with pytest.raises(ValueError, match="kv_dim must be > 0"):
        CrossAttention(D, 0, DQK)
    with pytest.raises(TypeError, match="scale must be a bool"):
        SimpleSelfAttention(scale=0.5)
