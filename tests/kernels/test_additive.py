"""The fused additive-attention kernel against the readable reference ``attend(score="additive")``."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab.functional import attend, causal_mask, padding_mask
from attnlab.kernels import additive as K
from attnlab.kernels.additive import additive_attention

B, TQ, DQ, DK, HID, DV = 3, 5, 5, 3, 13, 4
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float64: dict(atol=1e-10, rtol=1e-10)}


def make(Tk=7, *, dtype=torch.float32, B=B, Tq=TQ, bias=True, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, s=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * s).to(dtype).requires_grad_()

    q, k, v = r(B, Tq, DQ), r(B, Tk, DK), r(B, Tk, DV)
    w_q, w_k, v_att = r(HID, DQ, s=0.7), r(HID, DK, s=0.7), r(HID, s=scale)
    b = r(HID, s=0.5) if bias else None
    return q, k, v, w_q, w_k, v_att, b


def reference(q, k, v, w_q, w_k, v_att, b, mask=None, need_weights=True):
    kw = dict(w_q=w_q, w_k=w_k, v=v_att, bias=b)
    return attend(q, k, v, score="additive", score_kwargs=kw, mask=mask, need_weights=need_weights)


def ref_mask(Bn, Tq, Tk, mask=None, key_lengths=None, causal=False):
    """The kernel's cheap masks spelled out as one dense bool mask (True = may attend)."""
    m = torch.ones(Bn, Tq, Tk, dtype=torch.bool)
    if mask is not None:
        m = m & mask
    if key_lengths is not None:
        m = m & padding_mask(key_lengths, Tk, ndim=3)
    if causal:
        m = m & causal_mask(Tq, Tk)
    return m


def check_against_reference(args, *, mask=None, key_lengths=None, causal=False, dtype=torch.float32):
    q, k = args[0], args[1]
    out, w = additive_attention(*args, mask=mask, key_lengths=key_lengths, causal=causal, need_weights=True)
    m = ref_mask(q.shape[0], q.shape[1], k.shape[1], mask, key_lengths, causal)
    ref_out, ref_w = reference(*args, mask=m)
    tol = TOL[dtype]
    torch.testing.assert_close(out, ref_out, **tol)
    torch.testing.assert_close(w, ref_w, **tol)
    params = [a for a in args if a is not None]
    g_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    got = torch.autograd.grad((out * g_out).sum(), params)
    want = torch.autograd.grad((ref_out * g_out).sum(), params)
    names = ["q", "k", "v", "w_q", "w_k", "v_att", "bias"]
    for name, a, e in zip(names, got, want):
        torch.testing.assert_close(a, e, **tol, msg=lambda s, name=name: f"grad of {name}: {s}")
    return out, w, m


# ------------------------------------------------------------------------------ tanh


def test_rational_tanh_float32_accuracy():
    x = np.concatenate(
        [np.linspace(-20, 20, 200_001), 10.0 ** np.linspace(-30, 1.5, 2001), -(10.0 ** np.linspace(-30, 1.5, 2001))]
    ).astype(np.float32)
    got = K.fast_tanh(x).astype(np.float64)
    exact = np.tanh(x.astype(np.float64))
    rel = np.abs(got - exact) / np.maximum(np.abs(exact), 1e-38)
    assert rel.max() < 1e-6
    assert np.abs(got).max() <= 1.0  # so 1 - tanh^2 in the backward is never negative


def test_product_form_tanh_is_accurate_over_its_whole_range():
    # tanh(a + b) = 1 - 2 / (1 + e^{2a} e^{2b}) for |a|, |b| <= 40, including large a and b
    # of opposite sign, and E F overflowing to inf / underflowing to 0 (tanh = +-1).
    grid = np.concatenate([np.linspace(-40, 40, 801), [-40.0, -39.9, -9.0, -1e-4, 0.0, 1e-4, 9.0, 39.9, 40.0]])
    a, b = (g.ravel().astype(np.float32) for g in np.meshgrid(grid, grid))
    one = np.float32(1.0)
    got = np.array(
        [K._score(np.exp(2 * a[idx : idx + 1]), np.exp(2 * b[idx : idx + 1]), np.ones(1, np.float32), one, True, np.float32(0), one, np.float32(2))
         for idx in range(0, a.size, 97)]
    )  # fmt: skip
    exact = np.tanh(a[::97].astype(np.float64) + b[::97].astype(np.float64))
    assert np.abs(got - exact).max() < 3e-7  # absolute: what a sum of v_h t_h needs
    assert np.abs(got).max() <= 1.0


