import pytest
import torch

from attnlab.functional import masks as M


def test_causal_square_and_with_cache():
    m = M.causal_mask(3)
    assert m.tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    # Two new queries after 3 cached keys: absolute positions 3 and 4.
    m = M.causal_mask(2, 5)
    assert m.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]
    assert M.causal_mask(2, 5, offset=0).tolist() == [[True, False, False, False, False], [True, True, False, False, False]]


def test_padding_mask_from_lengths():
    m = M.padding_mask(torch.tensor([3, 1]), 4)
    assert m.shape == (2, 1, 1, 4)
    assert m[:, 0, 0].tolist() == [[True, True, True, False], [True, False, False, False]]
    assert M.padding_mask(torch.tensor([2]), 3, ndim=3).shape == (1, 1, 3)


def test_key_padding_conversion_flips_polarity():
    kpm = torch.tensor([[False, False, True]])  # torch: True = ignore
    assert M.from_key_padding_mask(kpm).reshape(-1).tolist() == [True, True, False]


@pytest.mark.parametrize("window", [0, 1, 3])
def test_window_mask_matches_definition(window):
    T = 7
    two = M.window_mask(T, T, window)
    cau = M.window_mask(T, T, window, causal=True)
    for i in range(T):
        for j in range(T):
            assert two[i, j].item() == (abs(i - j) <= window)
            assert cau[i, j].item() == (0 <= i - j <= window)


def test_local_p_window_and_gradient():
    centers = torch.tensor([[1.5, 4.0]], requires_grad=True)  # (B=1, Tq=2)
    mask, g = M.local_p_window(centers, 7, 2)
    assert mask.shape == g.shape == (1, 2, 7)
    assert mask[0, 0].tolist() == [True, True, True, True, False, False, False]
    assert mask[0, 1].tolist() == [False, False, True, True, True, True, True]
    # sigma = D / 2 = 1: at distance 1 the factor is exp(-1/2).
    torch.testing.assert_close(g[0, 1, 5], torch.exp(torch.tensor(-0.5)))
    (g * mask).sum().backward()
    assert centers.grad is not None and centers.grad.abs().sum() > 0


def test_combinators():
    a = torch.tensor([True, True, False])
    b = torch.tensor([True, False, False])
    assert M.mask_and(a, None, b).tolist() == [True, False, False]
    assert M.mask_or(a, b).tolist() == [True, True, False]
    assert M.mask_and(None, None) is None
    with pytest.raises(TypeError, match="mask 1 must be a bool tensor"):
        M.mask_and(a, torch.ones(3))


def test_bad_inputs():
    with pytest.raises(ValueError, match="window must be >= 0, got -1"):
        M.window_mask(5, 5, -1)
    with pytest.raises(ValueError, match="Tq must be > 0"):
        M.causal_mask(0)
    with pytest.raises(ValueError, match="lengths must be <= max_len=2"):
        M.padding_mask(torch.tensor([3]), 2)
    with pytest.raises(TypeError, match="lengths must be an integer tensor"):
        M.padding_mask(torch.tensor([3.0]), 4)
    with pytest.raises(ValueError, match="half_width must be >= 0"):
        M.local_p_window(torch.zeros(1, 2), 5, -2)
