"""Tiled sigmoid / ReLU attention against the functional reference."""

import pytest
import torch

from attnlab.functional import attend
from attnlab.kernels.normalized import normalized_attention

NORMS = ["sigmoid", "relu"]


def _qkv(lead=(2, 3), Tq=7, Tk=11, D=5, Dv=4, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=dtype).requires_grad_()  # noqa: E731
    return mk(*lead, Tq, D), mk(*lead, Tk, D), mk(*lead, Tk, Dv)


def _grads(out, xs, seed=1):
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return torch.autograd.grad(out, xs, g, retain_graph=True)


@pytest.mark.parametrize("name", NORMS)
@pytest.mark.parametrize("block", [1, 3, 7, 256])
def test_matches_attend_with_mask_and_empty_rows(name, block):
    q, k, v = _qkv()
    mask = torch.rand(2, 1, 7, 11, generator=torch.Generator().manual_seed(2)) > 0.4  # (B, 1, Tq, Tk)
    mask[0, 0, 2] = False  # a fully masked query row
    ours = normalized_attention(q, k, v, name, mask=mask, block_size=block).output
    ref = attend(q, k, v, normalizer=name, mask=mask).output
    torch.testing.assert_close(ours, ref, atol=1e-12, rtol=0)
    assert ours[0, :, 2].abs().max() == 0
    for a, b in zip(_grads(ours, (q, k, v)), _grads(ref, (q, k, v))):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    # the fully masked row sends no gradient into its query
    assert _grads(ours, (q,))[0][0, :, 2].abs().max() == 0


@pytest.mark.parametrize("name", NORMS)
def test_gradcheck_float64(name):
    q, k, v = _qkv(lead=(3,), Tq=5, Tk=7, D=3, Dv=2)
    mask = torch.ones(5, 7, dtype=torch.bool)
    mask[1] = False
    mask[3, :4] = False
    fn = lambda q, k, v: normalized_attention(q, k, v, name, mask=mask, block_size=2).output  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v))


@pytest.mark.parametrize("name", NORMS)
def test_broadcast_batch_scale_and_eps(name):
    q, _, _ = _qkv(lead=(2, 3))
    _, k, v = _qkv(lead=(3,), seed=5)  # (H, Tk, D): shared by the batch
    kw = {"eps": 0.5} if name == "relu" else {}
    ours = normalized_attention(q, k, v, name, scale=1.0, block_size=4, **kw).output
    ref = attend(q, k, v, score="dot", normalizer=name, normalizer_kwargs=kw or None).output
    assert ours.shape == (2, 3, 7, 4)
    torch.testing.assert_close(ours, ref, atol=1e-12, rtol=0)


def test_hand_checked_numbers():
    # one query, keys with scores 0 and 2 (scale 1): sigmoid gates 0.5 and 0.8808
    q = torch.tensor([[1.0, 0.0]])
    k = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    v = torch.tensor([[1.0], [10.0]])
    out = normalized_attention(q, k, v, "sigmoid", scale=1.0).output
    assert out.item() == pytest.approx(0.5 * 1 + 0.8807970779778823 * 10, rel=1e-6)
    # relu: only the second key is positive -> weight 2 / (2 + eps)
    out = normalized_attention(q, k, v, "relu", scale=1.0).output
    assert out.item() == pytest.approx(10 * 2 / (2 + 1e-6), rel=1e-6)


@pytest.mark.parametrize("name", NORMS)
def test_bfloat16_follows_input_dtype(name):
    q, k, v = (x.detach().float() for x in _qkv(dtype=torch.float32))
    ours = normalized_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), name).output
    ref = attend(q, k, v, normalizer=name).output
    assert ours.dtype == torch.bfloat16
    torch.testing.assert_close(ours.float(), ref, atol=0.08, rtol=0.05)


def test_bad_input():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="normalizer"):
        normalized_attention(q, k, v, "softmax")
    with pytest.raises(ValueError, match="block_size"):
        normalized_attention(q, k, v, "relu", block_size=0)
    with pytest.raises(TypeError, match="mask"):
        normalized_attention(q, k, v, "relu", mask=torch.ones(7, 11))
    with pytest.raises(ValueError, match="mask"):
        normalized_attention(q, k, v, "relu", mask=torch.ones(7, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="last dimension"):
        normalized_attention(q, k[..., :3], v, "sigmoid")
    with pytest.raises(ValueError, match="eps"):
        normalized_attention(q, k, v, "relu", eps=0.0)
    with pytest.raises(ValueError, match="Tk"):
        normalized_attention(q, k, v[..., :5, :], "relu")
