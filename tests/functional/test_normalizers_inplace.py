"""sparsemax / entmax15 after the memory work: in-place internals must not leak out."""

import pytest
import torch

from attnlab.functional.normalizers import entmax15, sparsemax


def _sparsemax_loop(z):
    """Martins & Astudillo (2016) Alg. 1, one row at a time, for reference."""
    out = torch.empty_like(z)
    for idx in range(z.shape[0]):
        row = z[idx]
        srt, _ = torch.sort(row, descending=True)
        css = torch.cumsum(srt, 0)
        k = max(j + 1 for j in range(len(row)) if 1 + (j + 1) * srt[j] > css[j])
        tau = (css[k - 1] - 1) / k
        out[idx] = torch.clamp(row - tau, min=0)
    return out


@pytest.mark.parametrize("fn", [sparsemax, entmax15])
def test_input_untouched_and_fully_masked_rows(fn):
    x = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True)
    before = x.detach().clone()
    mask = torch.rand(3, 5, 7) > 0.3
    mask[1, 2] = False
    w = fn(x, mask=mask)
    torch.testing.assert_close(x.detach(), before, rtol=0, atol=0)
    assert w[1, 2].abs().max() == 0
    assert torch.allclose(w.sum(-1)[mask.any(-1)], torch.ones(()).double())
    g = torch.autograd.grad(w, x, torch.randn_like(w))[0]
    assert not torch.isnan(g).any() and g[1, 2].abs().max() == 0
    assert torch.autograd.gradcheck(lambda t: fn(t, mask=mask), (x,))


def test_sparsemax_matches_row_loop_and_other_dims():
    z = torch.randn(11, 5, dtype=torch.float64)
    torch.testing.assert_close(sparsemax(z), _sparsemax_loop(z))
    torch.testing.assert_close(sparsemax(z.T, dim=0), _sparsemax_loop(z).T)


@pytest.mark.parametrize("fn", [sparsemax, entmax15])
def test_bfloat16_and_empty_dim(fn):
    x = torch.randn(4, 7).bfloat16()
    w = fn(x)
    assert w.dtype == torch.bfloat16 and torch.allclose(w.float().sum(-1), torch.ones(4), atol=2e-2)
    e = torch.randn(3, 0, requires_grad=True)
    out = fn(e)
    assert out.shape == (3, 0) and out is not e