def test_float64_tanh_is_exact_libm():
    x = np.linspace(-5, 5, 1001)
    np.testing.assert_allclose(K.fast_tanh(x), np.tanh(x), rtol=1e-15, atol=0)


# ----------------------------------------------------------------- which tanh loop runs


@pytest.fixture
def paths(monkeypatch):
    """Records the ``prod`` flag of every forward-kernel call (True: the e^{2a} e^{2b} form)."""
    seen = []
    kernel = K._forward_kernel

    def spy(*args):
        seen.append(args[4])
        return kernel(*args)

    monkeypatch.setattr(K, "_forward_kernel", spy)
    return seen


def test_path_choice(paths):
    additive_attention(*make(7))
    additive_attention(*make(7, dtype=torch.float64))
    q, k, v, w_q, w_k, v_att, b = make(7)
    additive_attention(q, k, v, w_q * 100, w_k, v_att, b)  # |pq| > 40: e^{2 pq} would overflow
    assert paths == [True, False, False]


def test_large_projections_use_rational_tanh_and_match_reference(paths):
    q, k, v, w_q, w_k, v_att, b = make(11)
    w_q = (w_q.detach() * 15).requires_grad_()  # max |pq| ~ 60 > 40
    w_k = (w_k.detach() * 0.05).requires_grad_()  # keys near 0, so not every tanh saturates
    args = [q, k, v, w_q, w_k, v_att, b]
    out, w = additive_attention(*args, causal=True, need_weights=True)
    assert paths == [False]
    # Against float64 math: with weights this large float32 rounding of the reference
    # itself is ~1e-5, so compare both with a tolerance scaled to each gradient.
    args64 = [a.detach().double().requires_grad_() for a in args]
    ref_out, ref_w = reference(*args64, mask=causal_mask(TQ, 11))
    torch.testing.assert_close(out.double(), ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w.double(), ref_w, atol=1e-5, rtol=1e-5)
    got = torch.autograd.grad(out.sum(), args)
    want = torch.autograd.grad(ref_out.sum(), args64)
    for a, e in zip(got, want):
        torch.testing.assert_close(a.double(), e, atol=5e-5 * float(e.abs().max()), rtol=1e-4)


@pytest.mark.parametrize("causal", [False, True])
def test_product_form_in_float64_matches_reference_and_gradcheck(monkeypatch, paths, causal):
    monkeypatch.setitem(K._PRODUCT_BOUND, torch.float64, 300.0)  # exercise its derivative exactly
    mask = torch.rand(B, TQ, 11, generator=torch.Generator().manual_seed(6)) > 0.3
    check_against_reference(make(11, dtype=torch.float64), mask=mask, causal=causal, dtype=torch.float64)
    args = make(7, dtype=torch.float64, B=2, Tq=4)

    def f(*xs):
        return additive_attention(*xs, key_lengths=torch.tensor([7, 3]), causal=causal, need_weights=True)

    assert torch.autograd.gradcheck(f, args)
    assert paths and all(paths)


def test_nan_input_propagates_instead_of_reading_as_masked():
    q, k, v, w_q, w_k, v_att, b = (a.detach() for a in make(7))
    q[0, 1, 0] = float("nan")
    out, _ = additive_attention(q, k, v, w_q, w_k, v_att, b)
    assert torch.isnan(out[0, 1]).all()
    assert torch.isfinite(out[1:]).all() and torch.isfinite(out[0, [0, 2, 3, 4]]).all()


