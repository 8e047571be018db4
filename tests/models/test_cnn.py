"""CNN baseline: shapes, parameter count against a hand count, config and input errors."""

import pytest
import torch

from attnlab.models.cnn import CNN, CNNConfig
from attnlab.models.vit import ViT, ViTConfig


def hand_count(in_ch, channels, convs, classes):
    n, c = 0, in_ch
    for out in channels:
        for _ in range(convs):
            n += c * out * 9 + 2 * out  # 3x3 kernel without bias, batch-norm scale and shift
            c = out
    return n + c * classes + classes  # linear head


def test_shapes_and_parameters():
    torch.manual_seed(0)
    cfg = CNNConfig(image_size=16, in_channels=3, num_classes=7, channels=(4, 6), convs_per_stage=1)
    model = CNN(cfg)
    assert model(torch.randn(5, 3, 16, 16)).shape == (5, 7)
    assert sum(p.numel() for p in model.parameters()) == hand_count(3, (4, 6), 1, 7)
    assert sum(p.numel() for p in CNN(CNNConfig()).parameters()) == hand_count(1, (24, 48, 80), 2, 10) == 130082


def test_default_size_is_close_to_the_default_vit():
    cnn = sum(p.numel() for p in CNN(CNNConfig()).parameters())
    vit = sum(p.numel() for p in ViT(ViTConfig()).parameters())
    assert 0.8 < cnn / vit < 1.25


def test_receptive_field_is_local_before_pooling():
    """One 3x3 convolution: changing a pixel moves only the outputs within one pixel of it."""
    model = CNN(CNNConfig(image_size=8, channels=(3,), convs_per_stage=1)).eval()
    conv = model.features[:3]  # conv, batch norm, relu
    x = torch.randn(1, 1, 8, 8)
    y = x.clone()
    y[0, 0, 5, 2] += 1.0
    changed = (conv(x) != conv(y)).any(dim=1)[0]  # (8, 8)
    rows, cols = changed.nonzero().T
    assert rows.min() >= 4 and rows.max() <= 6 and cols.min() >= 1 and cols.max() <= 3


def test_train_step_and_eval_determinism():
    torch.manual_seed(1)
    model = CNN(CNNConfig(image_size=12, channels=(4, 5), num_classes=3))
    x = torch.randn(6, 1, 12, 12)
    torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 0, 1, 2])).backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    torch.testing.assert_close(model(x), model(x))


def test_channels_from_json_list_become_a_tuple():
    assert CNNConfig(channels=[8, 16]).channels == (8, 16)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(channels=()), TypeError, "channels must be a non-empty tuple"),
        (dict(channels=(8, 0)), ValueError, r"channels\[1\] must be > 0"),
        (dict(image_size=4, channels=(2, 2, 2)), ValueError, "image_size 4 is too small for 3 stages"),
        (dict(convs_per_stage=0), ValueError, "convs_per_stage must be > 0"),
        (dict(name="vit"), ValueError, "name must be 'cnn'"),
    ],
)
def test_config_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        CNNConfig(**kwargs)


def test_input_errors():
    model = CNN(CNNConfig())
    with pytest.raises(ValueError, match=r"images must have shape \(B, C=1, H=28, W=28\), got \(2, 28, 28\)"):
        model(torch.randn(2, 28, 28))
    with pytest.raises(TypeError, match="config must be a CNNConfig"):
        CNN(ViTConfig())
