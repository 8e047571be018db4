import math

import pytest
import torch
import torch.nn.functional as TF

from attnlab.functional import attend, causal_mask, padding_mask


def loop_attention(q, k, v, allowed=None, bias=None):
    # The textbook definition, one query at a time: alpha = softmax(q.k / sqrt(d)), z = sum alpha v.
    Tq, Tk = q.shape[0], k.shape[0]
    out = torch.zeros(Tq, v.shape[1], dtype=q.dtype)
    for i in range(Tq):
        s = torch.stack([q[i] @ k[j] / math.sqrt(q.shape[1]) for j in range(Tk)])
        if bias is not None:
            s = s + bias[i]
        keep = torch.ones(Tk, dtype=torch.bool) if allowed is None else allowed[i]
        if keep.any():
            a = torch.softmax(s[keep], 0)
            out[i] = a @ v[keep]
    return out


def test_matches_textbook_loop_and_sdpa():
    q, k, v = torch.randn(5, 7), torch.randn(11, 7), torch.randn(11, 3)
    out, w = attend(q, k, v, need_weights=True)
    torch.testing.assert_close(out, loop_attention(q, k, v))
    torch.testing.assert_close(w.sum(-1), torch.ones(5))
    qb, kb, vb = torch.randn(2, 3, 5, 7), torch.randn(2, 3, 11, 7), torch.randn(2, 3, 11, 4)
    torch.testing.assert_close(attend(qb, kb, vb).output, TF.scaled_dot_product_attention(qb, kb, vb))


def test_mask_and_bias_match_loop():
    q, k, v = torch.randn(5, 7), torch.randn(5, 7), torch.randn(5, 3)
    allowed = causal_mask(5)
    bias = torch.randn(5, 5)
    out = attend(q, k, v, mask=allowed, bias=bias).output
    torch.testing.assert_close(out, loop_attention(q, k, v, allowed, bias))


def test_fully_masked_rows_give_zero_output_and_gradient():
    q = torch.randn(2, 5, 4, requires_grad=True)
    k = torch.randn(2, 7, 4, requires_grad=True)
    v = torch.randn(2, 7, 3, requires_grad=True)
    mask = padding_mask(torch.tensor([7, 0]), 7, ndim=3)  # batch 1 has no keys at all
    out, w = attend(q, k, v, mask=mask, need_weights=True)
    assert torch.isfinite(out).all()
    assert out[1].abs().max() == 0 and w[1].abs().max() == 0
    out.sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert q.grad[1].abs().max() == 0 and k.grad[1].abs().max() == 0 and v.grad[1].abs().max() == 0


def test_neg_inf_float_mask_is_a_mask():
    q, k, v = torch.randn(3, 4), torch.randn(5, 4), torch.randn(5, 2)
    bias = torch.zeros(3, 5)
    bias[0] = float("-inf")  # fully masked row through a float mask
    bias[1, 2:] = float("-inf")
    out = attend(q, k, v, bias=bias).output
    assert torch.isfinite(out).all() and out[0].abs().max() == 0
    torch.testing.assert_close(out[1], attend(q[1:2], k[:2], v[:2]).output[0])


def test_large_logits_stay_finite():
    q, k, v = torch.full((3, 4), 1e4), torch.randn(5, 4) * 1e4, torch.randn(5, 2)
    out = attend(q, k, v, score="dot").output
    assert torch.isfinite(out).all()


def test_dropout_only_in_training_and_seeded():
    q, k, v = torch.randn(5, 4), torch.randn(7, 4), torch.randn(7, 3)
    base = attend(q, k, v, dropout_p=0.5, training=False).output
    torch.testing.assert_close(base, attend(q, k, v).output)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = attend(q, k, v, dropout_p=0.5, training=True, generator=g1).output
    b = attend(q, k, v, dropout_p=0.5, training=True, generator=g2).output
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, base)


def test_parameterized_scores_through_attend():
    q, k, v = torch.randn(5, 3), torch.randn(7, 4), torch.randn(7, 2)
    w = torch.randn(3, 4)
    out, wts = attend(q, k, v, score="general", score_kwargs={"weight": w}, need_weights=True)
    ref = torch.softmax(q @ w @ k.T, -1)
    torch.testing.assert_close(wts, ref)
    torch.testing.assert_close(out, ref @ v)


def test_gradcheck_float64_with_mask_and_bias():
    d = dict(dtype=torch.float64, requires_grad=True)
    q, k, v = torch.randn(2, 3, 4, **d), torch.randn(2, 5, 4, **d), torch.randn(2, 5, 3, **d)
    bias = torch.randn(3, 5, **d)
    mask = causal_mask(3, 5)

    assert torch.autograd.gradcheck(lambda q, k, v, b: attend(q, k, v, mask=mask, bias=b).output, (q, k, v, bias))


def test_bf16_output_follows_input():
    q, k, v = (torch.randn(5, 8, dtype=torch.bfloat16) for _ in range(3))
    out, w = attend(q, k, v, need_weights=True)
    assert out.dtype == torch.bfloat16 and w.dtype == torch.bfloat16
    ref = attend(q.float(), k.float(), v.float()).output
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)


def test_bad_inputs_name_the_argument():
    q, k, v = torch.randn(5, 4), torch.randn(7, 4), torch.randn(7, 3)
    with pytest.raises(ValueError, match="k and v must have the same number of keys"):
        attend(q, k, torch.randn(6, 3))
    with pytest.raises(TypeError, match="mask must have dtype torch.bool"):
        attend(q, k, v, mask=torch.ones(5, 7))
    with pytest.raises(ValueError, match=r"mask of shape \(4, 7\) does not broadcast"):
        attend(q, k, v, mask=torch.ones(4, 7, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"bias of shape \(5, 6\) does not broadcast"):
        attend(q, k, v, bias=torch.zeros(5, 6))
    with pytest.raises(ValueError, match="unknown normalizer 'softermax'"):
        attend(q, k, v, normalizer="softermax")
    with pytest.raises(ValueError, match=r"dropout_p must be in \[0, 1\)"):
        attend(q, k, v, dropout_p=1.5)
    with pytest.raises(ValueError, match="empty query axis"):
        attend(torch.randn(0, 4), k, v)
    with pytest.raises(TypeError, match="v must be a torch.Tensor"):
        attend(q, k, [1.0])
