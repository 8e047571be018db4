"""Vision Transformer (Dosovitskiy et al. 2021), global or restricted to a local window of patches.

Dosovitskiy et al. (2021), "An Image is Worth 16x16 Words: Transformers for Image
Recognition at Scale": cut the image into ``P x P`` patches, embed each linearly, prepend
a learned class token, add positions, run pre-norm Transformer encoder blocks and
classify from the class token::

    z_0 = [x_cls; E x_1; ...; E x_N] + positions       x_i: flattened patch i, N = (H/P)(W/P)
    z'_l = z_{l-1} + MSA(LN(z_{l-1}), mask)
    z_l  = z'_l + FFN(LN(z'_l))
    y    = W_head LN(z_L^0)

Positions (:data:`PATCH_POSITIONS`): "learned" (the paper's 1-D table, one row per patch),
"sincos2d" (fixed: half of the channels encode the patch row, half the column, each with
the 1-D sinusoids of Vaswani et al. 2017 §3.5 -- the 2-D variant of MoCo v3 / Beyer et
al. 2022 "Better plain ViT baselines") or "none". The class token carries no position.

Attention (:data:`PATCH_ATTENTION`): "global" (every token sees every token) or "local":
patch ``(r, c)`` may attend patch ``(r', c')`` only when ``max(|r - r'|, |c - c'|) <=
window`` -- a ``(2 window + 1)^2`` neighbourhood, the receptive field of a
``(2 window + 1)``-wide convolution over the patch grid. Cordonnier, Loukas & Jaggi
(2020), "On the Relationship between Self-Attention and Convolutional Layers", show that
a multi-head self-attention layer can express such a convolution; the local variant
imposes the restriction instead of hoping it is learned. The class token sees every
patch (it pools, like a CNN's global average pooling); patches do not see the class
token, so a patch's features stay strictly local (no global shortcut through it).

All attention is :class:`attnlab.nn.MultiheadAttention`; the feed-forward network is the
Transformer's (:class:`attnlab.models.transformer.FeedForward`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
from torch import nn

from .._checks import check_positive_int, check_probability, check_tensor, fmt_shape, resolve
from ..functional.positional import sinusoidal_table
from ..nn import MultiheadAttention
from .transformer import ACTIVATIONS, FeedForward

__all__ = [
    "PATCH_ATTENTION",
    "PATCH_POSITIONS",
    "ViT",
    "ViTConfig",
    "ViTOutput",
    "check_images",
    "global_patch_mask",
    "neighbourhood_mask",
    "sincos_2d_table",
]


def check_images(images, name: str, in_channels: int, image_size: int) -> None:
    """``images`` must be a float ``(B, in_channels, image_size, image_size)`` tensor."""
    check_tensor(images, name)
    want = (in_channels, image_size, image_size)
    if images.dim() != 4 or tuple(images.shape[1:]) != want:
        raise ValueError(
            f"{name} must have shape (B, C={in_channels}, H={image_size}, W={image_size}), "
            f"got {fmt_shape(images.shape)}"
        )
    if images.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {fmt_shape(images.shape)}); need at least 1 image")


# ----------------------------------------------------------------------------- masks


def neighbourhood_mask(grid_h: int, grid_w: int, window: int, *, cls_token: bool = True, device=None) -> torch.Tensor:
    """Local attention over a grid of patches (bool, True = may attend).

    Patch ``i = r * grid_w + c`` may attend patch ``j = r' * grid_w + c'`` iff
    ``max(|r - r'|, |c - c'|) <= window`` (Chebyshev distance: a square neighbourhood of
    ``(2 window + 1)^2`` patches, cut at the border). With ``cls_token`` a class token is
    token 0: it may attend every token (itself included); patches may not attend it.

    Args:
        grid_h, grid_w: patches per column and per row.
        window: neighbourhood radius in patches (0: each patch sees only itself).
        cls_token: prepend the class token's row and column.

    Shape:
        returns ``(T, T)`` with ``T = grid_h * grid_w (+ 1 with cls_token)``.
    """
    check_positive_int(grid_h, "grid_h")
    check_positive_int(grid_w, "grid_w")
    check_positive_int(window, "window", allow_zero=True)
    r = torch.arange(grid_h, device=device).repeat_interleave(grid_w)  # (N,) row of patch i
    c = torch.arange(grid_w, device=device).repeat(grid_h)  # (N,) column of patch i
    dist = torch.maximum((r[:, None] - r[None, :]).abs(), (c[:, None] - c[None, :]).abs())  # (N, N)
    patches = dist <= window  # (N, N)
    if not cls_token:
        return patches
    N = grid_h * grid_w
    mask = torch.zeros(N + 1, N + 1, dtype=torch.bool, device=device)  # (T, T)
    mask[0, :] = True  # the class token pools over everything
    mask[1:, 1:] = patches
    return mask


def global_patch_mask(grid_h: int, grid_w: int, window: int, *, cls_token: bool = True, device=None) -> None:
    """Global attention: no mask (every token may attend every token)."""
    return None


#: Attention patterns over the patch grid: ``f(grid_h, grid_w, window, cls_token=True) ->
#: (T, T) bool mask or None``.
PATCH_ATTENTION: dict[str, Callable] = {"global": global_patch_mask, "local": neighbourhood_mask}


# ----------------------------------------------------------------------------- positions


def sincos_2d_table(grid_h: int, grid_w: int, d_model: int, base: float = 10000.0) -> torch.Tensor:
    """Fixed 2-D sinusoidal positions: the first ``d_model // 2`` channels are the 1-D
    sinusoidal table (Vaswani et al. 2017, §3.5) of the patch's row, the rest that of its
    column.

    Shape: returns ``(grid_h * grid_w, d_model)``, row ``r * grid_w + c`` for patch (r, c).
    """
    check_positive_int(d_model, "d_model")
    if d_model < 2:
        raise ValueError(f"d_model must be >= 2 for 2-D positions (a row and a column part), got {d_model}")
    d_row = d_model // 2
    rows = sinusoidal_table(grid_h, d_row, base)  # (grid_h, d_row)
    cols = sinusoidal_table(grid_w, d_model - d_row, base)  # (grid_w, d_col)
    rows = rows[:, None, :].expand(grid_h, grid_w, d_row)  # (grid_h, grid_w, d_row)
    cols = cols[None, :, :].expand(grid_h, grid_w, d_model - d_row)  # (grid_h, grid_w, d_col)
    return torch.cat([rows, cols], dim=-1).reshape(grid_h * grid_w, d_model)  # (N, d_model)


class LearnedPatchPositions(nn.Module):
    """One learned vector per patch, N(0, 0.02^2) at init. Shape: (B, N, d) -> (B, N, d)."""

    def __init__(self, grid_h: int, grid_w: int, d_model: int):
        super().__init__()
        self.table = nn.Parameter(torch.randn(grid_h * grid_w, d_model) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.table.to(x.dtype)


class SinCos2dPatchPositions(nn.Module):
    """Fixed 2-D sinusoidal positions (:func:`sincos_2d_table`). Shape: (B, N, d) -> (B, N, d)."""

    def __init__(self, grid_h: int, grid_w: int, d_model: int):
        super().__init__()
        # Not persistent: it is a function of the config, so checkpoints need not carry it.
        self.register_buffer("table", sincos_2d_table(grid_h, grid_w, d_model), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.table.to(x.dtype)


class NoPatchPositions(nn.Module):
    """No positions: the model sees a bag of patches (permutation invariant but for masks)."""

    def __init__(self, grid_h: int, grid_w: int, d_model: int):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


#: Positions added to the patch embeddings: ``cls(grid_h, grid_w, d_model) -> nn.Module``.
PATCH_POSITIONS: dict[str, Callable[..., nn.Module]] = {
    "learned": LearnedPatchPositions,
    "sincos2d": SinCos2dPatchPositions,
    "none": NoPatchPositions,
}


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class ViTConfig:
    """Sizes of :class:`ViT` (defaults: a small model for 28 x 28 Fashion-MNIST images,
    7 x 7 patches of 4 x 4 pixels, 0.14 M parameters).

    Args:
        image_size: height = width of the input images.
        patch_size: patches are ``patch_size x patch_size`` pixels; divides ``image_size``.
        in_channels: image channels.
        num_classes: output classes.
        d_model: token width; ``d_model % num_heads == 0``.
        num_heads: attention heads.
        num_layers: encoder blocks.
        ffn_dim: inner size of the feed-forward network.
        dropout: on sub-layer outputs and attention weights.
        activation: "gelu" (the paper) or "relu".
        positional: a name of :data:`PATCH_POSITIONS`.
        attention: a name of :data:`PATCH_ATTENTION` ("global" or "local").
        window: neighbourhood radius in patches for "local" attention.
    """

    image_size: int = 28
    patch_size: int = 4
    in_channels: int = 1
    num_classes: int = 10
    d_model: int = 64
    num_heads: int = 4
    num_layers: int = 4
    ffn_dim: int = 128
    dropout: float = 0.0
    activation: str = "gelu"
    positional: str = "learned"
    attention: str = "global"
    window: int = 1
    name: str = "vit"

    def __post_init__(self):
        for f in ("image_size", "patch_size", "in_channels", "num_classes", "d_model", "num_heads", "num_layers",
                  "ffn_dim"):
            check_positive_int(getattr(self, f), f)
        check_positive_int(self.window, "window", allow_zero=True)
        check_probability(self.dropout, "dropout")
        if self.image_size % self.patch_size:
            raise ValueError(f"patch_size ({self.patch_size}) must divide image_size ({self.image_size})")
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})")
        for field, registry, kind in (
            ("activation", ACTIVATIONS, "activation"),
            ("positional", PATCH_POSITIONS, "positional encoding"),
            ("attention", PATCH_ATTENTION, "attention pattern"),
        ):
            value = getattr(self, field)
            if not isinstance(value, str) or value not in registry:
                raise ValueError(f"unknown {kind} {value!r} ({field}); valid {kind}s: {', '.join(registry)}")
        if self.positional == "sincos2d" and self.d_model < 2:
            raise ValueError(f"positional='sincos2d' needs d_model >= 2, got {self.d_model}")
        if self.name != "vit":
            raise ValueError(f"name must be 'vit' for ViTConfig, got {self.name!r}")

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        """Sequence length: the class token and ``grid ** 2`` patches."""
        return 1 + self.grid**2


# ----------------------------------------------------------------------------- model


class ViTOutput(NamedTuple):
    """``logits`` (B, num_classes); ``attentions`` (B, L, H, T, T) -- every layer's
    per-head attention weights, token 0 the class token -- or ``None`` unless asked."""

    logits: torch.Tensor
    attentions: torch.Tensor | None


class ViTBlock(nn.Module):
    """Pre-norm encoder block. Shape: x (B, T, d) -> (B, T, d) and weights (B, H, T, T) or None."""

    def __init__(self, c: ViTConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(c.d_model)
        self.attn = MultiheadAttention(c.d_model, c.num_heads, dropout=c.dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(c.d_model)
        self.ffn = FeedForward(c.d_model, c.ffn_dim, c.dropout, c.activation)
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor, blocked: torch.Tensor | None, need_weights: bool = False):
        h = self.norm1(x)
        out, weights = self.attn(
            h, h, h, attn_mask=blocked, need_weights=need_weights, average_attn_weights=False
        )  # (B, T, d), (B, H, T, T) or None
        x = x + self.dropout(out)
        return x + self.dropout(self.ffn(self.norm2(x))), weights


class ViT(nn.Module):
    """Vision Transformer; see the module docstring.

    Shape:
        images (B, in_channels, image_size, image_size) float -> :class:`ViTOutput`
        with logits (B, num_classes) and, with ``need_weights=True``, attentions
        (B, num_layers, num_heads, T, T), ``T = 1 + (image_size / patch_size)^2``.
    """

    def __init__(self, config: ViTConfig):
        super().__init__()
        if not isinstance(config, ViTConfig):
            raise TypeError(f"config must be a ViTConfig, got {type(config).__name__}")
        self.config = c = config
        # A stride-P convolution with a P x P kernel is the paper's linear map of each
        # flattened patch, computed without materializing the patches.
        self.patch_embed = nn.Conv2d(c.in_channels, c.d_model, kernel_size=c.patch_size, stride=c.patch_size)
        self.cls_token = nn.Parameter(torch.randn(1, 1, c.d_model) * 0.02)
        self.positions = PATCH_POSITIONS[c.positional](c.grid, c.grid, c.d_model)
        self.dropout = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(ViTBlock(c) for _ in range(c.num_layers))
        self.norm = nn.LayerNorm(c.d_model)
        self.head = nn.Linear(c.d_model, c.num_classes)
        allowed = resolve(PATCH_ATTENTION, c.attention, "attention pattern")(c.grid, c.grid, c.window, cls_token=True)
        # MultiheadAttention is torch's drop-in, so its attn_mask takes torch's polarity
        # (True = NOT allowed); the model keeps attnlab's and converts at this one edge.
        self.register_buffer("allowed", allowed, persistent=False)  # (T, T) or None

    def forward(self, images: torch.Tensor, *, need_weights: bool = False) -> ViTOutput:
        """Classify ``images``; see the class docstring for shapes.

        Args:
            images: normalized images.
            need_weights: also return every layer's per-head attention weights
                (for :func:`attnlab.viz.rollout.attention_rollout`).
        """
        c = self.config
        check_images(images, "images", c.in_channels, c.image_size)
        x = self.patch_embed(images)  # (B, d, grid, grid)
        x = x.flatten(2).transpose(1, 2)  # (B, N, d), patch i = row * grid + col
        x = self.positions(x)  # (B, N, d)
        x = torch.cat([self.cls_token.to(x.dtype).expand(x.shape[0], -1, -1), x], dim=1)  # (B, T, d)
        x = self.dropout(x)
        blocked = None if self.allowed is None else ~self.allowed  # (T, T), True = blocked
        weights = []
        for block in self.blocks:
            x, w = block(x, blocked, need_weights)  # (B, T, d), (B, H, T, T) or None
            weights.append(w)
        logits = self.head(self.norm(x[:, 0]))  # (B, num_classes)
        attentions = torch.stack(weights, dim=1) if need_weights else None  # (B, L, H, T, T)
        return ViTOutput(logits, attentions)
