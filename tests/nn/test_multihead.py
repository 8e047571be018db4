"""attnlab.nn.MultiheadAttention against torch.nn.MultiheadAttention (the reference),
between its two core paths, and against itself under GQA / KV cache / positional."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
from torch import nn

from attnlab.nn.kv_cache import KVCache
from attnlab.nn.multihead import ATTENTION_IMPLS, MultiheadAttention, reference_attention

E, H, B, L, S = 12, 3, 3, 5, 7  # distinct sizes: a swapped axis fails
TOL = dict(atol=1e-5, rtol=1e-5)
IMPLS = ["sdpa", "reference"]


# --------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Hundreds of tiny matmuls: with several intra-op threads on a shared 2-core
    # machine they spend their time spinning (10x slower). Restored afterwards.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_pair(seed: int = 0, **kw):
    """torch's module with random (non-zero) parameters and ours loaded from its
    state_dict, strict. Zero-initialised biases would hide bias bugs, hence the noise."""
    torch.manual_seed(seed)
    ref = nn.MultiheadAttention(E, H, **kw)
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0.0, 0.4)
    ours = MultiheadAttention(E, H, **kw)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref.eval(), ours.eval()


def make_inputs(kw, *, batched=True, seed=1, L=L, S=S):
    g = torch.Generator().manual_seed(seed)
    kdim, vdim = kw.get("kdim") or E, kw.get("vdim") or E
    if not batched:
        shapes = [(L, E), (S, kdim), (S, vdim)]
    elif kw.get("batch_first"):
        shapes = [(B, L, E), (B, S, kdim), (B, S, vdim)]
    else:
        shapes = [(L, B, E), (S, B, kdim), (S, B, vdim)]
    return [torch.randn(*s, generator=g) for s in shapes]


def make_masks(kind: str, *, batched=True, seed=2, L=L, S=S, nh=H):
    """(key_padding_mask, attn_mask) in torch's conventions (bool True = NOT allowed)."""
    g = torch.Generator().manual_seed(seed)
    kpm_shape = (B, S) if batched else (S,)
    a3_shape = (B * nh, L, S) if batched else (nh, L, S)

    def boolm(shape):
        return torch.rand(shape, generator=g) < 0.3

    def floatm(shape):
        m = torch.randn(shape, generator=g)
        return m.masked_fill(torch.rand(shape, generator=g) < 0.2, float("-inf"))

    return {
        "none": (None, None),
        "kpm_bool": (boolm(kpm_shape), None),
        "kpm_float": (floatm(kpm_shape), None),
        "attn2_bool": (None, boolm((L, S))),
        "attn2_float": (None, floatm((L, S))),
        "attn3_bool": (None, boolm(a3_shape)),
        "attn3_float": (None, floatm(a3_shape)),
        "both_bool": (boolm(kpm_shape), boolm(a3_shape)),
        "mixed": (boolm(kpm_shape), floatm((L, S))),
    }[kind]


