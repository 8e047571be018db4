"""ViT: shapes, the local patch mask, 2-D positions, config and input errors."""

import pytest
import torch

from attnlab.functional.positional import sinusoidal_table
from attnlab.models.vit import ViT, ViTConfig, neighbourhood_mask, sincos_2d_table

SMALL = dict(image_size=12, patch_size=4, in_channels=3, num_classes=7, d_model=8, num_heads=2, num_layers=3,
             ffn_dim=16)


def reference_mask(gh, gw, window):
    """Hand-written loops: token 0 is the class token."""
    T = 1 + gh * gw
    m = torch.zeros(T, T, dtype=torch.bool)
    m[0, :] = True
    for i in range(gh * gw):
        for j in range(gh * gw):
            ri, ci = divmod(i, gw)
            rj, cj = divmod(j, gw)
            m[1 + i, 1 + j] = abs(ri - rj) <= window and abs(ci - cj) <= window
    return m


@pytest.mark.parametrize("gh,gw,window", [(3, 5, 1), (5, 3, 2), (7, 7, 1), (3, 5, 0), (2, 3, 9)])
def test_neighbourhood_mask_matches_loops(gh, gw, window):
    assert torch.equal(neighbourhood_mask(gh, gw, window), reference_mask(gh, gw, window))
    assert torch.equal(neighbourhood_mask(gh, gw, window, cls_token=False), reference_mask(gh, gw, window)[1:, 1:])


def test_neighbourhood_mask_hand_checked_3x3():
    m = neighbourhood_mask(3, 3, 1)  # patches 0..8 are tokens 1..9
    assert m[0].all()  # the class token sees everything
    assert not m[1:, 0].any()  # no patch sees the class token
    assert m[1 + 4, 1:].all()  # the centre patch sees all 9
    assert m[1 + 0, 1:].nonzero().flatten().tolist() == [0, 1, 3, 4]  # corner (0, 0): itself and 3 neighbours
    assert m[1 + 1, 1:].nonzero().flatten().tolist() == [0, 1, 2, 3, 4, 5]  # top edge (0, 1)
    assert torch.equal(neighbourhood_mask(3, 3, 0)[1:, 1:], torch.eye(9, dtype=torch.bool))


def test_neighbourhood_mask_errors():
    with pytest.raises(ValueError, match="window must be >= 0"):
        neighbourhood_mask(3, 3, -1)
    with pytest.raises(ValueError, match="grid_h must be > 0"):
        neighbourhood_mask(0, 3, 1)


def test_shapes_and_weights():
    torch.manual_seed(0)
    model = ViT(ViTConfig(**SMALL)).eval()
    x = torch.randn(5, 3, 12, 12)
    out = model(x, need_weights=True)
    assert out.logits.shape == (5, 7)
    assert out.attentions.shape == (5, 3, 2, 10, 10)  # (B, L, H, T, T), T = 1 + 3 * 3
    torch.testing.assert_close(out.attentions.sum(-1), torch.ones(5, 3, 2, 10))
    assert model(x).attentions is None
    torch.testing.assert_close(model(x).logits, out.logits)


def test_local_attention_weights_stay_in_the_window():
    torch.manual_seed(1)
    cfg = ViTConfig(**{**SMALL, "image_size": 20, "patch_size": 4, "num_layers": 2}, attention="local", window=1)
    model = ViT(cfg).eval()
    w = model(torch.randn(3, 3, 20, 20), need_weights=True).attentions  # (3, 2, 2, 26, 26)
    allowed = reference_mask(5, 5, 1)
    assert (w[..., ~allowed] == 0).all()
    assert (w[..., allowed] > 0).all()
    # The global model's weights are dense.
    dense = ViT(ViTConfig(**{**SMALL, "image_size": 20})).eval()(torch.randn(3, 3, 20, 20), need_weights=True)
    assert (dense.attentions > 0).all()


