"""Tests for attnlab.functional.positional against hand-checked numbers and plain loops."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab.functional.positional import (
    alibi_bias,
    alibi_bias_from_relative,
    alibi_slopes,
    apply_rope,
    pairwise_relative,
    relative_positions,
    rope_frequencies,
    shaw_relative_index,
    shaw_scores,
    shaw_table_scores,
    sinusoidal_table,
    t5_bias,
    t5_bias_from_relative,
    t5_relative_bucket,
)

F64 = torch.float64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- sinusoidal


def test_sinusoidal_hand_values():
    pe = sinusoidal_table(3, 4, dtype=F64)
    # d = 4: frequencies 1 and 10000^(-2/4) = 1/100; sin on even, cos on odd indices.
    expected = torch.tensor(
        [
            [0.0, 1.0, 0.0, 1.0],
            [math.sin(1), math.cos(1), math.sin(0.01), math.cos(0.01)],
            [math.sin(2), math.cos(2), math.sin(0.02), math.cos(0.02)],
        ],
        dtype=F64,
    )
    torch.testing.assert_close(pe, expected)


@pytest.mark.parametrize("d_model", [10, 11])
def test_sinusoidal_matches_loop_even_and_odd(d_model):
    T, base = 7, 500.0
    pe = sinusoidal_table(T, d_model, base, dtype=F64)
    assert pe.shape == (T, d_model) and pe.dtype == F64
    ref = torch.empty(T, d_model, dtype=F64)
    for pos in range(T):
        for c in range(d_model):
            angle = pos / base ** ((c - c % 2) / d_model)
            ref[pos, c] = math.sin(angle) if c % 2 == 0 else math.cos(angle)
    torch.testing.assert_close(pe, ref)


def test_sinusoidal_dtype_follows_request_and_default():
    assert sinusoidal_table(5, 6, dtype=torch.bfloat16).dtype == torch.bfloat16
    assert sinusoidal_table(5, 6).dtype == torch.get_default_dtype()
    torch.testing.assert_close(
        sinusoidal_table(5, 6, dtype=torch.bfloat16).float(), sinusoidal_table(5, 6), atol=1e-2, rtol=0
    )


@pytest.mark.parametrize(
    "args, err, match",
    [
        ((0, 4), ValueError, "T"),
        ((3, 0), ValueError, "d_model"),
        ((3, 4, -1.0), ValueError, "base"),
        ((3.0, 4), TypeError, "T"),
    ],
)
def test_sinusoidal_bad_input(args, err, match):
    with pytest.raises(err, match=match):
        sinusoidal_table(*args)


# --------------------------------------------------------------------------- relative positions


def test_relative_positions_hand_values():
    # default offset Tk - Tq = 2: queries at absolute 2, 3
    expected = torch.tensor([[-2, -1, 0, 1], [-3, -2, -1, 0]])
    got = relative_positions(2, 4)
    assert got.dtype == torch.long
    assert torch.equal(got, expected)
    assert torch.equal(relative_positions(2, 4, offset=0), torch.tensor([[0, 1, 2, 3], [-1, 0, 1, 2]]))
    assert torch.equal(relative_positions(3, 3), torch.tensor([[0, 1, 2], [-1, 0, 1], [-2, -1, 0]]))


def test_pairwise_relative_matches_relative_positions():
    rel = pairwise_relative(torch.arange(4, 11), torch.arange(11))
    assert torch.equal(rel, relative_positions(7, 11))
    assert rel.shape == (7, 11)


def test_relative_positions_bad_input():
    with pytest.raises(ValueError, match="Tq"):
        relative_positions(0, 3)
    with pytest.raises(TypeError, match="offset"):
        relative_positions(2, 3, offset=1.5)
    with pytest.raises(TypeError, match="q_positions"):
        pairwise_relative(torch.arange(3.0), torch.arange(3))
    with pytest.raises(ValueError, match="k_positions"):
        pairwise_relative(torch.arange(3), torch.zeros(2, 3, dtype=torch.long))


# --------------------------------------------------------------------------- Shaw


def test_shaw_relative_index_hand_values():
    rel = torch.tensor([[-5, -2, -1, 0, 1, 2, 7]])
    assert torch.equal(shaw_relative_index(rel, 2), torch.tensor([[0, 0, 1, 2, 3, 4, 4]]))
    assert torch.equal(shaw_relative_index(rel, 0), torch.zeros_like(rel))


def test_shaw_relative_index_bad_input():
    with pytest.raises(TypeError, match="rel"):
        shaw_relative_index(torch.tensor([0.5]), 2)
    with pytest.raises(ValueError, match="max_distance"):
        shaw_relative_index(torch.tensor([0]), -1)


def test_shaw_scores_matches_loop():
    B, H, Tq, Tk, D = 3, 5, 7, 11, 6
    q = torch.randn(B, H, Tq, D, generator=_gen(1), dtype=F64)
    a = torch.randn(Tq, Tk, D, generator=_gen(2), dtype=F64)
    got = shaw_scores(q, a)
    assert got.shape == (B, H, Tq, Tk)
    ref = torch.empty(B, H, Tq, Tk, dtype=F64)
    for b in range(B):
        for h in range(H):
            for i in range(Tq):
                for j in range(Tk):
                    ref[b, h, i, j] = sum(q[b, h, i, d] * a[i, j, d] for d in range(D))
    torch.testing.assert_close(got, ref)


def test_shaw_table_scores_equals_materialized():
    q = torch.randn(3, 5, 7, 6, generator=_gen(3))
    table = torch.randn(9, 6, generator=_gen(4))  # k = 4
    index = shaw_relative_index(relative_positions(7, 11), 4)  # (7, 11)
    torch.testing.assert_close(shaw_table_scores(q, table, index), shaw_scores(q, table[index]))


def test_shaw_gradcheck():
    q = torch.randn(2, 3, 4, generator=_gen(5), dtype=F64, requires_grad=True)
    a = torch.randn(3, 5, 4, generator=_gen(6), dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(shaw_scores, (q, a))
    table = torch.randn(5, 4, generator=_gen(7), dtype=F64, requires_grad=True)
    index = shaw_relative_index(relative_positions(3, 5), 2)
    assert torch.autograd.gradcheck(lambda q, t: shaw_table_scores(q, t, index), (q, table))


def test_shaw_bad_input():
    q = torch.randn(5, 7, 6)
    with pytest.raises(ValueError, match="rel_emb_k"):
        shaw_scores(q, torch.randn(7, 11, 4))
    with pytest.raises(ValueError, match="rel_emb_k"):
        shaw_scores(q, torch.randn(3, 11, 6))
    with pytest.raises(ValueError, match="rel_emb_k"):
        shaw_scores(q, torch.randn(2, 7, 11, 6))
    with pytest.raises(TypeError, match="q"):
        shaw_scores(q.long(), torch.randn(7, 11, 6))
    with pytest.raises(ValueError, match=r"index values must lie in \[0, 5\)"):
        shaw_table_scores(q, torch.randn(5, 6), torch.full((7, 11), 5))
    with pytest.raises(ValueError, match="table"):
        shaw_table_scores(q, torch.randn(5, 4), torch.zeros(7, 11, dtype=torch.long))
    with pytest.raises(ValueError, match="index"):
        shaw_table_scores(q, torch.randn(5, 6), torch.zeros(3, 11, dtype=torch.long))


# --------------------------------------------------------------------------- T5

# Hand-computed for T5's defaults (bidirectional, 32 buckets, max_distance 128): 16 buckets
# per direction, 8 exact; distance d >= 8 goes to 8 + floor(log(d/8) / log(16) * 8), so
# bucket b starts at d = ceil(8 * 2^((b - 8) / 2)): 12, 16, 23, 32, 46, 64, 91; capped at 15.
T5_DEFAULT_TABLE = {
    0: 0, 1: 1, 7: 7, 8: 8, 11: 8, 12: 9, 15: 9, 16: 10, 22: 10, 23: 11, 31: 11,
    32: 12, 45: 12, 46: 13, 63: 13, 64: 14, 90: 14, 91: 15, 127: 15, 128: 15, 1000: 15,
}  # fmt: skip


def test_t5_bucket_bidirectional_hand_table():
    d = torch.tensor(list(T5_DEFAULT_TABLE))
    expected = torch.tensor(list(T5_DEFAULT_TABLE.values()))
    # keys in the past (rel = j - i < 0) use the lower half ...
    assert torch.equal(t5_relative_bucket(-d), expected)
    # ... keys in the future the upper half; rel = 0 stays in bucket 0
    expected_future = torch.where(d > 0, expected + 16, expected)
    assert torch.equal(t5_relative_bucket(d), expected_future)


def test_t5_bucket_unidirectional_hand_values():
    # 32 buckets, 16 exact; d >= 16: 16 + floor(log(d/16) / log(8) * 16); future keys -> 0.
    # bucket 17 starts at ceil(16 * 2^(3/16)) = 19, bucket 18 at ceil(16 * 2^(6/16)) = 21.
    rel = torch.tensor([5, 1, 0, -1, -15, -16, -18, -19, -20, -21, -127, -128, -500])
    expected = torch.tensor([0, 0, 0, 1, 15, 16, 16, 17, 17, 18, 31, 31, 31])
    assert torch.equal(t5_relative_bucket(rel, bidirectional=False), expected)


def test_t5_bucket_small_config_hand_values():
    # 8 buckets bidirectional: 4 per side, 2 exact; d >= 2: 2 + floor(log(d/2) / log(8) * 2),
    # which is 2 for d in 2..5 (d/2 < sqrt(8)) and 3 (capped) from 6 on.
    rel = torch.arange(-7, 8)
    expected = torch.tensor([3, 3, 2, 2, 2, 2, 1, 0, 5, 6, 6, 6, 6, 7, 7])
    assert torch.equal(t5_relative_bucket(rel, True, 8, 16), expected)


def _t5_bucket_reference(rel, bidirectional, num_buckets, max_distance):
    # Transcription of Hugging Face T5Attention._relative_position_bucket, one int at a time.
    ret = 0
    n = num_buckets
    if bidirectional:
        n //= 2
        ret += n if rel > 0 else 0
        d = abs(rel)
    else:
        d = -min(rel, 0)
    max_exact = n // 2
    if d < max_exact:
        return ret + d
    large = max_exact + int(math.log(d / max_exact) / math.log(max_distance / max_exact) * (n - max_exact))
    return ret + min(large, n - 1)


@settings(max_examples=30, deadline=None)
@given(
    bidirectional=st.booleans(),
    num_buckets=st.integers(4, 40),
    extra=st.integers(1, 200),
)
def test_t5_bucket_matches_reference(bidirectional, num_buckets, extra):
    max_exact = (num_buckets // 2 if bidirectional else num_buckets) // 2
    max_distance = max_exact + extra
    rel = torch.arange(-300, 301)
    got = t5_relative_bucket(rel, bidirectional, num_buckets, max_distance)
    ref = [_t5_bucket_reference(r, bidirectional, num_buckets, max_distance) for r in rel.tolist()]
    # float32 (ours, like HF) vs float64 log (reference) may differ by one bucket exactly on
    # an edge; require exact agreement everywhere else.
    diff = (got - torch.tensor(ref)).abs()
    assert int(diff.max()) <= 1 and int((diff > 0).sum()) <= 2
    assert int(got.min()) >= 0 and int(got.max()) < num_buckets


def test_t5_bias_matches_loop_and_shape():
    num_buckets, H, Tq, Tk = 8, 5, 3, 7
    table = torch.randn(num_buckets, H, generator=_gen(8))
    bias = t5_bias(table, Tq, Tk, max_distance=16)
    assert bias.shape == (H, Tq, Tk)
    rel = relative_positions(Tq, Tk)
    for h in range(H):
        for i in range(Tq):
            for j in range(Tk):
                b = _t5_bucket_reference(int(rel[i, j]), True, num_buckets, 16)
                assert bias[h, i, j] == table[b, h]
    # explicit positions give the same thing
    torch.testing.assert_close(
        t5_bias_from_relative(table, pairwise_relative(torch.arange(4, 7), torch.arange(7)), max_distance=16), bias
    )


def test_t5_bias_gradcheck_wrt_table():
    table = torch.randn(8, 3, generator=_gen(9), dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: t5_bias(t, 5, 7, max_distance=16), (table,))
    assert torch.autograd.gradcheck(lambda t: t5_bias(t, 5, 7, bidirectional=False, max_distance=16), (table,))


def test_t5_bad_input():
    with pytest.raises(TypeError, match="rel"):
        t5_relative_bucket(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="num_buckets"):
        t5_relative_bucket(torch.tensor([1]), True, 3, 10)
    with pytest.raises(ValueError, match="max_distance must be > 8"):
        t5_relative_bucket(torch.tensor([1]), True, 32, 8)
    with pytest.raises(TypeError, match="bidirectional"):
        t5_relative_bucket(torch.tensor([1]), "yes")
    with pytest.raises(ValueError, match="table"):
        t5_bias(torch.randn(32), 3, 5)
    with pytest.raises(ValueError, match="table"):
        t5_bias(torch.randn(2, 32, 4), 3, 5)


# --------------------------------------------------------------------------- RoPE


def test_rope_frequencies_hand_values():
    torch.testing.assert_close(rope_frequencies(4, base=100.0, dtype=F64), torch.tensor([1.0, 0.1], dtype=F64))
    torch.testing.assert_close(
        rope_frequencies(6), torch.tensor([1.0, 10000 ** (-1 / 3), 10000 ** (-2 / 3)], dtype=torch.float32)
    )


def test_apply_rope_hand_values_rotate_half_pairing():
    # D = 4, base 100: dimension 0 pairs with 2 (angle m * 1), 1 with 3 (angle m * 0.1).
    x = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]], dtype=F64)  # (T=2, D=4)
    y = apply_rope(x, torch.tensor([2, 3]), base=100.0)
    expected = torch.tensor(
        [[math.cos(2), 0.0, math.sin(2), 0.0], [0.0, math.cos(0.3), 0.0, math.sin(0.3)]], dtype=F64
    )
    torch.testing.assert_close(y, expected)


def test_apply_rope_matches_complex_reference():
    B, H, T, D = 3, 5, 7, 8
    x = torch.randn(B, H, T, D, generator=_gen(10), dtype=F64)
    pos = torch.tensor([0, 3, 4, 9, 10, 11, 50])
    got = apply_rope(x, pos)
    theta = 10000.0 ** (-torch.arange(0, D, 2, dtype=F64) / D)  # (D/2,)
    z = torch.complex(x[..., : D // 2], x[..., D // 2 :])  # rotate-half: pair i with i + D/2
    z = z * torch.polar(torch.ones(T, D // 2, dtype=F64), pos[:, None].to(F64) * theta)
    torch.testing.assert_close(got, torch.cat((z.real, z.imag), dim=-1))


@settings(max_examples=25, deadline=None)
@given(m=st.integers(0, 500), n=st.integers(0, 500), shift=st.integers(-300, 300))
def test_rope_relative_property(m, n, shift):
    g = _gen(m * 1000 + n)
    q = torch.randn(1, 6, generator=g, dtype=F64)
    k = torch.randn(1, 6, generator=g, dtype=F64)

    def dot(a, b):
        return (apply_rope(q, torch.tensor([a])) * apply_rope(k, torch.tensor([b]))).sum()

    a, b = m + abs(shift), n + abs(shift)
    torch.testing.assert_close(dot(m, n), dot(a, b))


def test_rope_dot_product_does_change_with_distance():
    q = torch.randn(1, 6, generator=_gen(11), dtype=F64)
    k = torch.randn(1, 6, generator=_gen(12), dtype=F64)
    d1 = (apply_rope(q, torch.tensor([5])) * apply_rope(k, torch.tensor([3]))).sum()
    d2 = (apply_rope(q, torch.tensor([5])) * apply_rope(k, torch.tensor([1]))).sum()
    assert not torch.allclose(d1, d2)


def test_rope_preserves_norm_and_identity_at_zero():
    x = torch.randn(3, 5, 7, 6, generator=_gen(13), dtype=F64)
    pos = torch.arange(100, 107)
    torch.testing.assert_close(apply_rope(x, pos).norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(apply_rope(x, torch.zeros(7, dtype=torch.long)), x)


def test_rope_float_and_long_positions_agree_and_broadcast():
    x = torch.randn(3, 5, 7, 6, generator=_gen(14))
    pos = torch.arange(7)
    torch.testing.assert_close(apply_rope(x, pos), apply_rope(x, pos.float()))
    per_batch = torch.stack([pos, pos + 4, pos + 9])[:, None, :]  # (B, 1, T)
    got = apply_rope(x, per_batch)
    torch.testing.assert_close(got[1], apply_rope(x[1], pos + 4))


def test_rope_gradcheck():
    x = torch.randn(2, 3, 4, generator=_gen(15), dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: apply_rope(x, torch.tensor([1, 5, 9])), (x,))


def test_rope_bf16():
    x = torch.randn(3, 5, 7, 8, generator=_gen(16))
    pos = torch.arange(1000, 1007)  # large positions: angles must not be computed in bf16
    got = apply_rope(x.bfloat16(), pos)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), apply_rope(x, pos), atol=3e-2, rtol=2e-2)


def test_rope_bad_input():
    with pytest.raises(ValueError, match="head_dim"):
        rope_frequencies(5)
    with pytest.raises(ValueError, match="head_dim"):
        apply_rope(torch.randn(7, 5), torch.arange(7))
    with pytest.raises(ValueError, match=r"positions must have shape \(T,\) = \(7,\)"):
        apply_rope(torch.randn(3, 7, 6), torch.arange(6))
    with pytest.raises(ValueError, match="positions"):
        apply_rope(torch.randn(3, 7, 6), torch.zeros(2, 7, dtype=torch.long))
    with pytest.raises(TypeError, match="positions"):
        apply_rope(torch.randn(3, 7, 6), [0, 1, 2])
    with pytest.raises(TypeError, match="x"):
        apply_rope(torch.zeros(3, 7, 6, dtype=torch.long), torch.arange(7))
    with pytest.raises(ValueError, match="base"):
        apply_rope(torch.randn(3, 7, 6), torch.arange(7), base=0.0)


# --------------------------------------------------------------------------- ALiBi


def test_alibi_slopes_power_of_two():
    expected = torch.tensor([2.0**-k for k in range(1, 9)], dtype=F64)  # 1/2 ... 1/256
    assert torch.equal(alibi_slopes(8, dtype=F64), expected)
    assert torch.equal(alibi_slopes(2, dtype=F64), torch.tensor([1 / 16, 1 / 256], dtype=F64))
    assert torch.equal(alibi_slopes(1, dtype=F64), torch.tensor([1 / 256], dtype=F64))


def test_alibi_slopes_non_power_of_two_by_hand():
    # 6 heads: 4-head slopes 2^-2, 2^-4, 2^-6, 2^-8, then every other 8-head slope
    # (2^-1, 2^-3, 2^-5, 2^-7), first 6 - 4 = 2 of them.
    torch.testing.assert_close(
        alibi_slopes(6, dtype=F64), torch.tensor([1 / 4, 1 / 16, 1 / 64, 1 / 256, 1 / 2, 1 / 8], dtype=F64)
    )
    # 12 heads: the 8-head slopes, then 16-head slopes 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5.
    expected = [2.0**-k for k in range(1, 9)] + [2.0**-0.5, 2.0**-1.5, 2.0**-2.5, 2.0**-3.5]
    torch.testing.assert_close(alibi_slopes(12, dtype=F64), torch.tensor(expected, dtype=F64))


def test_alibi_bias_hand_values():
    bias = alibi_bias(2, 3, 3, dtype=F64)  # slopes 1/16, 1/256
    dist = torch.tensor([[0, 1, 2], [1, 0, 1], [2, 1, 0]], dtype=F64)
    torch.testing.assert_close(bias, torch.stack([-dist / 16, -dist / 256]))
    # one query after a cache of 3 keys: it sits at position 3
    row = alibi_bias(2, 1, 4, dtype=F64)
    torch.testing.assert_close(row[0, 0], torch.tensor([-3, -2, -1, 0], dtype=F64) / 16)


def test_alibi_bias_shape_dtype_and_causal_form():
    bias = alibi_bias(5, 7, 11)
    assert bias.shape == (5, 7, 11) and bias.dtype == torch.get_default_dtype()
    assert alibi_bias(5, 7, 11, dtype=torch.bfloat16).dtype == torch.bfloat16
    # On j <= i it equals the paper's m_h * (j - i).
    slopes = alibi_slopes(5)
    rel = relative_positions(7, 11)
    paper = slopes[:, None, None] * rel
    causal = rel <= 0
    torch.testing.assert_close(bias[:, causal], paper[:, causal])
    torch.testing.assert_close(alibi_bias_from_relative(slopes, rel), bias)


def test_alibi_bad_input():
    with pytest.raises(ValueError, match="num_heads"):
        alibi_slopes(0)
    with pytest.raises(TypeError, match="num_heads"):
        alibi_bias(2.0, 3, 3)
    with pytest.raises(ValueError, match="Tk"):
        alibi_bias(2, 3, 0)
    with pytest.raises(ValueError, match="slopes"):
        alibi_bias_from_relative(torch.ones(2, 2), relative_positions(3, 3))
    with pytest.raises(TypeError, match="rel"):
        alibi_bias_from_relative(torch.ones(2), torch.zeros(3, 3))
