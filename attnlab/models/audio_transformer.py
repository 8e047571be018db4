"""A Transformer encoder that classifies a spoken word (one class per vocabulary word).

    x      = ConvSub(log-mel)                   two 3x3 stride-2 convolutions: T -> ceil(T/4)
                                                frames (Dong et al. 2018, Speech-Transformer)
    z_0    = W x + PE                           sinusoidal positions (Vaswani et al. 2017, §3.5)
    z_l    = z_{l-1} + MHA(LN(z_{l-1}))          pre-LN encoder layers (Xiong et al. 2020),
    z_l    = z_l + FFN(LN(z_l))                 padding frames masked as keys
    p(w|x) = softmax(W_o pool(LN(z_L)))         pool: mean over valid frames, or a class
                                                token prepended at z_0 (Devlin et al. 2019)

Every attention is :class:`attnlab.nn.MultiheadAttention`. Inside this file the mask is
attnlab's (True = valid frame, may attend); it is turned into torch's
``key_padding_mask`` (True = ignore) once, at the call into that module.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .._checks import check_positive_int, check_probability, check_tensor, fmt_shape, resolve
from ..functional.positional import sinusoidal_table
from ..nn.multihead import MultiheadAttention
from .las import frame_mask
from .transformer import ACTIVATIONS, FeedForward

__all__ = ["AudioTransformerConfig", "AudioTransformer", "ConvSubsampling", "EncoderBlock", "POOLINGS", "subsampled_lengths"]


def subsampled_lengths(lengths: torch.Tensor) -> torch.Tensor:
    """Frames left after :class:`ConvSubsampling`: ``ceil(ceil(T / 2) / 2)``. Shape: (B,) -> (B,)."""
    return ((lengths + 1) // 2 + 1) // 2


class ConvSubsampling(nn.Module):
    """Two ``3x3`` stride-2 convolutions (padding 1) with ReLU over (time, mel), then a
    linear map of each frame's ``channels x ceil(ceil(M/2)/2)`` values to ``d_model``.

    Frames past each utterance's length are zeroed before every convolution, so a valid
    output frame never sees another utterance's padding (nor a bias-filled padded frame):
    the result for an utterance does not depend on how much its batch pads it.

    Shape: x (B, T, M), lengths (B,) -> (B, ceil(ceil(T/2)/2), d_model).
    """

    def __init__(self, n_mels: int, channels: int, d_model: int):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        freq = ((n_mels + 1) // 2 + 1) // 2
        self.proj = nn.Linear(channels * freq, d_model)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        y = x.unsqueeze(1) * frame_mask(lengths, x.shape[1])[:, None, :, None]  # (B, 1, T, M)
        y = torch.relu(self.conv1(y))  # (B, C, ceil(T/2), M1)
        lengths = (lengths + 1) // 2
        y = y * frame_mask(lengths, y.shape[2])[:, None, :, None].to(y.dtype)
        y = torch.relu(self.conv2(y))  # (B, C, T', M')
        B, C, T, M = y.shape
        return self.proj(y.permute(0, 2, 1, 3).reshape(B, T, C * M))  # (B, T', d_model)


def mean_pool(z: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Average of the valid frames. Shape: z (B, T, d), valid (B, T) -> (B, d)."""
    w = valid.to(z.dtype).unsqueeze(-1)  # (B, T, 1)
    return (z * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)


def cls_pool(z: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The class token's output (position 0). Shape: z (B, T, d) -> (B, d)."""
    return z[:, 0]


#: Pooling of the encoder output, by name.
POOLINGS = {"mean": mean_pool, "cls": cls_pool}


@dataclasses.dataclass(frozen=True)
class AudioTransformerConfig:
    """Sizes of :class:`AudioTransformer`.

    Args:
        num_classes: vocabulary words.
        n_mels: input feature size.
        d_model, num_heads, num_layers, ffn_dim: encoder sizes (``d_model % num_heads == 0``).
        conv_channels: channels of the two subsampling convolutions.
        dropout: on sub-layer outputs and attention weights.
        pooling: a name of :data:`POOLINGS` ("mean" or "cls").
        activation: "relu" or "gelu".
        max_len: most frames after subsampling (size of the position table).
    """

    num_classes: int
    n_mels: int = 40
    d_model: int = 144
    num_heads: int = 4
    num_layers: int = 4
    ffn_dim: int = 576
    conv_channels: int = 32
    dropout: float = 0.1
    pooling: str = "mean"
    activation: str = "relu"
    max_len: int = 1024
    name: str = "audio_transformer"

    def __post_init__(self):
        for f in ("num_classes", "n_mels", "d_model", "num_heads", "num_layers", "ffn_dim", "conv_channels", "max_len"):
            check_positive_int(getattr(self, f), f)
        check_probability(self.dropout, "dropout")
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})")
        resolve(POOLINGS, self.pooling, "pooling")
        resolve(ACTIVATIONS, self.activation, "activation")
        if self.name != "audio_transformer":
            raise ValueError(f"name must be 'audio_transformer' for AudioTransformerConfig, got {self.name!r}")


