"""Tests for attnlab.nn.positional: shapes, the protocol, gradients, registry, bf16."""

import math

import pytest
import torch
from torch import nn

from attnlab.functional.positional import (
    alibi_bias,
    apply_rope,
    shaw_scores,
    sinusoidal_table,
    t5_bias,
    t5_relative_bucket,
)
from attnlab.nn.positional import (
    POSITIONAL,
    ALiBi,
    LearnedPositionalEmbedding,
    NoPositionalEncoding,
    PositionalScheme,
    RotaryEmbedding,
    ShawRelativePosition,
    SinusoidalPositionalEncoding,
    T5RelativeBias,
    build_positional,
)

B, H, T, D = 3, 5, 7, 6
TK = 11  # keys (a KV cache of 11 with 7 new queries)
D_MODEL = H * D


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _q(dtype=torch.float32, seed=0, Tq=T):
    return torch.randn(B, H, Tq, D, generator=_gen(seed), dtype=dtype)


QPOS = torch.arange(TK - T, TK)  # queries are the last 7 of 11 positions
KPOS = torch.arange(TK)


def _attention(pos: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A minimal self-attention that uses every hook of the protocol, as an MHA would."""
    x = pos(x)  # (B, T, d_model)
    Bx, Tx, _ = x.shape
    qkv = x.reshape(Bx, Tx, H, D).transpose(1, 2)  # (B, H, T, D), q = k = v for the test
    positions = torch.arange(Tx)
    q, k = pos.rotate(qkv, positions), pos.rotate(qkv, positions)
    s = q @ k.transpose(-2, -1) / math.sqrt(D)  # (B, H, T, T)
    bias = pos.score_bias(qkv, positions, positions)
    if bias is not None:
        s = s + bias
    return torch.softmax(s, dim=-1) @ qkv  # (B, H, T, D)


# --------------------------------------------------------------------------- input schemes


def test_sinusoidal_module_adds_table():
    m = SinusoidalPositionalEncoding(D_MODEL, max_len=50)
    assert m.kind == "input"
    x = torch.randn(B, T, D_MODEL, generator=_gen(1))
    y = m(x)
    assert y.shape == (B, T, D_MODEL)
    torch.testing.assert_close(y, x + sinusoidal_table(T, D_MODEL))
    pos = torch.arange(20, 27)
    torch.testing.assert_close(m(x, pos), x + sinusoidal_table(27, D_MODEL)[20:])
    # derived from sizes: not a checkpoint entry
    assert "pe" not in m.state_dict() and list(m.parameters()) == []


def test_sinusoidal_module_dropout_train_vs_eval():
    m = SinusoidalPositionalEncoding(D_MODEL, max_len=50, dropout=0.5)
    x = torch.randn(B, T, D_MODEL, generator=_gen(2))
    m.train()
    torch.manual_seed(0)
    assert (m(x) == 0).float().mean() > 0.2
    m.eval()
    torch.testing.assert_close(m(x), x + sinusoidal_table(T, D_MODEL))


def test_learned_module_adds_rows_and_gets_gradient():
    m = LearnedPositionalEmbedding(max_len=13, d_model=D_MODEL)
    assert m.kind == "input" and m.weight.shape == (13, D_MODEL)
    x = torch.randn(B, T, D_MODEL, generator=_gen(3))
    y = m(x)
    torch.testing.assert_close(y, x + m.weight[:T].detach())
    y.sum().backward()
    # each used row receives one gradient per batch element; unused rows none
    torch.testing.assert_close(m.weight.grad[:T], torch.full((T, D_MODEL), float(B)))
    assert torch.count_nonzero(m.weight.grad[T:]) == 0


@pytest.mark.parametrize(
    "make", [lambda: SinusoidalPositionalEncoding(D_MODEL, max_len=5), lambda: LearnedPositionalEmbedding(5, D_MODEL)]
)
def test_input_modules_reject_too_long_and_wrong_width(make):
    m = make()
    with pytest.raises(ValueError, match="max_len = 5"):
        m(torch.randn(B, T, D_MODEL))
    with pytest.raises(ValueError, match="d_model = 30"):
        m(torch.randn(B, 3, D_MODEL + 1))
    with pytest.raises(ValueError, match=r"positions must lie in \[0, max_len\)"):
        m(torch.randn(B, 3, D_MODEL), torch.tensor([2, 3, 5]))
    with pytest.raises(TypeError, match="positions"):
        m(torch.randn(B, 3, D_MODEL), torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"positions must have shape \(T,\) = \(3,\)"):
        m(torch.randn(B, 3, D_MODEL), torch.arange(4))


def test_input_modules_constructor_errors():
    with pytest.raises(ValueError, match="d_model"):
        SinusoidalPositionalEncoding(0)
    with pytest.raises(ValueError, match="dropout"):
        SinusoidalPositionalEncoding(8, dropout=1.5)
    with pytest.raises(TypeError, match="max_len"):
        LearnedPositionalEmbedding(5.0, 8)


# --------------------------------------------------------------------------- Shaw


def test_shaw_score_bias_matches_reference_and_scale():
    k = 3
    m = ShawRelativePosition(D, max_distance=k)
    assert m.kind == "attention" and m.weight.shape == (2 * k + 1, D)
    q = _q(seed=4)
    bias = m.score_bias(q, QPOS, KPOS)
    assert bias.shape == (B, H, T, TK)
    a = torch.empty(T, TK, D)  # a_ij = w[clip(j - i, -k, k) + k], by hand
    for i in range(T):
        for j in range(TK):
            a[i, j] = m.weight[min(max(int(KPOS[j] - QPOS[i]), -k), k) + k].detach()
    torch.testing.assert_close(bias, shaw_scores(q, a) / math.sqrt(D))
    assert m.rotate(q, QPOS) is q
    x = torch.randn(B, T, D_MODEL)
    assert m(x) is x


def test_shaw_gradient_flows_into_table_and_q():
    m = ShawRelativePosition(D, max_distance=20)
    q = _q(seed=5).requires_grad_()
    m.score_bias(q, QPOS, KPOS).sum().backward()
    used = torch.zeros(41, dtype=torch.bool)
    used[torch.arange(-10, 7) + 20] = True  # j - i = KPOS[j] - QPOS[i] spans [0 - 10, 10 - 4]
    assert torch.all(m.weight.grad[used].abs().sum(-1) > 0)
    assert torch.count_nonzero(m.weight.grad[~used]) == 0
    assert q.grad is not None and torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0


def test_shaw_bad_input():
    m = ShawRelativePosition(D, max_distance=2)
    with pytest.raises(ValueError, match="head_dim = 6"):
        m.score_bias(torch.randn(B, H, T, D + 2), QPOS, KPOS)
    with pytest.raises(TypeError, match="q_positions"):
        m.score_bias(_q(), QPOS.float(), KPOS)
    with pytest.raises(ValueError, match=r"q_positions must have shape \(Tq,\) = \(7,\)"):
        m.score_bias(_q(), KPOS, KPOS)
    with pytest.raises(ValueError, match="k_positions"):
        m.score_bias(_q(), QPOS, KPOS[None])


# --------------------------------------------------------------------------- T5


def test_t5_score_bias_shape_values_and_gradient():
    m = T5RelativeBias(H, num_buckets=8, max_distance=16, bidirectional=False)
    assert m.kind == "attention" and m.weight.shape == (8, H)
    bias = m.score_bias(_q(), QPOS, KPOS)
    assert bias.shape == (H, T, TK)  # broadcasts over B
    torch.testing.assert_close(bias, t5_bias(m.weight, T, TK, bidirectional=False, max_distance=16))
    # one entry by hand: head 2, query at 4 (i=0), key 0 -> rel -4 -> bucket 4
    assert int(t5_relative_bucket(torch.tensor(-4), False, 8, 16)) == 4
    assert bias[2, 0, 0] == m.weight[4, 2]
    bias.sum().backward()
    # grad of bucket b, head h = number of (i, j) in bucket b: same count for every head
    buckets = t5_relative_bucket(KPOS[None, :] - QPOS[:, None], False, 8, 16)  # (T, TK)
    counts = torch.bincount(buckets.flatten(), minlength=8).float()  # (8,)
    torch.testing.assert_close(m.weight.grad, counts[:, None].expand(8, H))
    assert counts[0] > 0 and (counts == 0).any()  # future keys share bucket 0; some buckets unused


def test_t5_bad_input():
    with pytest.raises(ValueError, match="num_buckets"):
        T5RelativeBias(H, num_buckets=2)
    with pytest.raises(ValueError, match="max_distance"):
        T5RelativeBias(H, num_buckets=32, max_distance=4)
    m = T5RelativeBias(H)
    with pytest.raises(ValueError, match="num_heads = 5"):
        m.score_bias(torch.randn(B, H + 1, T, D), QPOS, KPOS)


# --------------------------------------------------------------------------- RoPE


def test_rotary_module_rotates_and_adds_no_bias():
    m = RotaryEmbedding(D, base=500.0)
    q = _q(seed=6)
    torch.testing.assert_close(m.rotate(q, QPOS), apply_rope(q, QPOS, base=500.0))
    assert m.score_bias(q, QPOS, KPOS) is None
    assert list(m.parameters()) == [] and len(m.state_dict()) == 0


def test_rotary_scores_invariant_to_shifting_all_positions():
    m = RotaryEmbedding(D)
    q, k = _q(torch.float64, 7), _q(torch.float64, 8)
    pos = torch.arange(T)

    def scores(p):
        return m.rotate(q, p) @ m.rotate(k, p).transpose(-2, -1)  # (B, H, T, T)

    torch.testing.assert_close(scores(pos), scores(pos + 37))
    assert not torch.allclose(scores(pos), q @ k.transpose(-2, -1))


def test_rotary_bad_input():
    with pytest.raises(ValueError, match="head_dim"):
        RotaryEmbedding(7)
    m = RotaryEmbedding(D)
    with pytest.raises(ValueError, match="head_dim = 6"):
        m.rotate(torch.randn(B, H, T, 8), QPOS)
    with pytest.raises(TypeError, match="positions"):
        m.rotate(_q(), QPOS.float())
    with pytest.raises(ValueError, match="positions"):
        m.rotate(_q(), KPOS)


# --------------------------------------------------------------------------- ALiBi


def test_alibi_module_bias():
    m = ALiBi(H)
    bias = m.score_bias(_q(), QPOS, KPOS)
    assert bias.shape == (H, T, TK)
    torch.testing.assert_close(bias, alibi_bias(H, T, TK))
    # shifting all positions does not change it
    torch.testing.assert_close(m.score_bias(_q(), QPOS + 100, KPOS + 100), bias)
    assert list(m.parameters()) == []
    with pytest.raises(ValueError, match="num_heads = 5"):
        m.score_bias(torch.randn(B, 2, T, D), QPOS, KPOS)


# --------------------------------------------------------------------------- protocol, registry, dtypes


ALL_NAMES = ["none", "sinusoidal", "learned", "shaw", "t5", "rope", "alibi"]


def test_registry_names():
    assert sorted(POSITIONAL) == sorted(ALL_NAMES)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_build_and_protocol_in_attention(name):
    pos = build_positional(name, num_heads=H, head_dim=D, max_len=64)
    assert isinstance(pos, POSITIONAL[name]) and isinstance(pos, PositionalScheme)
    assert pos.kind in ("input", "attention")
    x = torch.randn(B, T, D_MODEL, generator=_gen(9), requires_grad=True)
    out = _attention(pos, x)
    assert out.shape == (B, H, T, D)
    out.square().sum().backward()
    assert torch.isfinite(x.grad).all()
    for p in pos.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("name", ALL_NAMES)
def test_bf16_through_every_hook(name):
    pos = build_positional(name, num_heads=H, head_dim=D, max_len=64)
    x = torch.randn(B, T, D_MODEL, generator=_gen(10)).bfloat16()
    q = _q().bfloat16()
    assert pos(x).dtype == torch.bfloat16
    assert pos.rotate(q, QPOS).dtype == torch.bfloat16
    bias = pos.score_bias(q, QPOS, KPOS)
    if bias is not None:
        assert bias.dtype == torch.bfloat16
        torch.testing.assert_close(bias.float(), pos.score_bias(q.float(), QPOS, KPOS), atol=0.05, rtol=0.02)
    # a whole module cast to bf16 works too
    pos_bf16 = build_positional(name, num_heads=H, head_dim=D, max_len=64).to(torch.bfloat16)
    assert _attention(pos_bf16, x).dtype == torch.bfloat16


def test_build_passes_sizes_and_kwargs():
    shaw = build_positional("shaw", num_heads=H, head_dim=D, max_distance=3)
    assert shaw.weight.shape == (7, D)
    t5 = build_positional("t5", num_heads=H, head_dim=D, num_buckets=12, max_distance=40)
    assert t5.weight.shape == (12, H)
    sin = build_positional("sinusoidal", num_heads=H, head_dim=D, max_len=9)
    assert sin.pe.shape == (9, D_MODEL)
    learned = build_positional("learned", num_heads=H, head_dim=D, d_model=11, max_len=9)
    assert learned.weight.shape == (9, 11)
    assert build_positional("rope", num_heads=H, head_dim=D, base=100.0).base == 100.0
    assert build_positional("alibi", num_heads=H, head_dim=D).num_heads == H
    assert isinstance(build_positional("none", num_heads=H, head_dim=D), NoPositionalEncoding)


def test_build_accepts_module_and_rejects_bad():
    m = ALiBi(H)
    assert build_positional(m, num_heads=H, head_dim=D) is m
    with pytest.raises(ValueError, match="valid positional encodings: alibi, learned, none, rope, shaw, sinusoidal, t5"):
        build_positional("rotary", num_heads=H, head_dim=D)
    with pytest.raises(ValueError, match="unknown positional encoding"):
        build_positional(None, num_heads=H, head_dim=D)
    with pytest.raises(TypeError, match="PositionalScheme protocol"):
        build_positional(nn.Linear(2, 2), num_heads=H, head_dim=D)
    with pytest.raises(TypeError, match="already built"):
        build_positional(m, num_heads=H, head_dim=D, max_distance=3)
    with pytest.raises(TypeError, match="unexpected keyword"):
        build_positional("alibi", num_heads=H, head_dim=D, max_distance=3)
    with pytest.raises(ValueError, match="head_dim"):
        build_positional("rope", num_heads=H, head_dim=0)