def test_local_patch_features_ignore_far_patches():
    """One local block with window 0: a patch token's output depends on its own pixels only."""
    torch.manual_seed(2)
    cfg = ViTConfig(**{**SMALL, "num_layers": 1}, attention="local", window=0)
    model = ViT(cfg).eval()
    captured = []
    model.blocks[0].register_forward_hook(lambda mod, inp, out: captured.append(out[0]))
    x = torch.randn(2, 3, 12, 12)
    y = x.clone()
    y[:, :, 8:, 8:] += 1.0  # change the last patch (2, 2) only
    model(x), model(y)
    a, b = captured  # (2, T, d)
    torch.testing.assert_close(a[:, 1:9], b[:, 1:9])  # patches 0..7 unchanged
    assert not torch.allclose(a[:, 9], b[:, 9]) and not torch.allclose(a[:, 0], b[:, 0])


def test_sincos_2d_table():
    t = sincos_2d_table(3, 5, 8)  # (15, 8)
    rows, cols = sinusoidal_table(3, 4), sinusoidal_table(5, 4)
    for r in range(3):
        for c in range(5):
            torch.testing.assert_close(t[r * 5 + c], torch.cat([rows[r], cols[c]]))
    assert t[1 * 5 + 2, 0].item() == pytest.approx(torch.sin(torch.tensor(1.0)).item())  # row 1, first channel
    assert t[1 * 5 + 2, 4].item() == pytest.approx(torch.sin(torch.tensor(2.0)).item())  # column 2, first channel
    assert sincos_2d_table(2, 2, 7).shape == (4, 7)  # odd width: 3 row + 4 column channels


@pytest.mark.parametrize("positional", ["learned", "sincos2d", "none"])
def test_positions_and_gradients(positional):
    torch.manual_seed(3)
    model = ViT(ViTConfig(**SMALL, positional=positional))
    model(torch.randn(5, 3, 12, 12)).logits.sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert "allowed" not in model.state_dict()  # derived from the config, not saved


def test_positions_break_patch_permutation_symmetry():
    torch.manual_seed(4)
    cfg = dict(SMALL, num_layers=1)
    x = torch.randn(1, 3, 12, 12)
    swapped = x.clone()
    swapped[..., 0:4, 0:4], swapped[..., 8:12, 8:12] = x[..., 8:12, 8:12], x[..., 0:4, 0:4]
    no_pos = ViT(ViTConfig(**cfg, positional="none")).eval()
    torch.testing.assert_close(no_pos(x).logits, no_pos(swapped).logits)  # a bag of patches
    with_pos = ViT(ViTConfig(**cfg, positional="sincos2d")).eval()
    assert not torch.allclose(with_pos(x).logits, with_pos(swapped).logits)


def test_bf16():
    model = ViT(ViTConfig(**SMALL)).to(torch.bfloat16)
    out = model(torch.randn(5, 3, 12, 12, dtype=torch.bfloat16), need_weights=True)
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.logits.float()).all()


def test_default_config_is_the_small_fashion_mnist_model():
    c = ViTConfig()
    assert (c.grid, c.num_tokens) == (7, 50)
    assert sum(p.numel() for p in ViT(c).parameters()) == 138954


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(patch_size=5), ValueError, r"patch_size \(5\) must divide image_size \(28\)"),
        (dict(d_model=10, num_heads=4), ValueError, r"d_model \(10\) must be divisible by num_heads \(4\)"),
        (dict(attention="dilated"), ValueError, "unknown attention pattern 'dilated'.*valid attention patterns: global, local"),
        (dict(positional="rope"), ValueError, "valid positional encodings: learned, sincos2d, none"),
        (dict(window=-1), ValueError, "window must be >= 0"),
        (dict(num_layers=0), ValueError, "num_layers must be > 0"),
        (dict(dropout=1.0), ValueError, r"dropout must be in \[0, 1\)"),
    ],
)
def test_config_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ViTConfig(**kwargs)


def test_input_errors():
    model = ViT(ViTConfig(**SMALL))
    with pytest.raises(ValueError, match=r"images must have shape \(B, C=3, H=12, W=12\), got \(5, 1, 12, 12\)"):
        model(torch.randn(5, 1, 12, 12))
    with pytest.raises(TypeError, match="images must be a floating-point tensor"):
        model(torch.zeros(5, 3, 12, 12, dtype=torch.uint8))
    with pytest.raises(ValueError, match="images is an empty batch"):
        model(torch.randn(0, 3, 12, 12))
    with pytest.raises(TypeError, match="config must be a ViTConfig"):
        ViT({"d_model": 8})
