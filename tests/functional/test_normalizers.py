"""Tests for attnlab.functional.normalizers.

References are independent of the implementation: hand-computed values, a bisection
solver written from the definitions of sparsemax / 1.5-entmax, per-row loops over the
allowed positions, and torch's own softmax/sigmoid.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab.functional.normalizers import (
    NORMALIZERS,
    entmax15,
    get_normalizer,
    gumbel_softmax,
    hard_argmax,
    relu_normalizer,
    sigmoid_normalizer,
    softmax,
    sparsemax,
)

ALL = sorted(NORMALIZERS)
SIMPLEX = ["softmax", "sparsemax", "entmax15", "hard", "gumbel"]  # rows sum to exactly 1 (up to rounding)
SMOOTH = ["softmax", "sparsemax", "entmax15", "sigmoid", "relu"]  # deterministic, a.e. differentiable


def _call(name, x, mask=None, dim=-1, seed=0, **kw):
    """Call a registered normalizer the way attend does; gumbel gets a fresh seeded generator."""
    fn = NORMALIZERS[name]
    if name == "gumbel":
        kw.setdefault("generator", torch.Generator().manual_seed(seed))
    return fn(x, mask=mask, dim=dim, **kw)


# ------------------------------------------------------------------ slow references


def _bisect_row(z: torch.Tensor, kind: str) -> torch.Tensor:
    """From the definition, for one 1-D float64 row:

    sparsemax: p_i = [z_i - tau]_+,        entmax15: p_i = [z_i / 2 - tau]_+^2,
    with tau found by bisection so that sum_i p_i = 1 (sum is decreasing in tau).
    """
    z = z.double()
    if kind == "sparsemax":
        u, power = z, 1
    else:
        u, power = z / 2, 2
    lo, hi = float(u.max()) - 1.0, float(u.max())  # sum(p(lo)) >= 1 >= sum(p(hi)) = 0
    for _ in range(200):
        mid = (lo + hi) / 2
        if float(torch.clamp(u - mid, min=0).pow(power).sum()) >= 1.0:
            lo = mid
        else:
            hi = mid
    return torch.clamp(u - (lo + hi) / 2, min=0).pow(power)


def _reference(x: torch.Tensor, kind: str, mask=None, dim=-1) -> torch.Tensor:
    """Row-by-row reference along ``dim``; masked entries are dropped, not filled."""
    xt = x.double().movedim(dim, -1)
    m = torch.ones_like(xt, dtype=torch.bool) if mask is None else mask.expand_as(x).movedim(dim, -1)
    out = torch.zeros(xt.shape, dtype=torch.float64)  # contiguous, so view() below works
    flat_x, flat_m, flat_o = xt.reshape(-1, xt.shape[-1]), m.reshape(-1, xt.shape[-1]), out.view(-1, xt.shape[-1])
    for r in range(flat_x.shape[0]):
        keep = flat_m[r]
        if keep.any():
            flat_o[r, keep] = _bisect_row(flat_x[r, keep], kind)
    return out.movedim(-1, dim)


# -------------------------------------------------------------- hand-checked values


def test_sparsemax_hand_checked():
    # sorted z = (1, .5, -1); cumsum - 1 = (0, .5, -.5); k z_(k) = (1, 1, -3) > cumsum - 1
    # for k = 1, 2 only -> support 2, tau = (1.5 - 1) / 2 = .25 -> p = (.75, .25, 0)
    torch.testing.assert_close(sparsemax(torch.tensor([1.0, 0.5, -1.0])), torch.tensor([0.75, 0.25, 0.0]))
    # a gap >= 1 to the runner-up gives a one-hot
    torch.testing.assert_close(sparsemax(torch.tensor([0.0, 3.0, 2.0])), torch.tensor([0.0, 1.0, 0.0]))
    # ties give uniform weights
    torch.testing.assert_close(sparsemax(torch.full((5,), 7.0)), torch.full((5,), 0.2))


def test_entmax15_hand_checked():
    # z/2 = (.5, .25, -.5); with support {1, 2}: (.5 - t)^2 + (.25 - t)^2 = 1
    # -> 2t^2 - 1.5t - .6875 = 0 -> t = (1.5 - sqrt(7.75)) / 4 ~ -0.32097 > -.5 (3rd is out)
    t = (1.5 - math.sqrt(7.75)) / 4
    expected = torch.tensor([(0.5 - t) ** 2, (0.25 - t) ** 2, 0.0], dtype=torch.float64)
    torch.testing.assert_close(entmax15(torch.tensor([1.0, 0.5, -1.0], dtype=torch.float64)), expected)
    torch.testing.assert_close(entmax15(torch.tensor([0.0, 5.0, 2.9])), torch.tensor([0.0, 1.0, 0.0]))


@pytest.mark.parametrize("kind,fn", [("sparsemax", sparsemax), ("entmax15", entmax15)])
@pytest.mark.parametrize("dim", [-1, 0, 1])
def test_sparse_maps_match_bisection(kind, fn, dim):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 5, 7, generator=g, dtype=torch.float64) * 2
    torch.testing.assert_close(fn(x, dim), _reference(x, kind, dim=dim), atol=1e-10, rtol=1e-8)
    # float32 agrees with the float64 reference too
    torch.testing.assert_close(fn(x.float(), dim=dim), _reference(x, kind, dim=dim).float(), atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("kind,fn", [("sparsemax", sparsemax), ("entmax15", entmax15)])
def test_masked_sparse_maps_equal_map_of_allowed_subset(kind, fn):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 5, 11, generator=g, dtype=torch.float64)
    mask = torch.rand(3, 5, 11, generator=g) > 0.4
    mask[0, 2] = False  # a fully masked row
    x = x.masked_fill(~mask, 1e4)  # masked scores that would take all the weight if they leaked
    torch.testing.assert_close(fn(x, mask=mask), _reference(x, kind, mask=mask), atol=1e-10, rtol=1e-8)
    # a broadcast key mask (..., 1, Tk) along another dim
    kmask = torch.rand(3, 1, 11, generator=g) > 0.3
    torch.testing.assert_close(fn(x, mask=kmask), _reference(x, kind, mask=kmask), atol=1e-10, rtol=1e-8)


# ---------------------------------------------------------------- property tests

_rows = st.lists(st.floats(-50, 50, allow_nan=False, allow_infinity=False, width=32), min_size=1, max_size=11)


@settings(max_examples=40, deadline=None)
@given(_rows)
def test_sparse_maps_on_simplex_sparse_and_monotone(row):
    z = torch.tensor(row, dtype=torch.float64)
    zmax = z.max()
    for fn, reach in ((sparsemax, 1.0), (entmax15, 2.0)):
        p = fn(z)
        assert (p >= 0).all()
        assert abs(float(p.sum()) - 1.0) < 1e-9
        # sparsity: a score at least `reach` below the maximum gets exactly zero weight
        assert (p[z <= zmax - reach] == 0).all()
        # the maximum always gets weight; order is preserved
        assert p[z.argmax()] > 0
        order = torch.argsort(z)
        assert (p[order].diff() >= -1e-12).all()
        # shift invariance
        torch.testing.assert_close(fn(z + 3.25), p, atol=1e-9, rtol=0)


@settings(max_examples=30, deadline=None)
@given(_rows, st.integers(0, 2**31 - 1))
def test_all_simplex_normalizers_masked_rows_on_simplex(row, seed):
    z = torch.tensor(row, dtype=torch.float32)
    mask = torch.rand(z.shape, generator=torch.Generator().manual_seed(seed)) > 0.5
    for name in SIMPLEX:
        w = _call(name, z, mask=mask, seed=seed)
        assert torch.isfinite(w).all(), name
        assert (w[~mask] == 0).all(), name
        assert (w >= 0).all(), name
        expected = 1.0 if mask.any() else 0.0
        assert abs(float(w.sum()) - expected) < 1e-5, name


# --------------------------------------------------------------------- gradients


def _gradcheck_inputs(seed=3):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(3, 5, 7, generator=g, dtype=torch.float64) * 1.5).requires_grad_()
    mask = torch.rand(3, 5, 7, generator=g) > 0.3
    mask[..., 0] = True  # every other row keeps at least one position
    mask[1, 3] = False  # one fully masked row
    return x, mask


@pytest.mark.parametrize("name", SMOOTH + ["gumbel"])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("dim", [-1, 1])
def test_gradcheck_float64(name, masked, dim):
    x, mask = _gradcheck_inputs()
    m = mask if masked else None
    # gumbel: a fresh generator with the same seed on each call makes the noise fixed
    assert torch.autograd.gradcheck(lambda t: _call(name, t, mask=m, dim=dim, seed=5), (x,), eps=1e-6, atol=1e-5, fast_mode=True)


@pytest.mark.parametrize("fn", [sparsemax, entmax15])
def test_custom_backward_saves_only_the_output(fn):
    x = torch.randn(3, 5, 7, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = fn(x)
    assert len(saved) == 1 and saved[0].shape == y.shape


@pytest.mark.parametrize("masked", [False, True])
def test_hard_straight_through_gradient_equals_softmax(masked):
    x, mask = _gradcheck_inputs(4)
    m = mask if masked else None
    up = torch.randn(x.shape, dtype=torch.float64)
    (g_hard,) = torch.autograd.grad((hard_argmax(x, mask=m) * up).sum(), x)
    (g_soft,) = torch.autograd.grad((softmax(x, mask=m) * up).sum(), x)
    torch.testing.assert_close(g_hard, g_soft)
    assert g_hard.abs().sum() > 0


def test_gumbel_hard_gradient_equals_soft_gumbel_gradient():
    x, mask = _gradcheck_inputs(5)
    up = torch.randn(x.shape, dtype=torch.float64)
    grads = []
    for hard in (True, False):
        y = _call("gumbel", x, mask=mask, seed=9, hard=hard, tau=0.7)
        grads.append(torch.autograd.grad((y * up).sum(), x)[0])
    torch.testing.assert_close(grads[0], grads[1])
    assert grads[0].abs().sum() > 0


@pytest.mark.parametrize("name", ALL)
def test_fully_masked_rows_give_zeros_and_zero_grad(name):
    x = torch.randn(3, 5, 7, dtype=torch.float32).mul(100).requires_grad_()
    mask = torch.ones(3, 5, 7, dtype=torch.bool)
    mask[0, 1] = False
    mask[2] = False
    w = _call(name, x, mask=mask)
    assert torch.isfinite(w).all()
    assert (w[0, 1] == 0).all() and (w[2] == 0).all()
    w.pow(2).sum().backward()  # a non-trivial upstream gradient everywhere
    assert torch.isfinite(x.grad).all()
    assert (x.grad[0, 1] == 0).all() and (x.grad[2] == 0).all()


# ------------------------------------------------------------- numerics and dtypes


@pytest.mark.parametrize("name", ALL)
def test_large_logits_stay_finite(name):
    x = torch.tensor([[1e4, 0.0, -1e4, 1e4 - 0.5, 5e3], [-1e4, -1e4 + 1, -2e4, 3.0, -3.0]], requires_grad=True)
    mask = torch.tensor([[True, True, True, True, False], [True, True, True, True, True]])
    for m in (None, mask):
        w = _call(name, x, mask=m)
        assert torch.isfinite(w).all()
        assert torch.isfinite(torch.autograd.grad((w * w).sum(), x)[0]).all()
        if name in SIMPLEX:
            torch.testing.assert_close(w.sum(-1), torch.ones(2))


def test_large_logit_values():
    x = torch.tensor([1e4, 0.0, -1e4, 1e4 - 0.5])
    torch.testing.assert_close(sparsemax(x), torch.tensor([0.75, 0.0, 0.0, 0.25]))
    # z/2 = (0, ., ., -.25): (-t)^2 + (-.25 - t)^2 = 1 -> t = (-.25 - sqrt(1.9375)) / 2
    t = (-0.25 - math.sqrt(1.9375)) / 2
    torch.testing.assert_close(entmax15(x), torch.tensor([t * t, 0.0, 0.0, (0.25 + t) ** 2]))
    torch.testing.assert_close(hard_argmax(x), torch.tensor([1.0, 0.0, 0.0, 0.0]))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_in_same_dtype_out(name, dtype):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(3, 5, 7, generator=g).to(dtype)
    mask = torch.rand(3, 5, 7, generator=g) > 0.3
    w = _call(name, x, mask=mask)
    assert w.dtype == dtype
    ref = _call(name, x.float(), mask=mask)  # same values, computed in float32
    torch.testing.assert_close(w, ref.to(dtype))


@pytest.mark.parametrize("name", ALL)
def test_any_dim_matches_last_dim(name):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(3, 5, 7, 11, generator=g)
    mask = torch.rand(3, 5, 7, 11, generator=g) > 0.3
    for dim in (0, 1, 2, -3):
        got = _call(name, x, mask=mask, dim=dim, seed=1)
        if name == "gumbel":  # the noise is laid out differently; check the contract instead
            torch.testing.assert_close(got.sum(dim), mask.any(dim).float())
            assert (got[~mask] == 0).all()
            continue
        want = _call(name, x.movedim(dim, -1), mask=mask.movedim(dim, -1)).movedim(-1, dim)
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name", ALL)
def test_mask_with_fewer_dims(name):
    x = torch.randn(3, 5, 7)
    kmask = torch.tensor([True, False, True, True, False, True, True])  # (Tk,)
    full = kmask.expand(3, 5, 7)
    torch.testing.assert_close(_call(name, x, mask=kmask), _call(name, x, mask=full))
    rmask = torch.tensor([True, False, True])  # (3,): masks the last dim while normalizing along dim 0
    xt = x.transpose(0, 2)  # (7, 5, 3)
    torch.testing.assert_close(_call(name, xt, mask=rmask, dim=0), _call(name, xt, mask=rmask.expand(7, 5, 3), dim=0))


def test_positional_dim_and_keyword_only_mask():
    x = torch.randn(5, 7)
    torch.testing.assert_close(sparsemax(x, 0), sparsemax(x.t()).t())
    torch.testing.assert_close(entmax15(x, 0), entmax15(x.t()).t())
    with pytest.raises(TypeError):
        sparsemax(x, -1, torch.ones(5, 7, dtype=torch.bool))


def test_empty_dim():
    for name in ALL:
        assert _call(name, torch.randn(3, 0)).shape == (3, 0)


# ---------------------------------------------------------- sigmoid, relu, hard, gumbel


def test_sigmoid_is_elementwise_and_not_normalized():
    x = torch.randn(3, 5, 7)
    mask = torch.rand(3, 5, 7) > 0.3
    torch.testing.assert_close(sigmoid_normalizer(x, mask=mask), torch.sigmoid(x) * mask)
    assert not torch.allclose(sigmoid_normalizer(x).sum(-1), torch.ones(3, 5))


def test_relu_normalizer_values():
    x = torch.tensor([[2.0, -1.0, 1.0, 0.0, 5.0], [-1.0, -2.0, 0.0, -3.0, -0.5]])
    mask = torch.tensor([True, True, True, True, False])
    eps = 1e-6
    torch.testing.assert_close(relu_normalizer(x)[0], torch.tensor([2.0, 0, 1, 0, 5]) / (8 + eps))
    torch.testing.assert_close(relu_normalizer(x, mask=mask)[0], torch.tensor([2.0, 0, 1, 0, 0]) / (3 + eps))
    assert (relu_normalizer(x)[1] == 0).all()  # no positive score: zeros, not NaN
    torch.testing.assert_close(relu_normalizer(x, eps=1.0)[0], torch.tensor([2.0, 0, 1, 0, 5]) / 9)


def test_hard_argmax_forward_is_exact_one_hot_of_allowed():
    x = torch.tensor([[0.1, 3.0, 2.0, -1.0, 0.7], [0.3, 0.2, 0.1, 0.0, 9.0]])
    mask = torch.tensor([[True, False, True, True, True], [True, True, True, True, True]])
    w = hard_argmax(x, mask=mask)
    assert torch.equal(w, torch.tensor([[0.0, 0, 1, 0, 0], [0, 0, 0, 0, 1]]))


def test_gumbel_reproducible_and_respects_mask():
    x = torch.randn(3, 5, 7)
    mask = torch.rand(3, 5, 7) > 0.4
    mask[0, 0] = False
    a = gumbel_softmax(x, mask=mask, generator=torch.Generator().manual_seed(11))
    b = gumbel_softmax(x, mask=mask, generator=torch.Generator().manual_seed(11))
    c = gumbel_softmax(x, mask=mask, generator=torch.Generator().manual_seed(12))
    assert torch.equal(a, b) and not torch.equal(a, c)
    h = gumbel_softmax(x, mask=mask, hard=True, generator=torch.Generator().manual_seed(11))
    assert set(h.unique().tolist()) <= {0.0, 1.0}
    assert (h[~mask] == 0).all()
    torch.testing.assert_close(h.sum(-1), mask.any(-1).float())
    # hard picks the argmax of the same soft sample
    assert torch.equal(h.argmax(-1)[mask.any(-1)], a.argmax(-1)[mask.any(-1)])


def test_gumbel_hard_samples_follow_softmax():
    logits = torch.tensor([1.0, 0.0, -1.0, 2.0, 0.5])
    mask = torch.tensor([True, True, False, True, True])
    n = 20000
    h = gumbel_softmax(logits.expand(n, 5), mask=mask, hard=True, generator=torch.Generator().manual_seed(0))
    freq = h.mean(0)
    # 4 sigma of a Bernoulli mean with n = 20000 is < 0.015
    torch.testing.assert_close(freq, softmax(logits, mask=mask), atol=0.015, rtol=0)
    assert freq[2] == 0


def test_gumbel_low_temperature_is_nearly_one_hot():
    x = torch.randn(5, 7)
    w = gumbel_softmax(x, tau=1e-3, generator=torch.Generator().manual_seed(0))
    assert (w.max(-1).values > 0.99).all()


# ----------------------------------------------------------------- registry and errors


def test_registry_names_and_lookup():
    assert set(NORMALIZERS) == {"softmax", "sparsemax", "entmax15", "sigmoid", "relu", "hard", "gumbel"}
    assert get_normalizer("entmax15") is entmax15
    f = lambda s, mask=None, dim=-1: s  # noqa: E731
    assert get_normalizer(f) is f
    with pytest.raises(ValueError, match=r"unknown normalizer 'softmaxx'.*entmax15.*gumbel.*sparsemax"):
        get_normalizer("softmaxx")


@pytest.mark.parametrize("name", ALL)
def test_bad_inputs_name_the_argument(name):
    x = torch.randn(3, 5)
    with pytest.raises(TypeError, match="mask must have dtype torch.bool"):
        _call(name, x, mask=torch.ones(3, 5))
    with pytest.raises(ValueError, match="mask of shape \\(3, 7\\) does not broadcast"):
        _call(name, x, mask=torch.ones(3, 7, dtype=torch.bool))
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        _call(name, [[1.0, 2.0]])
    with pytest.raises(TypeError, match="floating-point"):
        _call(name, torch.ones(3, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"dim must be in \[-2, 1\]"):
        _call(name, x, dim=2)
    with pytest.raises(TypeError, match="dim must be an int"):
        _call(name, x, dim=1.0)


def test_bad_normalizer_kwargs():
    x = torch.randn(3, 5)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        sparsemax([1.0])
    with pytest.raises(ValueError, match="tau must be a positive"):
        gumbel_softmax(x, tau=0.0)
    with pytest.raises(TypeError, match="hard must be a bool"):
        gumbel_softmax(x, hard=1)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        gumbel_softmax(x, generator=0)
    with pytest.raises(ValueError, match="eps must be a positive"):
        relu_normalizer(x, eps=-1e-3)