def assert_close(actual, expected, *, atol=1e-5, rtol=1e-5):
    """torch.testing.assert_close without its first-call import of torch.distributed
    (and sympy): about 10 s on this machine."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    err = (actual - expected).abs()
    bad = err > atol + rtol * expected.abs()
    assert not bad.any(), f"{int(bad.sum())} of {bad.numel()} elements differ; max abs error {float(err.max()):.3g}"


def assert_matches(ours, ref, **tol):
    """Compare where torch is finite (torch gives NaN for fully masked queries, attnlab
    gives 0 there); attnlab must be finite everywhere."""
    assert ours.shape == ref.shape and ours.dtype == ref.dtype
    assert torch.isfinite(ours).all()
    ok = torch.isfinite(ref)
    assert ok.float().mean() > 0.5  # the comparison still covers most rows
    assert_close(ours[ok], ref[ok], **(tol or TOL))


def call_both(ref, ours, args, impl, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's "mismatched mask types is deprecated"
        r = ref(*args, **kw)
    o = ours(*args, impl=impl, **kw)
    return r, o


# --------------------------------------------------------------------------- against torch

CONFIGS = {
    "default": {},
    "batch_first": {"batch_first": True},
    "kdim_vdim": {"kdim": 5, "vdim": 7},
    "no_bias": {"bias": False},
    "bias_kv": {"add_bias_kv": True},
    "zero_attn": {"add_zero_attn": True},
    "all_extras": {"add_bias_kv": True, "add_zero_attn": True, "kdim": 5, "vdim": 7, "batch_first": True},
    "dropout_eval": {"dropout": 0.4},
}
MASKS = [
    "none", "kpm_bool", "kpm_float", "attn2_bool", "attn2_float", "attn3_bool", "attn3_float", "both_bool", "mixed",
]
WEIGHTS = {"no_weights": (False, True), "averaged": (True, True), "per_head": (True, False)}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("masks", MASKS)
@pytest.mark.parametrize("config", list(CONFIGS))
def test_matches_torch_cross_attention(config, masks, impl):
    kw = CONFIGS[config]
    ref, ours = make_pair(**kw)
    kpm, am = make_masks(masks)
    args = make_inputs(kw)
    for need, avg in WEIGHTS.values():
        (ro, rw), (oo, ow) = call_both(
            ref, ours, args, impl, key_padding_mask=kpm, attn_mask=am, need_weights=need, average_attn_weights=avg
        )
        assert_matches(oo, ro)
        if need:
            assert_matches(ow, rw)
        else:
            assert ow is None and rw is None


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("masks", ["none", "kpm_bool", "attn3_float", "both_bool"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_matches_torch_self_attention(batch_first, masks, impl):
    # query is key is value: the fused projection path.
    ref, ours = make_pair(batch_first=batch_first)
    x = make_inputs({"batch_first": batch_first}, L=L, S=L)[0]
    kpm, am = make_masks(masks, L=L, S=L)
    for need in (False, True):
        (ro, rw), (oo, ow) = call_both(ref, ours, (x, x, x), impl, key_padding_mask=kpm, attn_mask=am,
                                       need_weights=need)
        assert_matches(oo, ro)
        if need:
            assert_matches(ow, rw)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("masks", ["none", "kpm_bool", "kpm_float", "attn2_bool", "attn3_float", "both_bool"])
@pytest.mark.parametrize("config", ["default", "all_extras"])
def test_matches_torch_unbatched(config, masks, impl):
    kw = CONFIGS[config]
    ref, ours = make_pair(**kw)
    kpm, am = make_masks(masks, batched=False)
    args = make_inputs(kw, batched=False)
    S_ = S + int(kw.get("add_bias_kv", False)) + int(kw.get("add_zero_attn", False))  # appended keys
    for need, avg in WEIGHTS.values():
        (ro, rw), (oo, ow) = call_both(
            ref, ours, args, impl, key_padding_mask=kpm, attn_mask=am, need_weights=need, average_attn_weights=avg
        )
        assert oo.shape == (L, E)
        assert_matches(oo, ro)
        if need:
            assert ow.shape == ((L, S_) if avg else (H, L, S_))
            assert_matches(ow, rw)


def _torch_causal(Lq, Sk):
    # torch's bool convention: True = NOT allowed; top-left aligned like SDPA's is_causal.
    return ~torch.ones(Lq, Sk, dtype=torch.bool).tril()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("need", [False, True])
@pytest.mark.parametrize("with_kpm", [False, True])
@pytest.mark.parametrize("lengths", [(5, 5), (5, 7)])
def test_is_causal_matches_torch(lengths, with_kpm, need, impl):
    Lq, Sk = lengths
    ref, ours = make_pair()
    args = make_inputs({}, L=Lq, S=Sk)
    kpm = make_masks("kpm_bool", L=Lq, S=Sk)[0] if with_kpm else None
    am = _torch_causal(Lq, Sk)
    (ro, rw), (oo, ow) = call_both(ref, ours, args, impl, key_padding_mask=kpm, attn_mask=am, need_weights=need,
                                   is_causal=True)
    assert_matches(oo, ro)
    # attnlab does not need the mask as a hint (torch raises without it).
    oo2, ow2 = ours(*args, key_padding_mask=kpm, need_weights=need, is_causal=True, impl=impl)
    assert_matches(oo2, ro)
    if need:
        assert_matches(ow, rw)
        assert_matches(ow2, rw)
        assert (ow2.masked_select(am.expand_as(ow2)) == 0).all()


def test_is_causal_combines_with_a_non_causal_attn_mask():
    # Not the causal mask itself: attnlab applies both (AND), whichever path runs.
    _, ours = make_pair()
    args = make_inputs({}, L=L, S=L)
    band = torch.ones(L, L, dtype=torch.bool).triu(-1).tril(1)  # (L, L) True = allowed
    outs = [ours(*args, attn_mask=~band, is_causal=True, impl=i, average_attn_weights=False) for i in IMPLS]
    expected_allowed = band & torch.ones(L, L, dtype=torch.bool).tril()
    for o, w in outs:
        assert ((w > 0) == expected_allowed).all()
    assert_close(outs[0][0], outs[1][0], **TOL)


@pytest.mark.parametrize("impl", IMPLS)
def test_gradients_match_torch(impl):
    ref, ours = make_pair(kdim=5, vdim=7, add_bias_kv=True)
    ref.train(), ours.train()  # dropout is 0: training mode only changes the graph
    kpm, am = make_masks("both_bool")
    kpm[:, 0] = False  # keep every row partly allowed so torch has no NaN gradient
    am[..., 0] = False
    inputs = [x.requires_grad_() for x in make_inputs({"kdim": 5, "vdim": 7})]
    r = torch.randn(B, L, S + 1, generator=torch.Generator().manual_seed(6))  # weights loss, not a constant
    ro, rw = ref(*inputs, key_padding_mask=kpm, attn_mask=am)
    (ro.square().sum() + (rw * r).sum()).backward()
    ref_grads = [x.grad.clone() for x in inputs] + [p.grad for p in ref.parameters()]
    for x in inputs:
        x.grad = None
    oo, ow = ours(*inputs, key_padding_mask=kpm, attn_mask=am, impl=impl)
    (oo.square().sum() + (ow * r).sum()).backward()
    our_grads = [x.grad for x in inputs] + [p.grad for p in ours.parameters()]
    assert [n for n, _ in ref.named_parameters()] == [n for n, _ in ours.named_parameters()]
    for gr, go in zip(ref_grads, our_grads):
        assert_close(go, gr, atol=1e-4, rtol=1e-5)


def test_same_seed_gives_same_initial_parameters_as_torch():
    for kw in ({}, {"kdim": 5, "vdim": 7, "add_bias_kv": True}, {"bias": False}):
        torch.manual_seed(3)
        ref = nn.MultiheadAttention(E, H, **kw)
        torch.manual_seed(3)
        ours = MultiheadAttention(E, H, **kw)
        rs, os_ = ref.state_dict(), ours.state_dict()
        assert list(rs) == list(os_)
        for name in rs:
            assert torch.equal(rs[name], os_[name]), name
        assert isinstance(ours.out_proj, nn.Linear)


def test_drop_in_inside_torch_transformer_encoder_layer():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(E, H, dim_feedforward=11, dropout=0.0, batch_first=True)
    x = torch.randn(B, L, E)
    kpm = make_masks("kpm_bool", S=L)[0]
    kpm[:, 0] = False
    expected = layer(x, src_key_padding_mask=kpm)
    ours = MultiheadAttention(E, H, batch_first=True)
    ours.load_state_dict(layer.self_attn.state_dict(), strict=True)
    layer.self_attn = ours
    assert_close(layer(x, src_key_padding_mask=kpm), expected, **TOL)


# --------------------------------------------------------------------------- the two paths


@pytest.mark.parametrize("masks", ["kpm_float", "attn3_bool"])
def test_paths_agree_in_float64_and_gradcheck(masks):
    torch.manual_seed(0)
    m = MultiheadAttention(6, 2, batch_first=True, add_zero_attn=True, dtype=torch.float64)
    kpm, am = make_masks(masks, L=3, S=4, nh=2)
    if kpm is not None:
        kpm = kpm.double() if kpm.is_floating_point() else kpm
    if am is not None:
        am = am.double() if am.is_floating_point() else am
    g = torch.Generator().manual_seed(4)
    q, k = (torch.randn(B, t, 6, generator=g, dtype=torch.float64, requires_grad=True) for t in (3, 4))
    outs = {}
    for impl in IMPLS:
        def f(q, k):
            o, w = m(q, k, k, key_padding_mask=kpm, attn_mask=am, impl=impl, average_attn_weights=False)
            return o, w

        outs[impl] = f(q, k)
        assert torch.autograd.gradcheck(f, (q, k), atol=1e-6, fast_mode=True)
    for a, b in zip(outs["sdpa"], outs["reference"]):
        assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_custom_callable_impl_and_logging(caplog):
    _, ours = make_pair()
    args = make_inputs({})
    seen = []

    def spy(q, k, v, **kw):
        seen.append(q.shape)
        return reference_attention(q, k, v, **kw)

    with caplog.at_level(logging.DEBUG, logger="attnlab"):
        o1, _ = ours(*args, impl=spy)
        o2, _ = ours(*args, impl="sdpa")
        ours.impl = "reference"
        o3, _ = ours(*args)
    assert seen == [(B, H, L, E // H)]
    msgs = [r.getMessage() for r in caplog.records if r.name == "attnlab"]
    assert any("impl=spy" in s for s in msgs)
    assert any("impl=sdpa" in s for s in msgs)
    assert any("impl=reference" in s for s in msgs)
    assert_close(o1, o2, **TOL)
    assert_close(o3, o2, **TOL)
    assert set(ATTENTION_IMPLS) == {"sdpa", "reference"}


@pytest.mark.parametrize("impl", IMPLS)
def test_dropout_only_in_training(impl):
    _, ours = make_pair(dropout=0.5)
    args = make_inputs({})
    eval_o, eval_w = ours(*args, impl=impl)
    ours.train()
    torch.manual_seed(5)
    tr_o, tr_w = ours(*args, impl=impl)
    assert not torch.allclose(tr_o, eval_o, atol=1e-3)
    assert_close(tr_w, eval_w, **TOL)  # returned weights are before dropout
    ours.dropout = 0.0
    assert_close(ours(*args, impl=impl)[0], eval_o, **TOL)


# --------------------------------------------------------------------------- fully masked rows


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("float_mask", [False, True])
def test_fully_masked_rows_give_zero_not_nan(impl, float_mask):
    _, ours = make_pair(batch_first=True)
    ours.train()
    q, k, v = (x.requires_grad_() for x in make_inputs({"batch_first": True}))
    kpm = torch.zeros(B, S, dtype=torch.bool)
    kpm[1] = True  # batch 1: every key is padding
    am = torch.zeros(L, S, dtype=torch.bool)
    am[2] = True  # query 2: nothing allowed, in every batch
    if float_mask:
        kpm = torch.zeros(B, S).masked_fill(kpm, float("-inf"))
        am = torch.zeros(L, S).masked_fill(am, float("-inf"))
    o, w = ours(q, k, v, key_padding_mask=kpm, attn_mask=am, average_attn_weights=False)
    assert torch.isfinite(o).all() and torch.isfinite(w).all()
    dead = torch.zeros(B, L, dtype=torch.bool)
    dead[1] = True
    dead[:, 2] = True
    # Zero attention output -> out_proj gives its bias.
    assert_close(o[dead], ours.out_proj.bias.expand(int(dead.sum()), E), **TOL)
    assert (w[dead.unsqueeze(1).expand(B, H, L)] == 0).all()
    (o.square().sum() + (w * torch.randn(w.shape)).sum()).backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all()
    assert (q.grad[dead] == 0).all()
    assert (k.grad[1] == 0).all() and (v.grad[1] == 0).all()


# --------------------------------------------------------------------------- GQA / MQA

EG, HG = 24, 6  # head_dim 4 (even, for RoPE)


def _expand_kv(w: torch.Tensor, kv_heads: int, groups: int) -> torch.Tensor:
    # (H_kv*D, ...) -> (H*D, ...): query head h reads kv head h // groups.
    return w.unflatten(0, (kv_heads, -1)).repeat_interleave(groups, dim=0).flatten(0, 1)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kv_heads", [3, 2, 1])
def test_gqa_equals_mha_with_repeated_kv_weights(kv_heads, impl):
    torch.manual_seed(0)
    gqa = MultiheadAttention(EG, HG, num_kv_heads=kv_heads, batch_first=True, add_bias_kv=True).eval()
    with torch.no_grad():
        for p in gqa.parameters():
            p.normal_(0.0, 0.3)
    G = HG // kv_heads
    D = EG // HG
    assert gqa.in_proj_weight is None
    assert gqa.k_proj_weight.shape == (kv_heads * D, EG) and gqa.in_proj_bias.shape == (EG + 2 * kv_heads * D,)
    mha = MultiheadAttention(EG, HG, batch_first=True, add_bias_kv=True).eval()
    b_q, b_k, b_v = gqa.in_proj_bias.detach().split([EG, kv_heads * D, kv_heads * D])
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([gqa.q_proj_weight, _expand_kv(gqa.k_proj_weight, kv_heads, G),
                                            _expand_kv(gqa.v_proj_weight, kv_heads, G)]))
        mha.in_proj_bias.copy_(torch.cat([b_q, _expand_kv(b_k, kv_heads, G), _expand_kv(b_v, kv_heads, G)]))
        mha.bias_k.copy_(_expand_kv(gqa.bias_k.reshape(-1), kv_heads, G).reshape(1, 1, -1))
        mha.bias_v.copy_(_expand_kv(gqa.bias_v.reshape(-1), kv_heads, G).reshape(1, 1, -1))
        mha.out_proj.load_state_dict(gqa.out_proj.state_dict())
    g = torch.Generator().manual_seed(1)
    x, mem = torch.randn(B, L, EG, generator=g), torch.randn(B, S, EG, generator=g)
    kpm, am = make_masks("both_bool", nh=HG)
    kpm[:, 0] = False
    got = gqa(x, mem, mem, key_padding_mask=kpm, attn_mask=am, average_attn_weights=False, impl=impl)
    want = mha(x, mem, mem, key_padding_mask=kpm, attn_mask=am, average_attn_weights=False, impl="reference")
    for a, b in zip(got, want):
        assert_close(a, b, **TOL)


def test_gqa_with_num_kv_heads_equal_num_heads_is_plain_mha():
    ref, _ = make_pair()
    ours = MultiheadAttention(E, H, num_kv_heads=H)
    ours.load_state_dict(ref.state_dict(), strict=True)
    args = make_inputs({})
    assert_matches(ours(*args)[0], ref(*args)[0])


# --------------------------------------------------------------------------- positional + KV cache


def _decoder(positional, kv_heads, seed=0):
    torch.manual_seed(seed)
    m = MultiheadAttention(EG, HG, num_kv_heads=kv_heads, positional=positional, batch_first=True).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.3)
    return m


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("max_len", [None, 9])
@pytest.mark.parametrize("kv_heads", [6, 2, 1])
@pytest.mark.parametrize("positional", [None, "rope", "alibi", "t5"])
def test_kv_cache_decoding_equals_full_causal_forward(positional, kv_heads, max_len, impl):
    m = _decoder(positional, kv_heads)
    T = 7
    x = torch.randn(B, T, EG, generator=torch.Generator().manual_seed(1))
    full, full_w = m(x, x, x, is_causal=True, average_attn_weights=False, impl=impl)
    cache = KVCache(max_len=max_len)
    outs, chunks = [], [(0, 3), (3, 4), (4, 5), (5, 7)]  # a prefill chunk, single steps, a 2-token chunk
    with torch.no_grad():
        for a, b in chunks:
            xs = x[:, a:b]
            o, w = m(xs, xs, xs, kv_cache=cache, average_attn_weights=False, impl=impl)
            assert w.shape == (B, HG, b - a, b)
            assert_close(w, full_w[:, :, a:b, :b], **TOL)
            outs.append(o)
    assert cache.length == T
    assert_close(torch.cat(outs, dim=1), full, **TOL)
    cache.reset()
    with torch.no_grad():
        o0, _ = m(x[:, :1], x[:, :1], x[:, :1], kv_cache=cache, need_weights=False, impl=impl)
    assert_close(o0, full[:, :1], **TOL)


@pytest.mark.parametrize("batch", [1, 3])
def test_one_token_decode_step_takes_the_lean_path_and_matches_the_full_forward(batch):
    from attnlab.kernels.dispatch import explain_paths

    m = _decoder(None, HG)
    T = 6
    x = torch.randn(batch, T, EG, generator=torch.Generator().manual_seed(3))
    full, _ = m(x, x, x, is_causal=True, need_weights=False)
    cache, outs = KVCache(max_len=T), []
    with torch.no_grad(), explain_paths() as log:
        outs.append(m(x[:, :2], x[:, :2], x[:, :2], kv_cache=cache, need_weights=False)[0])  # prefill: general
        for t in range(2, T):
            xt = x[:, t : t + 1]
            o, w = m(xt, xt, xt, kv_cache=cache, need_weights=False)
            assert w is None and o.shape == (batch, 1, EG)
            outs.append(o)
    assert [r.reason for r in log] == ["causal"] + ["decode step"] * (T - 2)
    assert_close(torch.cat(outs, dim=1), full, **TOL)
    # What the lean path does not cover goes the general way: weights, masks, another impl,
    # positions inside attention, grouped-query heads (separate projections).
    xt = x[:, :1]
    cases = [
        (m, dict(need_weights=True)),
        (m, dict(need_weights=False, key_padding_mask=torch.zeros(batch, 1, dtype=torch.bool))),
        (m, dict(need_weights=False, impl="reference")),
        (_decoder("rope", HG), dict(need_weights=False)),
        (_decoder(None, 2), dict(need_weights=False)),
    ]
    for mod, kw in cases:
        with torch.no_grad(), explain_paths() as log:
            mod(xt, xt, xt, kv_cache=KVCache(), **kw)
        assert log and all(r.reason != "decode step" for r in log), kw


@pytest.mark.parametrize("positional", ["rope", "alibi", "t5", "shaw"])
def test_positional_paths_agree_and_change_the_output(positional):
    m = _decoder(positional, 2)
    plain = _decoder(None, 2)
    x = torch.randn(B, L, EG, generator=torch.Generator().manual_seed(1))
    r = torch.randn(B, L, EG, generator=torch.Generator().manual_seed(2))
    results, grads = [], []
    for impl in IMPLS:
        m.zero_grad()
        out = m(x, x, x, average_attn_weights=False, is_causal=True, impl=impl)
        (out[0] * r).sum().backward()  # learned tables (t5, shaw) get gradients on both paths
        results.append(out)
        grads.append({n: p.grad.clone() for n, p in m.named_parameters()})
    a, b = results
    for u, v in zip(a, b):
        assert_close(u, v, **TOL)
    for n in grads[0]:
        assert_close(grads[0][n], grads[1][n], atol=1e-4, rtol=1e-5)
    assert not torch.allclose(a[0], plain(x, x, x, is_causal=True)[0], atol=1e-3)


def test_rope_is_relative_so_a_shifted_cache_offset_changes_nothing_for_one_key():
    # A single query attending a single key: RoPE's score depends on their distance only.
    m = _decoder("rope", 2)
    x = torch.randn(B, 1, EG, generator=torch.Generator().manual_seed(1))
    o0, _ = m(x, x, x)
    cache = KVCache()
    cache.append(torch.zeros(B, 2, 4, EG // HG), torch.zeros(B, 2, 4, EG // HG))
    # Behind 4 cached (padding) keys the pair sits at position 4 instead of 0; the
    # padding is masked away, so only the rotation offset differs, and RoPE cancels it.
    kpm = torch.tensor([[True] * 4 + [False]]).expand(B, 5)
    o1, w1 = m(x, x, x, kv_cache=cache, key_padding_mask=kpm, average_attn_weights=False)
    assert (w1[..., :4] == 0).all()
    assert_close(o1, o0, **TOL)


def test_positional_bookkeeping():
    m = MultiheadAttention(EG, HG, positional="rope", batch_first=True)
    assert m._qkv_same_embed_dim is False  # torch's fused encoder kernel must not bypass RoPE
    assert MultiheadAttention(EG, HG)._qkv_same_embed_dim is True
    t5 = MultiheadAttention(EG, HG, positional="t5")
    assert any(k.startswith("positional.") for k in t5.state_dict())


# --------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("impl", IMPLS)
def test_bfloat16_follows_input_and_is_close_to_float32(impl):
    _, ours = make_pair(batch_first=True, add_zero_attn=True)
    args = make_inputs({"batch_first": True})
    kpm = make_masks("kpm_bool")[0]
    kpm[:, 0] = False
    o32, w32 = ours(*args, key_padding_mask=kpm, impl=impl)
    ours.to(torch.bfloat16)
    o16, w16 = ours(*(a.bfloat16() for a in args), key_padding_mask=kpm, impl=impl)
    assert o16.dtype == torch.bfloat16 and w16.dtype == torch.bfloat16
    scale = o32.abs().max()
    assert (o16.float() - o32).abs().max() < 0.05 * scale
    assert (w16.float() - w32).abs().max() < 0.03


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(embed_dim=12, num_heads=5), ValueError, r"embed_dim \(12\).*num_heads \(5\)"),
        (dict(embed_dim=0, num_heads=1), ValueError, "embed_dim"),
        (dict(embed_dim=12, num_heads=0), ValueError, "num_heads"),
        (dict(embed_dim=12, num_heads=3.0), TypeError, "num_heads"),
        (dict(embed_dim=24, num_heads=6, num_kv_heads=4), ValueError, r"num_heads \(6\).*num_kv_heads \(4\)"),
        (dict(embed_dim=24, num_heads=6, num_kv_heads=0), ValueError, "num_kv_heads"),
        (dict(embed_dim=12, num_heads=3, dropout=1.0), ValueError, "dropout"),
        (dict(embed_dim=12, num_heads=3, kdim=-1), ValueError, "kdim"),
        (dict(embed_dim=12, num_heads=3, impl="flash"), ValueError, "impl.*reference, sdpa"),
        (dict(embed_dim=12, num_heads=3, positional="sinusoidal"), ValueError, "input encoding"),
        (dict(embed_dim=12, num_heads=3, positional="nope"), ValueError, "positional"),
    ],
)
def test_bad_constructor_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        MultiheadAttention(**kwargs)


def test_bad_forward_arguments():
    _, m = make_pair(kdim=5, vdim=7)
    q, k, v = make_inputs({"kdim": 5, "vdim": 7})
    with pytest.raises(ValueError, match=r"query must have last dimension embed_dim=12"):
        m(q[..., :-1], k, v)
    with pytest.raises(ValueError, match=r"key must have last dimension kdim=5"):
        m(q, v, v)
    with pytest.raises(ValueError, match=r"query must be 2-D"):
        m(q[None], k, v)
    with pytest.raises(ValueError, match=r"key and value must be 3-D"):
        m(q, k[0], v)
    with pytest.raises(ValueError, match=r"batch size"):
        m(q, k[:, :2], v[:, :2])
    with pytest.raises(ValueError, match=r"same number of positions"):
        m(q, k, v[:-1])
    with pytest.raises(TypeError, match=r"query must be a floating"):
        m(q.long(), k, v)
    with pytest.raises(ValueError, match=r"attn_mask must have shape \(L, S\) = \(5, 7\) or "
                       r"\(B\*num_heads, L, S\) = \(9, 5, 7\)"):
        m(q, k, v, attn_mask=torch.zeros(7, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"attn_mask must have shape"):
        m(q, k, v, attn_mask=torch.zeros(B, H, L, S, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"attn_mask must be a bool tensor .*got torch.int64"):
        m(q, k, v, attn_mask=torch.zeros(L, S, dtype=torch.long))
    with pytest.raises(ValueError, match=r"key_padding_mask must have shape \(B, S\) = \(3, 7\)"):
        m(q, k, v, key_padding_mask=torch.zeros(S, B, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"key_padding_mask must be a bool tensor"):
        m(q, k, v, key_padding_mask=torch.zeros(B, S, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"unknown impl 'fast'"):
        m(q, k, v, impl="fast")
    _, sm = make_pair()
    with pytest.raises(TypeError, match=r"kv_cache must be an attnlab KVCache"):
        sm(q, q, q, kv_cache={})
    with pytest.raises(ValueError, match=r"with kv_cache, key must hold the same new positions"):
        sm(q, q[:2], q[:2], kv_cache=KVCache())
    cache = KVCache(max_len=6)
    sm(q, q, q, kv_cache=cache)
    with pytest.raises(ValueError, match=r"max_len=6"):
        sm(q[:2], q[:2], q[:2], kv_cache=cache)
