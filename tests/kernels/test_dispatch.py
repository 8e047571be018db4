"""The dispatcher: which path each call takes, and that every path equals the reference."""

import logging
import os
import subprocess
import sys

import pytest
import torch

from attnlab.functional import attend, window_mask
from attnlab.functional.positional import alibi_bias, alibi_slopes
from attnlab.kernels.bias import alibi_bias_fn
from attnlab.kernels.dispatch import attention, choose_path, explain_paths, weights_from_lse

DT = torch.float64


def _t(*shape, seed=0, grad=True):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DT)
    return x.requires_grad_(grad)


def _mask(*shape, seed=3, empty_row=True):
    m = torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) > 0.4
    if empty_row:
        m[..., 2, :] = False  # a fully masked query row
    return m


Q, K, V = _t(2, 3, 7, 5, seed=0), _t(2, 3, 11, 5, seed=1), _t(2, 3, 11, 4, seed=2)
HIDDEN = 6
ADD = dict(w_q=_t(HIDDEN, 5, seed=4), w_k=_t(HIDDEN, 5, seed=5), v=_t(HIDDEN, seed=6), bias=_t(HIDDEN, seed=7))
CONCAT = dict(weight=_t(HIDDEN, 10, seed=8), v=_t(HIDDEN, seed=9))

CASES = [
    ("sdpa", {}),
    ("sdpa", dict(mask=_mask(2, 1, 7, 11))),
    ("sdpa", dict(mask=_mask(7, 11), bias=_t(3, 7, 11, seed=10, grad=False), need_weights=True)),
    ("sdpa", dict(score="dot", mask=_mask(2, 3, 7, 11), need_weights=True)),
    ("sdpa", dict(score="scaled_dot", score_kwargs=dict(scale=0.3))),
    ("sdpa", dict(score="general", score_kwargs=dict(weight=_t(5, 5, seed=11)))),
    ("additive", dict(score="additive", score_kwargs=ADD, mask=_mask(2, 1, 7, 11), need_weights=True)),
    ("additive", dict(score="concat", score_kwargs=CONCAT)),
    ("normalized", dict(normalizer="sigmoid", mask=_mask(2, 1, 7, 11))),
    ("normalized", dict(normalizer="relu", mask=_mask(7, 11), normalizer_kwargs=dict(eps=1e-3))),
    ("reference", dict(normalizer="sparsemax", mask=_mask(2, 1, 7, 11))),
    ("reference", dict(normalizer="sigmoid", need_weights=True)),
    ("reference", dict(score="additive", score_kwargs=ADD, bias=_t(7, 11, seed=12, grad=False))),
    ("reference", dict(score=lambda q, k: q @ k.transpose(-2, -1))),
]


def _check_same(result, ref, inputs, need_weights, tol=1e-10):
    torch.testing.assert_close(result.output, ref.output, atol=tol, rtol=0)
    g = torch.randn(ref.output.shape, generator=torch.Generator().manual_seed(99), dtype=DT)
    ga = torch.autograd.grad(result.output, inputs, g, allow_unused=True)
    gr = torch.autograd.grad(ref.output, inputs, g, allow_unused=True)
    for a, b in zip(ga, gr):
        if b is None:
            assert a is None or a.abs().max() == 0
        else:
            torch.testing.assert_close(a, b, atol=tol, rtol=0)
    if need_weights:
        torch.testing.assert_close(result.weights, ref.weights, atol=tol, rtol=0)
    else:
        assert result.weights is None


@pytest.mark.parametrize("path, kw", CASES, ids=[f"{p}-{i}" for i, (p, _) in enumerate(CASES)])
def test_each_path_matches_reference(path, kw):
    with explain_paths() as log:
        ours = attention(Q, K, V, **kw)
    assert [r.path for r in log] == [path], log
    ref = attend(Q, K, V, **kw)
    params = [t for t in (kw.get("score_kwargs") or {}).values() if isinstance(t, torch.Tensor) and t.requires_grad]
    _check_same(ours, ref, (Q, K, V, *params), kw.get("need_weights", False))
    if kw.get("mask") is not None and kw["mask"].shape[-2] == 7 and not kw["mask"][..., 2, :].any():
        assert ours.output[..., 2, :].abs().max() == 0  # fully masked row: zeros, not NaN


def test_forced_reference_and_forced_path():
    with explain_paths() as log:
        r = attention(Q, K, V, impl="reference")
        attention(Q, K, V, impl="sdpa")
    assert [x.path for x in log] == ["reference", "sdpa"]
    assert "forced" in log[0].reason
    torch.testing.assert_close(r.output, attend(Q, K, V).output)
    with pytest.raises(ValueError, match="impl='additive' does not apply"):
        attention(Q, K, V, impl="additive")
    with pytest.raises(ValueError, match="unknown impl 'fast'; valid impls: auto, window"):
        attention(Q, K, V, impl="fast")


