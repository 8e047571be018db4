"""Attention rollout against hand-computed examples, patch maps, and the picture."""

import pytest
import torch

from attnlab.models.vit import ViT, ViTConfig
from attnlab.viz.rollout import attention_rollout, plot_rollout, rollout_patch_maps

# Two layers, one head, two tokens: rows are queries.
A1 = [[1.0, 0.0], [0.5, 0.5]]
A2 = [[0.5, 0.5], [0.0, 1.0]]


def stack(*layers):
    return torch.tensor(layers, dtype=torch.float64).unsqueeze(1)  # (L, H=1, T, T)


def test_two_layers_by_hand():
    # ~A1 = 0.5 A1 + 0.5 I = [[1, 0], [.25, .75]];  ~A2 = [[.75, .25], [0, 1]]
    # R = ~A2 ~A1 = [[.75 + .25 * .25, .25 * .75], [.25, .75]]
    r = attention_rollout(stack(A1, A2))
    torch.testing.assert_close(r, torch.tensor([[0.8125, 0.1875], [0.25, 0.75]], dtype=torch.float64))
    # Without the residual: R = A2 A1.
    r = attention_rollout(stack(A1, A2), residual=False)
    torch.testing.assert_close(r, torch.tensor([[0.75, 0.25], [0.5, 0.5]], dtype=torch.float64))


def test_layer_order_matters():
    r = attention_rollout(stack(A2, A1))  # ~A1 ~A2 = [[.75, .25], [.1875, .8125]]
    torch.testing.assert_close(r, torch.tensor([[0.75, 0.25], [0.1875, 0.8125]], dtype=torch.float64))


def test_head_fusions_by_hand():
    h1 = [[1.0, 0.0], [0.0, 1.0]]
    h2 = [[0.0, 1.0], [1.0, 0.0]]
    w = torch.tensor([[h1, h2]], dtype=torch.float64)  # (L=1, H=2, 2, 2)
    # mean = [[.5, .5], [.5, .5]] -> 0.5 mean + 0.5 I = [[.75, .25], [.25, .75]]
    torch.testing.assert_close(attention_rollout(w), torch.tensor([[0.75, 0.25], [0.25, 0.75]], dtype=torch.float64))
    # max = all ones -> 0.5 ones + 0.5 I = [[1, .5], [.5, 1]], rows renormalized (/1.5) -> [[2/3, 1/3], [1/3, 2/3]]
    expected = torch.tensor([[2 / 3, 1 / 3], [1 / 3, 2 / 3]], dtype=torch.float64)
    torch.testing.assert_close(attention_rollout(w, head_fusion="max"), expected)
    # min = zeros -> 0.5 I renormalized = I
    torch.testing.assert_close(attention_rollout(w, head_fusion="min"), torch.eye(2, dtype=torch.float64))
    first = attention_rollout(w, head_fusion=lambda x: x[..., 0, :, :])
    torch.testing.assert_close(first, torch.eye(2, dtype=torch.float64))


def test_batched_against_a_loop():
    torch.manual_seed(0)
    w = torch.rand(3, 5, 4, 2, 7, 7, dtype=torch.float64).softmax(-1)  # (B1, B2, L, H, T, T)
    r = attention_rollout(w)
    assert r.shape == (3, 5, 7, 7)
    torch.testing.assert_close(r.sum(-1), torch.ones(3, 5, 7, dtype=torch.float64))
    eye = torch.eye(7, dtype=torch.float64)
    for i in range(3):
        for j in range(5):
            ref = eye
            for layer in range(4):
                ref = (0.5 * w[i, j, layer].mean(0) + 0.5 * eye) @ ref
            torch.testing.assert_close(r[i, j], ref)


def test_low_precision_rolls_out_in_float32_and_zero_rows_stay_finite():
    w = torch.zeros(2, 1, 3, 3, dtype=torch.bfloat16)  # fully masked rows
    r = attention_rollout(w, residual=False)
    assert r.dtype == torch.float32 and torch.equal(r, torch.zeros(3, 3))


def test_local_vit_with_window_0_rolls_out_to_the_identity_on_patches():
    model = ViT(ViTConfig(image_size=8, patch_size=4, d_model=8, num_heads=2, num_layers=2, ffn_dim=8,
                          attention="local", window=0)).eval()
    w = model(torch.randn(3, 1, 8, 8), need_weights=True).attentions  # (3, 2, 2, 5, 5)
    r = attention_rollout(w)
    torch.testing.assert_close(r[:, 1:, :], torch.eye(5)[1:].expand(3, 4, 5))  # a patch only ever sees itself
    assert (r[:, 0, 1:] > 0).all()


def test_patch_maps():
    r = torch.zeros(2, 7, 7)
    r[:, 0] = torch.tensor([[0.4, 0.1, 0.2, 0.0, 0.05, 0.05, 0.2], [0.1, 0.3, 0.1, 0.1, 0.1, 0.1, 0.2]])
    maps = rollout_patch_maps(r, 2, 3)
    assert maps.shape == (2, 2, 3)
    torch.testing.assert_close(maps[0], torch.tensor([[0.5, 1.0, 0.0], [0.25, 0.25, 1.0]]))
    torch.testing.assert_close(maps[1], torch.tensor([[1.0, 1 / 3, 1 / 3], [1 / 3, 1 / 3, 2 / 3]]))
    with pytest.raises(ValueError, match=r"rollout must have shape \(..., T, T\) with T = 1 \+ grid_h \* grid_w = 10"):
        rollout_patch_maps(r, 3, 3)
    with pytest.raises(ValueError, match=r"cls_index must be an int in \[0, 7\)"):
        rollout_patch_maps(r, 2, 3, cls_index=7)


def test_bad_input():
    with pytest.raises(ValueError, match=r"attentions must have shape \(..., L, H, T, T\)"):
        attention_rollout(torch.rand(2, 1, 3, 4))
    with pytest.raises(ValueError, match="attentions must have at least 4 dimensions"):
        attention_rollout(torch.rand(1, 3, 3))
    with pytest.raises(TypeError, match="attentions must be a floating-point tensor"):
        attention_rollout(torch.ones(1, 1, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown head fusion 'median'; valid head fusions: max, mean, min"):
        attention_rollout(torch.rand(1, 1, 3, 3), head_fusion="median")
    with pytest.raises(ValueError, match="attentions must not be empty"):
        attention_rollout(torch.rand(0, 1, 3, 3))


def test_plot_rollout(tmp_path):
    images = torch.rand(3, 12, 12)
    maps = torch.rand(3, 3, 3)
    fig = plot_rollout(images, maps, ["a", "b", "c"], tmp_path / "r.png", suptitle="t")
    assert len(fig.axes) == 6
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match=r"maps must have shape \(N=3, h, w\)"):
        plot_rollout(images, maps[:2])
    with pytest.raises(ValueError, match="titles has 2 entries but there are 3 images"):
        plot_rollout(images, maps, ["a", "b"])
    with pytest.raises(ValueError, match=r"images must have shape \(N, H, W\)"):
        plot_rollout(images[0], maps)
