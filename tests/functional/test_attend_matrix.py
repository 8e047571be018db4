"""Every score x every normalizer through `attend`: the reliability rules of the foundation
issue hold for each combination, not just for softmax."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab.functional import NORMALIZERS, SCORES, attend, padding_mask

SAMPLING = {"hard", "gumbel"}  # their forward is a sample / argmax, not a smooth map


def score_kwargs(name, dq, dk, dtype=torch.float32, requires_grad=False):
    d = dict(dtype=dtype, requires_grad=requires_grad)
    return {
        "dot": {},
        "scaled_dot": {},
        "general": {"weight": torch.randn(dq, dk, **d)},
        "additive": {"w_q": torch.randn(6, dq, **d), "w_k": torch.randn(6, dk, **d), "v": torch.randn(6, **d)},
        "concat": {"weight": torch.randn(6, dq + dk, **d), "v": torch.randn(6, **d)},
    }[name]


def norm_kwargs(name):
    return {"generator": torch.Generator().manual_seed(0)} if name == "gumbel" else {}


@pytest.mark.parametrize("normalizer", sorted(NORMALIZERS))
@pytest.mark.parametrize("score", sorted(SCORES))
def test_fully_masked_rows_zero_output_and_grad(score, normalizer):
    torch.manual_seed(1)
    q = torch.randn(3, 5, 4, requires_grad=True)
    k = torch.randn(3, 7, 4, requires_grad=True)
    v = torch.randn(3, 7, 2, requires_grad=True)
    mask = padding_mask(torch.tensor([7, 3, 0]), 7, ndim=3)  # batch 2: no key at all
    out, w = attend(
        q, k, v, score=score, normalizer=normalizer, mask=mask, need_weights=True,
        score_kwargs=score_kwargs(score, 4, 4), normalizer_kwargs=norm_kwargs(normalizer),
    )
    assert torch.isfinite(out).all() and torch.isfinite(w).all()
    assert out[2].abs().max() == 0 and w[2].abs().max() == 0
    assert w[1, :, 3:].abs().max() == 0  # padded keys get no weight
    out.square().sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
        assert t.grad[2].abs().max() == 0


@pytest.mark.parametrize("normalizer", sorted(NORMALIZERS))
def test_huge_logits_stay_finite(normalizer):
    q = torch.full((2, 3, 4), 1e4, requires_grad=True)
    k = torch.randn(2, 5, 4) * 1e4
    v = torch.randn(2, 5, 3)
    out = attend(q, k, v, score="dot", normalizer=normalizer, normalizer_kwargs=norm_kwargs(normalizer)).output
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(q.grad).all()


@pytest.mark.parametrize("normalizer", sorted(set(NORMALIZERS) - SAMPLING))
def test_gradcheck_float64_through_attend(normalizer):
    torch.manual_seed(2)
    d = dict(dtype=torch.float64, requires_grad=True)
    q, k, v = torch.randn(2, 3, 4, **d), torch.randn(2, 5, 4, **d), torch.randn(2, 5, 3, **d)
    mask = padding_mask(torch.tensor([5, 2]), 5, ndim=3)

    def f(q, k, v):
        return attend(q, k, v, normalizer=normalizer, mask=mask).output

    assert torch.autograd.gradcheck(f, (q, k, v))


@pytest.mark.parametrize("normalizer", sorted(NORMALIZERS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_output_dtype_follows_input(normalizer, dtype):
    q, k, v = torch.randn(5, 4, dtype=dtype), torch.randn(7, 4, dtype=dtype), torch.randn(7, 3, dtype=dtype)
    out, w = attend(q, k, v, normalizer=normalizer, need_weights=True, normalizer_kwargs=norm_kwargs(normalizer))
    assert out.dtype == dtype and w.dtype == dtype


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(2, 9),
    seed=st.integers(0, 2**16),
    normalizer=st.sampled_from(sorted(set(NORMALIZERS) - SAMPLING)),
)
def test_self_attention_without_positions_is_permutation_equivariant(n, seed, normalizer):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g, dtype=torch.float64)
    perm = torch.randperm(n, generator=g)
    out = attend(x, x, x, normalizer=normalizer).output
    out_perm = attend(x[perm], x[perm], x[perm], normalizer=normalizer).output
    torch.testing.assert_close(out_perm, out[perm])
