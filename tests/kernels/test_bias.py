import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab.functional import attend, causal_mask
from attnlab.functional.positional import (
    alibi_bias,
    alibi_bias_from_relative,
    alibi_slopes,
    relative_positions,
    t5_bias,
)
from attnlab.kernels.bias import TileBias, alibi_bias_fn, biased_attention, t5_bias_fn

F64 = torch.float64


def qkv(B, H, Tq, Tk, D, *, dtype=F64, dv=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Tq, D, generator=g, dtype=dtype)
    k = torch.randn(B, H, Tk, D, generator=g, dtype=dtype)
    v = torch.randn(B, H, Tk, dv or D, generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (q, k, v)]


def grads(out, inputs, seed=1):
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return torch.autograd.grad(out, inputs, g, retain_graph=True, allow_unused=True)


def assert_all_close(xs, ys, **kw):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        torch.testing.assert_close(x, y, **kw)


def check_against_attend(q, k, v, fn, dense_bias, params, *, causal, block_size, tol=None):
    Tq, Tk = q.shape[-2], k.shape[-2]
    out, w = biased_attention(q, k, v, fn, causal=causal, block_size=block_size, need_weights=True)
    mask = causal_mask(Tq, Tk) if causal else None
    ref_out, ref_w = attend(q, k, v, bias=dense_bias, mask=mask, need_weights=True)
    kw = tol or {}
    torch.testing.assert_close(out, ref_out, **kw)
    torch.testing.assert_close(w, ref_w, **kw)
    inputs = (q, k, v, *params)
    assert_all_close(grads(out, inputs), grads(ref_out, inputs), **kw)
    return out, w


@pytest.mark.parametrize("T", [5, 7, 11, 37])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("block_size", [None, 3, (4, 5)])  # none divides 5, 7, 11, 37
def test_t5_values_and_gradients_match_reference(T, causal, block_size):
    q, k, v = qkv(2, 3, T, T, 8, seed=T)
    table = torch.randn(32, 3, dtype=F64, generator=torch.Generator().manual_seed(T)).requires_grad_()
    fn = t5_bias_fn(table, bidirectional=not causal, max_distance=20)
    dense = t5_bias(table, T, T, bidirectional=not causal, max_distance=20)  # (H, T, T)
    check_against_attend(q, k, v, fn, dense, (table,), causal=causal, block_size=block_size)


@pytest.mark.parametrize("T", [5, 11, 37])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("learnable", [False, True])  # False: the flash-backward path
def test_alibi_values_and_gradients_match_reference(T, causal, learnable):
    q, k, v = qkv(2, 3, T, T, 8, seed=T + 1)
    slopes = alibi_slopes(3, dtype=F64).requires_grad_(learnable)
    dense = alibi_bias_from_relative(slopes, relative_positions(T, T))
    params = (slopes,) if learnable else ()
    check_against_attend(q, k, v, alibi_bias_fn(slopes), dense, params, causal=causal, block_size=(4, 5))


STEEP = (2.0, 1.0, 0.5, 0.02)  # slopes steep enough to leave keys out at T ~ 300 (the last one: none)


def _plan(fn, q, k, *, causal, block_size=None):
    from attnlab.kernels.bias import _decay_plan, _Spec

    B, H, Tq, D = q.shape
    spec = _Spec(fn, H, Tq, k.shape[-2], causal, D**-0.5, block_size, q.dtype, q.device)
    return _decay_plan(spec, q.detach().flip(2), k.detach()), spec


