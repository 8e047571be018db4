"""Every attnlab.nn module path through the dispatcher equals its forced reference path
(values, weights and gradients to 1e-5), and reports which path it took."""

import pytest
import torch

from attnlab.kernels.dispatch import explain_paths
from attnlab.nn import AdditiveAttention, CrossAttention, LuongAttention, MultiheadAttention, SelfAttention, SimpleSelfAttention

B, TQ, TK = 2, 5, 7


def _x(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).requires_grad_()


def _mask(seed=3):
    m = torch.rand(B, TQ, TK, generator=torch.Generator().manual_seed(seed)) > 0.4
    m[0, 1] = False  # a fully masked query row
    return m


def _compare(module, args, kwargs, want_path, inputs):
    with explain_paths() as log:
        fast = module(*args, **kwargs, need_weights=True)
    assert log and log[-1].path == want_path, log
    ref = module(*args, **kwargs, need_weights=True, impl="reference")
    torch.testing.assert_close(fast.output, ref.output, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.weights, ref.weights, atol=1e-5, rtol=1e-5)
    fast_nw = module(*args, **kwargs)  # without weights: the kernels' cheapest form
    torch.testing.assert_close(fast_nw.output, ref.output, atol=1e-5, rtol=1e-5)
    params = [p for p in module.parameters() if p.requires_grad]
    g = torch.randn(ref.output.shape, generator=torch.Generator().manual_seed(9))
    xs = [*inputs, *params]
    ga = torch.autograd.grad(fast_nw.output, xs, g, allow_unused=True)
    gr = torch.autograd.grad(ref.output, xs, g, allow_unused=True)
    for a, b in zip(ga, gr):
        if b is None:
            assert a is None
        else:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("single", [False, True])
def test_additive_attention_uses_fused_kernel(masked, single):
    torch.manual_seed(0)
    m = AdditiveAttention(3, 4, 11)
    q = _x(B, 3, seed=1) if single else _x(B, TQ, 3, seed=1)
    k, v = _x(B, TK, 4, seed=2), _x(B, TK, 5, seed=3)
    mask = None
    if masked:
        mask = _mask()[:, 0] if single else _mask()
    _compare(m, (q, k, v), dict(mask=mask), "additive", (q, k, v))


def test_additive_projected_keys_is_reported_as_reference():
    m = AdditiveAttention(3, 4, 11)
    q, k = _x(B, TQ, 3, seed=1), _x(B, TK, 4, seed=2)
    with explain_paths() as log:
        m(q, k, projected_keys=m.precompute_keys(k))
    assert log[-1].path == "reference"
    with pytest.raises(ValueError, match="unknown impl 'fastest'"):
        AdditiveAttention(3, 4, 11, impl="fastest")


@pytest.mark.parametrize(
    "score, mode, path",
    [("dot", "global", "sdpa"), ("general", "global", "sdpa"), ("concat", "global", "additive"),
     ("general", "local-m", "sdpa"), ("concat", "local-p", "reference")],
)  # fmt: skip
def test_luong_attention_paths(score, mode, path):
    torch.manual_seed(0)
    m = LuongAttention(4, 4 if score == "dot" else 6, score=score, mode=mode, window=2, hidden_dim=7)
    q, k = _x(B, TQ, 4, seed=1), _x(B, TK, m.key_dim, seed=2)
    _compare(m, (q, k), dict(mask=_mask()), path, (q, k))


@pytest.mark.parametrize(
    "normalizer, path",
    [("softmax", "sdpa"), ("sigmoid", "sdpa-or-normalized"), ("relu", "sdpa-or-normalized"), ("entmax15", "reference")],
)
def test_self_and_cross_attention_paths(normalizer, path):
    torch.manual_seed(0)
    sa = SelfAttention(6, 4, 3, normalizer=normalizer)
    x = _x(B, TK, 6, seed=1)
    mask = torch.rand(B, TK, TK, generator=torch.Generator().manual_seed(4)) > 0.3
    # with weights asked for, sigmoid/relu run the reference; without, the tiled kernel
    want = {"sdpa-or-normalized": "reference"}.get(path, path)
    _compare(sa, (x,), dict(mask=mask, is_causal=True), want, (x,))
    if path == "sdpa-or-normalized":
        with explain_paths() as log:
            sa(x, mask=mask)
        assert log[-1].path == "normalized"
    ca = CrossAttention(3, 6, 4, normalizer=normalizer)
    q, c = _x(B, TQ, 3, seed=5), _x(B, TK, 6, seed=6)
    _compare(ca, (q, c), dict(mask=_mask()), want, (q, c))


def test_simple_self_attention_sdpa():
    x = _x(B, TK, 4, seed=1)
    _compare(SimpleSelfAttention(scale=True), (x,), dict(is_causal=True), "sdpa", (x,))


@pytest.mark.parametrize("with_masks", [False, True])
def test_multihead_weights_from_lse_match_reference(with_masks):
    torch.manual_seed(0)
    m = MultiheadAttention(12, 3, batch_first=True)
    x = _x(B, TK, 12, seed=1)
    kw = dict(average_attn_weights=False)
    if with_masks:
        kpm = torch.zeros(B, TK, dtype=torch.bool)
        kpm[1, 4:] = True
        kw.update(key_padding_mask=kpm, attn_mask=torch.triu(torch.ones(TK, TK, dtype=torch.bool), 1))
    with explain_paths() as log:
        o, w = m(x, x, x, **kw)
    assert log[-1].path == "sdpa" and "LSE" in log[-1].reason
    ro, rw = m(x, x, x, impl="reference", **kw)
    torch.testing.assert_close(o, ro, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w, rw, atol=1e-5, rtol=1e-5)
    # the weights are differentiable like the reference's
    gw = torch.randn(w.shape, generator=torch.Generator().manual_seed(2))
    ga = torch.autograd.grad((w * gw).sum() + o.sum(), [x, *m.parameters()], allow_unused=True)
    gr = torch.autograd.grad((rw * gw).sum() + ro.sum(), [x, *m.parameters()], allow_unused=True)
    for a, b in zip(ga, gr):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # selected heads / rows: exactly the slices of the full weights
    _, ws = m(x, x, x, weights_heads=[2, 0], weights_rows=slice(1, 4), **kw)
    torch.testing.assert_close(ws, rw[:, [2, 0], 1:4], atol=1e-5, rtol=1e-5)
    _, wr = m(x, x, x, weights_heads=[2, 0], weights_rows=[6, 0], impl="reference", **kw)
    torch.testing.assert_close(wr, rw[:, [2, 0]][:, :, [6, 0]])
    masks = {n: t for n, t in kw.items() if n != "average_attn_weights"}
    _, wa = m(x, x, x, weights_heads=torch.tensor([1]), **masks)
    torch.testing.assert_close(wa, rw[:, 1], atol=1e-5, rtol=1e-5)  # averaged over the one head


def test_multihead_weight_selection_bad_input():
    m = MultiheadAttention(12, 3, batch_first=True)
    x = torch.randn(B, TK, 12)
    with pytest.raises(ValueError, match="weights_heads must hold indices in \\[-3, 2\\]"):
        m(x, x, x, weights_heads=[3])
    with pytest.raises(TypeError, match="weights_rows"):
        m(x, x, x, weights_rows=["a"])