class EncoderBlock(nn.Module):
    """Pre-LN encoder layer returning its attention weights on demand.

    Shape: x (B, T, d), valid (B, T) bool (True = real frame) -> (B, T, d), weights
    (B, H, T, T) or None.
    """

    def __init__(self, c: AudioTransformerConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(c.d_model)
        self.attn = MultiheadAttention(c.d_model, c.num_heads, dropout=c.dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(c.d_model)
        self.ffn = FeedForward(c.d_model, c.ffn_dim, c.dropout, c.activation)
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor, valid: torch.Tensor, need_weights: bool = False):
        h = self.norm1(x)
        # torch's key_padding_mask polarity (True = ignore), converted here at its edge.
        out, w = self.attn(h, h, h, key_padding_mask=~valid, need_weights=need_weights, average_attn_weights=False)
        x = x + self.dropout(out)
        return x + self.dropout(self.ffn(self.norm2(x))), w


class AudioTransformer(nn.Module):
    """Spoken-word classifier; see the module docstring.

    Shape: features (B, T, n_mels), lengths (B,) -> logits (B, num_classes).
    """

    def __init__(self, config: AudioTransformerConfig):
        super().__init__()
        c = self.config = config
        self.subsample = ConvSubsampling(c.n_mels, c.conv_channels, c.d_model)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.d_model)) if c.pooling == "cls" else None
        self.register_buffer("positions", sinusoidal_table(c.max_len + 1, c.d_model), persistent=False)
        self.blocks = nn.ModuleList(EncoderBlock(c) for _ in range(c.num_layers))
        self.norm = nn.LayerNorm(c.d_model)
        self.dropout = nn.Dropout(c.dropout)
        self.head = nn.Linear(c.d_model, c.num_classes)
        self.pool = resolve(POOLINGS, c.pooling, "pooling")

    def forward_with_attention(self, features: torch.Tensor, lengths: torch.Tensor, need_weights: bool = True):
        """Logits (B, C), per-layer weights [(B, H, T', T')] and the valid mask (B, T')."""
        check_tensor(features, "features", min_ndim=3)
        c = self.config
        if features.dim() != 3 or features.shape[-1] != c.n_mels:
            raise ValueError(f"features must have shape (B, T, n_mels={c.n_mels}), got {fmt_shape(features.shape)}")
        if not isinstance(lengths, torch.Tensor) or lengths.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"lengths must be an int64 tensor of shape (B,), got {getattr(lengths, 'dtype', type(lengths))}")
        if lengths.shape != (features.shape[0],) or (lengths < 1).any() or (lengths > features.shape[1]).any():
            raise ValueError(
                f"lengths must have shape (B,) = ({features.shape[0]},) with values in [1, T={features.shape[1]}], "
                f"got {lengths.tolist()}"
            )
        z = self.subsample(features, lengths.long())  # (B, T', d)
        valid = frame_mask(subsampled_lengths(lengths.long()), z.shape[1])  # (B, T')
        if self.cls_token is not None:
            z = torch.cat([self.cls_token.expand(z.shape[0], -1, -1).to(z.dtype), z], dim=1)  # (B, 1 + T', d)
            valid = torch.cat([valid.new_ones(z.shape[0], 1), valid], dim=1)  # (B, 1 + T')
        if z.shape[1] > self.positions.shape[0]:
            raise ValueError(f"features are too long: {z.shape[1]} frames after subsampling, max_len is {c.max_len}")
        z = self.dropout(z + self.positions[: z.shape[1]].to(z.dtype))
        weights = []
        for block in self.blocks:
            z, w = block(z, valid, need_weights=need_weights)
            weights.append(w)
        pooled = self.pool(self.norm(z), valid)  # (B, d)
        return self.head(pooled), weights, valid

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.forward_with_attention(features, lengths, need_weights=False)[0]