@pytest.mark.parametrize("Tq, Tk", [(300, 300), (260, 300), (300, 250)])
@pytest.mark.parametrize("causal", [False, True])
def test_decaying_bias_skips_far_keys_and_still_matches_reference(Tq, Tk, causal):
    q, k, v = qkv(2, 4, Tq, Tk, 16, seed=Tq + Tk)
    slopes = torch.tensor(STEEP, dtype=F64)
    fn = alibi_bias_fn(slopes)
    assert fn.decay is not None
    plan, spec = _plan(fn, q, k, causal=causal, block_size=(64, 64))
    assert spec.kept < 0.7  # the steep heads keep a narrow band
    assert any(j0 > 0 for _, _, _, j0, _, _ in plan) and any(h == 3 for h, *_ in plan)
    dense = alibi_bias_from_relative(slopes, relative_positions(Tq, Tk))
    out, _ = check_against_attend(q, k, v, fn, dense, (), causal=causal, block_size=(64, 64))
    if causal and Tq > Tk:
        assert out[..., : Tq - Tk, :].abs().max() == 0


def test_decay_bound_follows_the_data_not_the_distance_alone():
    # A far key (190) aligned with the first 20 queries and long enough that its score
    # beats head 1's ALiBi penalty: that head's band must reach it (the bound uses
    # max |k|), and the result agrees. Under head 0's steeper slope it weighs nothing.
    q, k, v = qkv(1, 2, 200, 200, 8, seed=3)
    u = torch.nn.functional.normalize(torch.randn(8, dtype=F64, generator=torch.Generator().manual_seed(0)), dim=0)
    with torch.no_grad():
        k[:, :, 190] = 100.0 * u
        q[:, :, :20] = 3.0 * u + 0.1 * q[:, :, :20]
    slopes = torch.tensor((1.0, 0.25), dtype=F64)
    fn = alibi_bias_fn(slopes)
    plan, _ = _plan(fn, q, k, causal=False, block_size=(50, 50))
    assert [j1 > 190 for h, i0, i1, j0, j1, _ in plan if i0 == 0][1]
    dense = alibi_bias_from_relative(slopes, relative_positions(200, 200))
    out, w = check_against_attend(q, k, v, fn, dense, (), causal=False, block_size=(50, 50))
    assert w[0, 1, :20, 190].min() > 0.5  # the far key really does carry head 1's weight
    assert w[0, 0, :20, 190].max() < 1e-20


def test_decay_plan_gives_up_on_non_finite_inputs_and_learnable_slopes_still_work():
    q, k, v = qkv(1, 2, 40, 40, 8, seed=4)
    with torch.no_grad():
        k[0, 1, 5] = math.inf
    assert _plan(alibi_bias_fn(torch.tensor((1.0, 0.5), dtype=F64)), q, k, causal=False)[0] is None
    # Learnable steep slopes: the forward skips far keys; the plain-torch backward still
    # covers every tile and the slope gradient matches the reference.
    q, k, v = qkv(1, 2, 150, 150, 8, seed=5)
    slopes = torch.tensor((1.0, 0.3), dtype=F64, requires_grad=True)
    dense = alibi_bias_from_relative(slopes, relative_positions(150, 150))
    check_against_attend(q, k, v, alibi_bias_fn(slopes), dense, (slopes,), causal=True, block_size=(32, 32))
    with pytest.raises(ValueError, match="decay must be a \\(H,\\) tensor of positive rates"):
        TileBias(per_rel=lambda rel: rel[None].double(), decay=torch.tensor([1.0, 0.0]))
    assert alibi_bias_fn(torch.tensor([0.5, -0.1])).decay is None  # growing bias: no promise


@pytest.mark.parametrize("Tq, Tk", [(5, 11), (11, 5), (7, 3)])
@pytest.mark.parametrize("causal", [False, True])
def test_cross_lengths_follow_the_position_convention(Tq, Tk, causal):
    # Queries are the last Tq positions (offset Tk - Tq); with causal and Tq > Tk the
    # first queries see no key at all and must give zeros.
    q, k, v = qkv(2, 3, Tq, Tk, 8, seed=Tq * Tk)
    table = torch.randn(32, 3, dtype=F64).requires_grad_()
    fn = t5_bias_fn(table, bidirectional=not causal, max_distance=20)
    dense = t5_bias(table, Tq, Tk, bidirectional=not causal, max_distance=20)
    out, _ = check_against_attend(q, k, v, fn, dense, (table,), causal=causal, block_size=(3, 4))
    if causal and Tq > Tk:
        assert out[..., : Tq - Tk, :].abs().max() == 0