def test_window_spec_uses_window_kernel():
    q, k, v = _t(2, 13, 4, seed=20), _t(2, 13, 4, seed=21), _t(2, 13, 4, seed=22)
    for causal in (False, True):
        with explain_paths() as log:
            ours = attention(q, k, v, window=3, causal=causal)
        assert log[-1].path == "window"
        ref = attend(q, k, v, mask=window_mask(13, 13, 3, causal=causal))
        _check_same(ours, ref, (q, k, v), False, tol=1e-6)
    # a window together with another mask goes to the reference, still correct
    m = _mask(13, 13, empty_row=False)
    with explain_paths() as log:
        ours = attention(q, k, v, window=2, mask=m)
    assert log[-1].path == "reference"
    _check_same(ours, attend(q, k, v, mask=m & window_mask(13, 13, 2)), (q, k, v), False)


def test_bias_fn_uses_bias_kernel():
    q, k, v = _t(1, 3, 9, 4, seed=30), _t(1, 3, 9, 4, seed=31), _t(1, 3, 9, 4, seed=32)
    fn = alibi_bias_fn(alibi_slopes(3).to(DT))
    with explain_paths() as log:
        ours = attention(q, k, v, bias_fn=fn)
    assert log[-1].path == "bias"
    ref = attend(q, k, v, bias=alibi_bias(3, 9, 9).to(DT))
    _check_same(ours, ref, (q, k, v), False, tol=1e-6)
    with explain_paths() as log:
        forced = attention(q, k, v, bias_fn=fn, impl="reference")
    assert log[-1].path == "reference"
    torch.testing.assert_close(forced.output, ref.output)


def test_dropout_with_generator_is_reproducible_reference():
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    with explain_paths() as log:
        a = attention(Q, K, V, dropout_p=0.3, training=True, generator=g1)
    assert log[-1].path == "reference"
    b = attend(Q, K, V, dropout_p=0.3, training=True, generator=g2)
    torch.testing.assert_close(a.output, b.output)
    assert choose_path(Q, K, V, dropout_p=0.3, training=True)[0] == "sdpa"


def test_weights_from_lse_selected_heads_and_rows():
    q, k = _t(2, 3, 7, 5, seed=40), _t(2, 3, 11, 5, seed=41)
    mask = _mask(2, 1, 7, 11)
    scale = 0.4
    s = (q @ k.transpose(-2, -1)) * scale
    lse = s.masked_fill(~mask, float("-inf")).logsumexp(-1).detach()  # (B, H, Tq)
    full = attend(q, k, k, score="scaled_dot", score_kwargs=dict(scale=scale), mask=mask, need_weights=True).weights
    w = weights_from_lse(q, k, lse, scale=scale, mask=mask, heads=[2, 0], rows=[6, 2, 1])
    assert w.shape == (2, 2, 3, 11)
    torch.testing.assert_close(w, full[:, [2, 0]][:, :, [6, 2, 1]], atol=1e-12, rtol=0)
    assert w[:, :, 1].abs().max() == 0 and not torch.isnan(w).any()  # row 2 is fully masked
    gw = torch.randn(w.shape, dtype=DT)
    ga = torch.autograd.grad(w, (q, k), gw)
    gb = torch.autograd.grad(full[:, [2, 0]][:, :, [6, 2, 1]], (q, k), gw)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_logging_and_env_var(caplog):
    with caplog.at_level(logging.DEBUG, logger="attnlab.dispatch"):
        attention(Q, K, V, normalizer="relu", caller="probe")
    assert any(r.name == "attnlab.dispatch" and "probe -> normalized" in r.getMessage() for r in caplog.records)
    code = "import torch; from attnlab.kernels.dispatch import attention; attention(*(torch.randn(1, 2, 3, 4),) * 3)"
    env = dict(os.environ, ATTNLAB_DISPATCH_LOG="1")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "attnlab.dispatch: attention -> sdpa" in res.stderr


def test_bad_arguments():
    with pytest.raises(ValueError, match="window"):
        attention(Q, K, V, window=-1)
    with pytest.raises(TypeError, match="causal"):
        attention(Q, K, V, causal=1)
    with pytest.raises(TypeError, match="mask"):
        attention(Q, K, V, mask=torch.ones(7, 11))
    with pytest.raises(ValueError, match="mask"):
        attention(Q, K, V, mask=torch.ones(7, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="dropout_p"):
        attention(Q, K, V, dropout_p=1.5)
    with pytest.raises(ValueError, match="at most one"):
        attention(Q, K, V, window=1, bias_fn=alibi_bias_fn(alibi_slopes(3)))