# ------------------------------------------------------------------- values and grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("Tk", [7, 11])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_reference_unmasked(dtype, Tk, bias):
    check_against_reference(make(Tk, dtype=dtype, bias=bias), dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("Tk", [7, 11])
def test_matches_reference_with_dense_mask(dtype, Tk):
    g = torch.Generator().manual_seed(3)
    mask = torch.rand(B, TQ, Tk, generator=g) > 0.4
    mask[1, 2] = False  # one fully masked query row
    out, w, _ = check_against_reference(make(Tk, dtype=dtype), mask=mask, dtype=dtype)
    assert torch.all(out[1, 2] == 0) and torch.all(w[1, 2] == 0)


@pytest.mark.parametrize("mask_shape", [(11,), (TQ, 11), (B, 1, 11), (1, TQ, 1)])
def test_broadcast_masks(mask_shape):
    mask = torch.rand(mask_shape, generator=torch.Generator().manual_seed(4)) > 0.3
    check_against_reference(make(11), mask=mask)


def test_key_lengths_with_empty_sequence():
    args = make(7)
    key_lengths = torch.tensor([7, 0, 3])  # batch 1: every key is padding
    out, w, _ = check_against_reference(args, key_lengths=key_lengths)
    assert torch.all(out[1] == 0) and torch.all(w[1] == 0)
    assert torch.all(w[2, :, 3:] == 0)


@pytest.mark.parametrize("Tq, Tk", [(5, 7), (5, 5), (11, 7)])
def test_causal_offsets(Tq, Tk):
    # Tk > Tq: queries are the last Tq positions; Tq > Tk: the first Tq - Tk rows see nothing.
    args = make(Tk, Tq=Tq, dtype=torch.float64)
    out, w, _ = check_against_reference(args, causal=True, dtype=torch.float64)
    if Tq > Tk:
        assert torch.all(out[:, : Tq - Tk] == 0)
    assert torch.all(w.triu(Tk - Tq + 1) == 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_all_masks_combined(dtype):
    mask = torch.rand(B, TQ, 11, generator=torch.Generator().manual_seed(5)) > 0.3
    check_against_reference(make(11, dtype=dtype), mask=mask, key_lengths=torch.tensor([11, 4, 1]), causal=True, dtype=dtype)


def test_fully_masked_everything_gives_zeros_and_zero_grads():
    args = make(7)
    mask = torch.zeros(B, TQ, 7, dtype=torch.bool)
    out, w = additive_attention(*args, mask=mask, need_weights=True)
    assert torch.all(out == 0) and torch.all(w == 0)
    (out.sum() + w.sum()).backward()
    for a in args:
        assert a.grad is not None and torch.all(a.grad == 0)


def test_fully_masked_row_leaves_other_rows_gradients_intact():
    args = make(7, dtype=torch.float64)
    mask = torch.ones(B, TQ, 7, dtype=torch.bool)
    mask[0, 1] = False
    out, _ = additive_attention(*args, mask=mask)
    out.sum().backward()
    q = args[0]
    assert torch.all(q.grad[0, 1] == 0)
    assert torch.all(q.grad[0, 0] != 0) and torch.isfinite(q.grad).all()


@given(
    Bn=st.integers(1, 3),
    Tq=st.integers(1, 6),
    Tk=st.integers(1, 9),
    causal=st.booleans(),
    use_lengths=st.booleans(),
    mask_p=st.sampled_from([None, 0.3, 0.8]),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=30, deadline=None)
def test_random_shapes_and_masks_match_reference(Bn, Tq, Tk, causal, use_lengths, mask_p, seed):
    g = torch.Generator().manual_seed(seed)
    args = make(Tk, B=Bn, Tq=Tq, dtype=torch.float64, seed=seed)
    mask = torch.rand(Bn, Tq, Tk, generator=g) > mask_p if mask_p is not None else None
    key_lengths = torch.randint(0, Tk + 1, (Bn,), generator=g) if use_lengths else None
    check_against_reference(args, mask=mask, key_lengths=key_lengths, causal=causal, dtype=torch.float64)


@pytest.mark.parametrize("Bn", [1, 3, 8])  # stripes per batch entry: several (1, 3) or one (8)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_parallel_path_matches_reference(monkeypatch, Bn, dtype):
    monkeypatch.setattr(K, "_SERIAL_WORK", 0)  # tiny shapes run serially unless told otherwise
    g = torch.Generator().manual_seed(9)
    mask = torch.rand(Bn, 11, 7, generator=g) > 0.2
    lengths = torch.randint(0, 8, (Bn,), generator=g)
    args = make(7, B=Bn, Tq=11, dtype=dtype, seed=Bn)
    check_against_reference(args, mask=mask, key_lengths=lengths, causal=True, dtype=dtype)
    check_against_reference(args, dtype=dtype)


# ----------------------------------------------------------------------------- weights


def test_need_weights_false_returns_none():
    out, w = additive_attention(*make(7))
    assert w is None and out.shape == (B, TQ, DV)


def test_weights_rows_sum_to_one_or_zero_and_have_reference_gradient():
    args = make(11, dtype=torch.float64)
    key_lengths = torch.tensor([11, 0, 6])
    out, w = additive_attention(*args, key_lengths=key_lengths, need_weights=True)
    sums = w.sum(-1)
    torch.testing.assert_close(sums[[0, 2]], torch.ones(2, TQ, dtype=torch.float64))
    assert torch.all(sums[1] == 0)
    m = ref_mask(B, TQ, 11, key_lengths=key_lengths)
    ref_out, ref_w = reference(*args, mask=m)
    # A loss on the weights alone (coverage / attention supervision) and on both outputs.
    g_w = torch.randn(w.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for loss, ref_loss in [((w * g_w).sum(), (ref_w * g_w).sum()), ((w * g_w).sum() + out.sum(), (ref_w * g_w).sum() + ref_out.sum())]:
        got = torch.autograd.grad(loss, args, retain_graph=True, allow_unused=True)
        want = torch.autograd.grad(ref_loss, args, retain_graph=True, allow_unused=True)
        for x, a, e in zip(args, got, want):  # v is unused by a weights-only loss: None or zeros
            a = torch.zeros_like(x) if a is None else a
            e = torch.zeros_like(x) if e is None else e
            torch.testing.assert_close(a, e, **TOL[torch.float64])


# ---------------------------------------------------------------------------- gradcheck


def test_gradcheck_public_function_float64():
    args = make(7, dtype=torch.float64, B=2, Tq=4)
    lengths = torch.tensor([7, 5])

    def f(*xs):
        return additive_attention(*xs, key_lengths=lengths, causal=True, need_weights=True)

    assert torch.autograd.gradcheck(f, args)


def test_gradcheck_autograd_function_float64():
    g = torch.Generator().manual_seed(7)
    d = dict(dtype=torch.float64, requires_grad=True)
    N, Tq, Tk, H, Dv = 3, 4, 5, 6, 2
    pq = torch.randn(N, Tq, H, generator=g, dtype=torch.float64).requires_grad_()
    pk = torch.randn(N, Tk, H, generator=g, dtype=torch.float64).requires_grad_()
    v_att = torch.randn(H, generator=g, **d)
    V = torch.randn(N, Tk, Dv, generator=g, **d)
    mask = torch.rand(N, Tq, Tk, generator=g) > 0.3
    mask[0, 0] = False  # a fully masked row has zero (not NaN) gradient
    mask_np, mask_b, has = K._mask_arrays(mask, (N,), Tq, Tk)
    limits = K._KeyLimits(K._key_lengths(None, (N,), Tk), False, mask_np, mask_b, has)

    def f(a, b, c, e):
        return K._AdditiveAttentionFn.apply(a, b, c, e, limits, True)

    assert torch.autograd.gradcheck(f, (pq, pk, v_att, V))


def test_second_derivative_raises_instead_of_returning_wrong_numbers():
    args = make(7, dtype=torch.float64)
    out, _ = additive_attention(*args)
    with pytest.raises(RuntimeError, match="no second derivative"):
        torch.autograd.grad(out.sum(), args[0], create_graph=True)


# ------------------------------------------------------------------- dtypes and layouts


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_computes_in_float32_and_returns_input_dtype(dtype):
    args = make(7, dtype=dtype)
    out, w = additive_attention(*args, causal=True, need_weights=True)
    assert out.dtype == dtype and w.dtype == dtype
    up = [a.detach().float() for a in args]
    ref_out, ref_w = additive_attention(*up, causal=True, need_weights=True)
    torch.testing.assert_close(out, ref_out.to(dtype))
    torch.testing.assert_close(w, ref_w.to(dtype))
    out.float().sum().backward()
    assert args[0].grad.dtype == dtype and torch.isfinite(args[0].grad.float()).all()


def test_leading_batch_dims_broadcast_and_expanded_mask():
    # (B, H, T, D) queries, keys shared across heads (B, 1, T, D), a (Tq, Tk) mask expanded with stride 0.
    g = torch.Generator().manual_seed(8)
    d = dict(dtype=torch.float64)
    q = torch.randn(B, 2, TQ, DQ, generator=g, **d).requires_grad_()
    k = torch.randn(B, 1, 11, DK, generator=g, **d).requires_grad_()
    v = torch.randn(B, 1, 11, DV, generator=g, **d).requires_grad_()
    _, _, _, w_q, w_k, v_att, b = make(11, dtype=torch.float64)
    mask = (torch.rand(TQ, 11, generator=g) > 0.3).expand(B, 2, TQ, 11)
    lengths = torch.tensor([11, 2, 7])
    out, w = additive_attention(q, k, v, w_q, w_k, v_att, b, mask=mask, key_lengths=lengths, need_weights=True)
    assert out.shape == (B, 2, TQ, DV) and w.shape == (B, 2, TQ, 11)
    full = mask & padding_mask(lengths, 11, ndim=4)
    ref_out, ref_w = reference(q, k, v, w_q, w_k, v_att, b, mask=full)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(w, ref_w)
    got = torch.autograd.grad(out.sum(), (q, k, v))
    want = torch.autograd.grad(ref_out.sum(), (q, k, v))
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e)


def test_unbatched_and_non_contiguous_inputs():
    q, k, v, w_q, w_k, v_att, b = make(7, dtype=torch.float64)
    kt = k.detach().transpose(1, 2).contiguous().transpose(1, 2)  # same values, other strides
    out, _ = additive_attention(q[0], kt[0], v[0], w_q, w_k, v_att, b)
    ref_out, _ = reference(q[0], k[0], v[0], w_q, w_k, v_att, b)
    assert out.shape == (TQ, DV)
    torch.testing.assert_close(out, ref_out)


def test_large_scores_stay_finite():
    args = make(11, scale=1e4)  # scores ~1e4: softmax would overflow without the max shift
    out, w = additive_attention(*args, need_weights=True)
    ref_out, ref_w = reference(*args)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref_out, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- bad input


def _bad(**change):
    q, k, v, w_q, w_k, v_att, b = (a.detach() for a in make(7))
    kw = dict(q=q, k=k, v=v, w_q=w_q, w_k=w_k, v_att=v_att, bias=b)
    opts = {name: change.pop(name) for name in list(change) if name not in kw}
    kw.update(change)
    return lambda: additive_attention(**kw, **opts)


@pytest.mark.parametrize(
    "change, exc, match",
    [
        (dict(q=torch.ones(B, TQ, DQ, dtype=torch.int64)), TypeError, "q must be a floating"),
        (dict(w_k=torch.randn(HID, DK, dtype=torch.float64)), TypeError, r"w_k must have the dtype of q"),
        (dict(bias=torch.randn(HID, dtype=torch.float64)), TypeError, "bias must have the dtype"),
        (dict(w_q=torch.randn(HID, DQ + 1)), ValueError, r"w_q must have shape \(hidden, Dq\) = \(13, 5\)"),
        (dict(w_k=torch.randn(HID + 1, DK)), ValueError, r"w_k must have shape \(hidden, Dk\) = \(13, 3\)"),
        (dict(v_att=torch.randn(HID, 1)), ValueError, r"v_att must have shape \(hidden,\)"),
        (dict(bias=torch.randn(HID + 2)), ValueError, r"bias must have shape \(hidden,\) = \(13,\)"),
        (dict(v=torch.randn(B, 6, DV)), ValueError, "k and v must have the same number of keys"),
        (dict(q=torch.randn(B, 0, DQ)), ValueError, "q has an empty query axis"),
        (dict(k=torch.randn(2, 7, DK)), ValueError, "batch dimensions do not broadcast"),
        (dict(mask=torch.ones(B, TQ, 7)), TypeError, "mask must have dtype torch.bool"),
        (dict(mask=torch.ones(B, TQ, 6, dtype=torch.bool)), ValueError, r"mask of shape \(3, 5, 6\) does not broadcast"),
        (dict(key_lengths=torch.tensor([1.0, 2.0, 3.0])), TypeError, "key_lengths must be an integer"),
        (dict(key_lengths=torch.tensor([1, 2])), ValueError, r"key_lengths must have shape \(B,\) = \(3,\)"),
        (dict(key_lengths=torch.tensor([1, 8, 3])), ValueError, r"key_lengths must be in \[0, Tk=7\]"),
        (dict(causal=1), TypeError, "causal must be a bool"),
        (dict(need_weights="yes"), TypeError, "need_weights must be a bool"),
    ],
)
def test_bad_input_names_the_argument(change, exc, match):
    with pytest.raises(exc, match=match):
        _bad(**change)()