def test_learnable_dense_bias_closure_and_neg_inf_rows():
    # A plain callable over a learnable (H, Tq, Tk) tensor, with -inf entries: row 1
    # fully masked (zero output, zero gradient, no NaN), row 2 partly masked.
    Tq = Tk = 11
    q, k, v = qkv(2, 3, Tq, Tk, 8, seed=3)
    W = torch.randn(3, Tq, Tk, dtype=F64).requires_grad_()
    neg = torch.zeros(3, Tq, Tk, dtype=torch.bool)
    neg[:, 1, :] = True
    neg[:, 2, :4] = True
    Wm = W.masked_fill(neg, -math.inf)  # a non-leaf the callable closes over

    def fn(qp, kp):
        return Wm[:, qp][:, :, kp]

    for causal in (False, True):
        out, _ = check_against_attend(q, k, v, fn, Wm, (W,), causal=causal, block_size=(4, 3))
        assert torch.isfinite(out).all() and out[:, :, 1].abs().max() == 0
        gq, gk, gv, gW = grads(out, (q, k, v, W))
        assert gq[:, :, 1].abs().max() == 0 and torch.isfinite(gW).all()
        assert gW[:, 1].abs().max() == 0


def test_flash_path_neg_inf_rows_have_zero_gradient():
    q, k, v = qkv(1, 2, 7, 7, 4, seed=9)
    dense = torch.zeros(2, 7, 7, dtype=F64)
    dense[:, 3] = -math.inf
    out = biased_attention(q, k, v, lambda qp, kp: dense[:, qp][:, :, kp], block_size=3).output
    ref = attend(q, k, v, bias=dense).output
    torch.testing.assert_close(out, ref)
    assert_all_close(grads(out, (q, k, v)), grads(ref, (q, k, v)))
    assert out[:, :, 3].abs().max() == 0


