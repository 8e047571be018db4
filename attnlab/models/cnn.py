"""A small convolutional network: the baseline that :class:`attnlab.models.vit.ViT` is compared with.

VGG-style (Simonyan & Zisserman 2015) at toy scale: stages of two 3 x 3 convolutions
(batch norm, ReLU) followed by 2 x 2 max pooling, then global average pooling and one
linear layer::

    stage s:  x = pool(relu(bn(conv3x3(relu(bn(conv3x3(x)))))))     channels[s]
    y = W mean_{h,w}(x) + b

A convolution is attention with a fixed, local, content-independent pattern: each output
mixes a 3 x 3 neighbourhood with weights that depend only on the relative offset
(Cordonnier et al. 2020 make the correspondence exact). With the default channels
(24, 48, 80) it has 0.13 M parameters, close to the default ViT's 0.14 M.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .._checks import check_positive_int
from .vit import check_images

__all__ = ["CNN", "CNNConfig"]


@dataclass(frozen=True)
class CNNConfig:
    """Sizes of :class:`CNN`.

    Args:
        image_size: height = width of the inputs (checked; the network itself takes any
            size that survives ``len(channels)`` halvings).
        in_channels: image channels.
        num_classes: output classes.
        channels: output channels of each stage (one 2 x 2 pooling per stage).
        convs_per_stage: 3 x 3 convolutions in each stage.
    """

    image_size: int = 28
    in_channels: int = 1
    num_classes: int = 10
    channels: tuple[int, ...] = (24, 48, 80)
    convs_per_stage: int = 2
    name: str = "cnn"

    def __post_init__(self):
        for f in ("image_size", "in_channels", "num_classes", "convs_per_stage"):
            check_positive_int(getattr(self, f), f)
        channels = self.channels
        if isinstance(channels, list):  # a config read back from JSON
            object.__setattr__(self, "channels", tuple(channels))
            channels = self.channels
        if not isinstance(channels, tuple) or not channels:
            raise TypeError(f"channels must be a non-empty tuple of ints, got {channels!r}")
        for i, ch in enumerate(channels):
            check_positive_int(ch, f"channels[{i}]")
        if self.image_size >> len(channels) < 1:
            raise ValueError(
                f"image_size {self.image_size} is too small for {len(channels)} stages "
                f"(each halves it; need image_size >= {2 ** len(channels)})"
            )
        if self.name != "cnn":
            raise ValueError(f"name must be 'cnn' for CNNConfig, got {self.name!r}")


class CNN(nn.Module):
    """See the module docstring.

    Shape: images (B, in_channels, image_size, image_size) float -> logits (B, num_classes).
    """

    def __init__(self, config: CNNConfig):
        super().__init__()
        if not isinstance(config, CNNConfig):
            raise TypeError(f"config must be a CNNConfig, got {type(config).__name__}")
        self.config = c = config
        layers: list[nn.Module] = []
        in_ch = c.in_channels
        for out_ch in c.channels:
            for _ in range(c.convs_per_stage):
                # No conv bias: the batch norm right after has its own shift.
                layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU()]
                in_ch = out_ch
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(in_ch, c.num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        c = self.config
        check_images(images, "images", c.in_channels, c.image_size)
        x = self.features(images)  # (B, channels[-1], H / 2^S, W / 2^S)
        return self.head(x.mean(dim=(2, 3)))  # (B, num_classes)