@pytest.mark.parametrize("learnable", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_user_relative_bias_with_neg_inf_and_one_head(learnable, causal):
    # A relative bias from per_rel alone, shared by all heads (shape (1, L)), that masks
    # |rel| > 2 with -inf: a sliding window written as a bias.
    Tq, Tk = 7, 11
    q, k, v = qkv(2, 3, Tq, Tk, 4, seed=11)
    w = torch.randn(5, dtype=F64).requires_grad_(learnable)

    def per_rel(rel):
        vals = w[(rel.clamp(-2, 2) + 2)]
        return torch.where(rel.abs() > 2, torch.full_like(vals, -math.inf), vals)[None]  # (1, L)

    fn = TileBias(per_rel=per_rel)  # w is found by probing per_rel's graph
    rel = relative_positions(Tq, Tk)
    dense = per_rel(rel.reshape(-1)).reshape(1, Tq, Tk)
    params = (w,) if learnable else ()
    for block in (None, (3, 4)):
        check_against_attend(q, k, v, fn, dense, params, causal=causal, block_size=block)


def test_gradcheck_float64_with_t5_table():
    q, k, v = qkv(1, 2, 5, 5, 3, seed=4)
    table = torch.randn(8, 2, dtype=F64).requires_grad_()

    def f(q, k, v, table):
        fn = t5_bias_fn(table, bidirectional=True, num_buckets=8, max_distance=4)
        return biased_attention(q, k, v, fn, causal=True, block_size=(2, 3)).output

    assert torch.autograd.gradcheck(f, (q, k, v, table))


def test_gradcheck_float64_flash_backward():
    q, k, v = qkv(1, 2, 5, 5, 3, seed=5)
    fn = alibi_bias_fn(alibi_slopes(2, dtype=F64))
    assert torch.autograd.gradcheck(lambda q, k, v: biased_attention(q, k, v, fn, block_size=(2, 3)).output, (q, k, v))


def test_tiles_match_the_dense_positional_bias():
    # 8 buckets, max_distance 10: exact buckets below 2 or 4, log-spaced up to 10, then shared.
    slopes = alibi_slopes(4, dtype=F64)
    dense_alibi = alibi_bias(4, 30, 30, dtype=F64)
    alibi = alibi_bias_fn(slopes)
    for bidirectional in (False, True):
        table = torch.randn(8, 4, dtype=F64)
        dense_t5 = t5_bias(table, 30, 30, bidirectional=bidirectional, max_distance=10)
        t5 = t5_bias_fn(table, bidirectional=bidirectional, num_buckets=8, max_distance=10)
        qp, kp = torch.arange(3, 20), torch.arange(6, 29)  # a contiguous tile (Toeplitz path)
        torch.testing.assert_close(t5(qp, kp), dense_t5[:, 3:20, 6:29])
        torch.testing.assert_close(alibi(qp, kp), dense_alibi[:, 3:20, 6:29])
        qp, kp = torch.tensor([0, 25, 2]), torch.tensor([29, 1, 1, 7])  # arbitrary positions
        torch.testing.assert_close(t5(qp, kp), dense_t5[:, qp][:, :, kp])
        torch.testing.assert_close(alibi(qp, kp), dense_alibi[:, qp][:, :, kp])
    # Every bucket but "future, distance 0" (which cannot happen) appears in a 30 x 30 tile.
    assert len(set(t5(torch.arange(30), torch.arange(30))[0].flatten().tolist())) == 7


def test_shared_head_bias_and_explicit_params():
    q, k, v = qkv(2, 3, 7, 7, 4, seed=6)
    w = torch.randn(1, 7, 7, dtype=F64).requires_grad_()
    scaled = w * 2.0  # non-leaf: passed explicitly as the tensor to differentiate
    fn = TileBias(lambda qp, kp: scaled[:, qp][:, :, kp], (scaled,))
    out = biased_attention(q, k, v, fn, block_size=3).output
    ref = attend(q, k, v, bias=scaled).output
    torch.testing.assert_close(out, ref)
    assert_all_close(grads(out, (q, k, v, w)), grads(ref, (q, k, v, w)))


def test_autograd_grad_reaches_table_and_backward_accumulates():
    q, k, v = (t.detach() for t in qkv(1, 2, 6, 6, 4))
    table = torch.randn(32, 2, dtype=F64, requires_grad=True)
    out = biased_attention(q, k, v, t5_bias_fn(table), block_size=4).output
    (g,) = torch.autograd.grad(out.square().sum(), table)
    out2 = biased_attention(q, k, v, t5_bias_fn(table), block_size=4).output
    out2.square().sum().backward()
    torch.testing.assert_close(table.grad, g)
    assert g.abs().sum() > 0


def test_value_dim_differs_and_three_dim_input():
    q, k, v = qkv(1, 3, 7, 11, 5, dv=2, seed=7)
    q, k, v = q[0], k[0], v[0]  # (H, T, D)
    slopes = alibi_slopes(3, dtype=F64).requires_grad_()
    out = biased_attention(q, k, v, alibi_bias_fn(slopes), block_size=(3, 4)).output
    ref = attend(q, k, v, bias=alibi_bias_from_relative(slopes, relative_positions(7, 11))).output
    assert out.shape == (3, 7, 2)
    torch.testing.assert_close(out, ref)
    assert_all_close(grads(out, (q, k, v, slopes)), grads(ref, (q, k, v, slopes)))


def test_float32_and_bfloat16():
    q, k, v = qkv(2, 4, 37, 37, 16, dtype=torch.float32)
    table = torch.randn(32, 4).requires_grad_()
    dense = t5_bias(table, 37, 37)
    check_against_attend(
        q, k, v, t5_bias_fn(table), dense, (table,), causal=True, block_size=(8, 16), tol=dict(atol=2e-5, rtol=2e-5)
    )
    qb, kb, vb = (t.detach().bfloat16().requires_grad_() for t in (q, k, v))
    out = biased_attention(qb, kb, vb, t5_bias_fn(table), causal=True).output
    assert out.dtype == torch.bfloat16
    ref = attend(q, k, v, bias=dense, mask=causal_mask(37)).output
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)
    out.float().sum().backward()
    assert torch.isfinite(qb.grad).all() and qb.grad.dtype == torch.bfloat16
    # Fixed ALiBi: flash backward with a float32 mask for bf16 inputs.
    slopes = alibi_slopes(4)
    out = biased_attention(qb, kb, vb, alibi_bias_fn(slopes), block_size=(16, 16)).output
    ref = attend(q, k, v, bias=alibi_bias_from_relative(slopes, relative_positions(37, 37))).output
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)
    g_ref = torch.autograd.grad(ref.sum(), k)[0]
    g = torch.autograd.grad(out.float().sum(), kb)[0]
    torch.testing.assert_close(g.float(), g_ref, atol=5e-2, rtol=5e-2)


@settings(max_examples=25, deadline=None)
@given(
    Tq=st.integers(1, 20),
    Tk=st.integers(1, 20),
    bq=st.integers(1, 9),
    bk=st.integers(1, 9),
    causal=st.booleans(),
)
def test_random_sizes_match_reference(Tq, Tk, bq, bk, causal):
    q, k, v = qkv(1, 2, Tq, Tk, 3, seed=Tq * 31 + Tk)
    slopes = torch.tensor([0.5, 0.125], dtype=F64, requires_grad=True)
    dense = alibi_bias_from_relative(slopes, relative_positions(Tq, Tk))
    check_against_attend(q, k, v, alibi_bias_fn(slopes), dense, (slopes,), causal=causal, block_size=(bq, bk))


def test_bad_inputs_name_the_argument():
    q, k, v = (t.detach() for t in qkv(2, 3, 7, 7, 4))
    fn = alibi_bias_fn(alibi_slopes(3, dtype=F64))
    with pytest.raises(TypeError, match="bias_fn"):
        biased_attention(q, k, v, "alibi")
    with pytest.raises(ValueError, match="bias_fn must return shape"):
        biased_attention(q, k, v, lambda qp, kp: torch.zeros(2, len(qp), len(kp), dtype=F64))
    with pytest.raises(ValueError, match="bias_fn must return shape"):
        biased_attention(q, k, v, lambda qp, kp: torch.zeros(3, len(kp), len(qp) + 1, dtype=F64))
    with pytest.raises(TypeError, match="bias_fn"):
        biased_attention(q, k, v, lambda qp, kp: torch.zeros(3, len(qp), len(kp), dtype=torch.long))
    with pytest.raises(ValueError, match="block_size"):
        biased_attention(q, k, v, fn, block_size=0)
    with pytest.raises(ValueError, match="block_size"):
        biased_attention(q, k, v, fn, block_size=(4, 0))
    with pytest.raises(TypeError, match="block_size"):
        biased_attention(q, k, v, fn, block_size=(1, 2, 3))
    with pytest.raises(ValueError, match="last dimension"):
        biased_attention(q, k[..., :3], v, fn)
    with pytest.raises(ValueError, match="k and v"):
        biased_attention(q, k, v[..., :5, :], fn)
    with pytest.raises(ValueError, match="broadcast"):
        biased_attention(q, k[:1].expand(5, 3, 7, 4), v, fn)
    with pytest.raises(TypeError, match="dtype"):
        biased_attention(q.float(), k, v, fn)
    with pytest.raises(ValueError, match="num_buckets"):
        t5_bias_fn(torch.randn(16, 3), num_buckets=32)
    with pytest.raises(ValueError, match="table"):
        t5_bias_fn(torch.randn(32))
    with pytest.raises(ValueError, match="max_distance"):
        t5_bias_fn(torch.randn(32, 3), max_distance=4)
    with pytest.raises(ValueError, match="slopes"):
        alibi_bias_fn(torch.randn(3, 1))
