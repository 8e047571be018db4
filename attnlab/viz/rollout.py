"""Attention rollout (Abnar & Zuidema 2020) and its picture over an image.

Abnar & Zuidema (2020), "Quantifying Attention Flow in Transformers", §3: the raw
attention of one layer says little about where the *input* information comes from,
because every layer also carries its input forward through the residual connection.
Rollout models each layer as the mix ``0.5 A_l + 0.5 I`` (attention plus residual),
renormalizes its rows, and multiplies the layers::

    A_l  = fuse_h(W_l^h)                                 heads fused: mean (the paper), max, min
    Ã_l  = rownorm(0.5 A_l + 0.5 I)
    R    = Ã_L Ã_{L-1} ... Ã_1                           R[i, j]: share of input token j in output token i

For a ViT the class token's row of ``R`` over the patches, laid out on the patch grid,
is a saliency map of the image (:func:`rollout_patch_maps`, :func:`plot_rollout`).
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import torch

from .._checks import check_positive_int, check_tensor, fmt_shape, resolve

__all__ = ["HEAD_FUSIONS", "attention_rollout", "rollout_patch_maps", "plot_rollout"]


def _fuse_mean(w: torch.Tensor) -> torch.Tensor:
    return w.mean(dim=-3)


def _fuse_max(w: torch.Tensor) -> torch.Tensor:
    return w.amax(dim=-3)


def _fuse_min(w: torch.Tensor) -> torch.Tensor:
    return w.amin(dim=-3)


#: How the heads of one layer are combined: ``(..., H, T, T) -> (..., T, T)``.
HEAD_FUSIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "mean": _fuse_mean,
    "max": _fuse_max,
    "min": _fuse_min,
}


def attention_rollout(attentions: torch.Tensor, *, head_fusion="mean", residual: bool = True) -> torch.Tensor:
    """Roll attention out through the layers (Abnar & Zuidema 2020, §3).

    .. math::
        \\tilde A_l = \\mathrm{rownorm}\\big(\\tfrac12 \\mathrm{fuse}_h(W_l^h) + \\tfrac12 I\\big),
        \\qquad R = \\tilde A_L \\cdots \\tilde A_1

    Args:
        attentions: per-layer, per-head attention weights, layer 0 first (e.g.
            :attr:`attnlab.models.vit.ViTOutput.attentions`); rows are queries.
        head_fusion: a name of :data:`HEAD_FUSIONS` ("mean", the paper's; "max"; "min")
            or a callable ``(..., H, T, T) -> (..., T, T)``.
        residual: add the identity for the residual connection (the paper); ``False``
            multiplies the raw (row-renormalized) attention matrices.

    Shape:
        attentions ``(..., L, H, T, T)`` -> rollout ``(..., T, T)``, float32 or float64
        (bf16/fp16 inputs are rolled out in float32: products of many weights underflow).

    Returns:
        ``R`` with rows summing to 1: ``R[..., i, j]`` is the share of input token ``j``
        in output token ``i``.
    """
    check_tensor(attentions, "attentions", min_ndim=4)
    L, H, T, T2 = attentions.shape[-4:]
    if T != T2:
        raise ValueError(
            f"attentions must have shape (..., L, H, T, T) (square per layer and head), got {fmt_shape(attentions.shape)}"
        )
    if 0 in (L, H, T):
        raise ValueError(f"attentions must not be empty, got shape {fmt_shape(attentions.shape)}")
    if not isinstance(residual, bool):
        raise TypeError(f"residual must be a bool, got {type(residual).__name__}")
    fuse = resolve(HEAD_FUSIONS, head_fusion, "head fusion")
    w = attentions.detach()
    if w.dtype not in (torch.float32, torch.float64):
        w = w.float()
    eye = torch.eye(T, dtype=w.dtype, device=w.device)  # (T, T)
    rollout = None
    for layer in range(L):
        a = fuse(w[..., layer, :, :, :])  # (..., T, T)
        if a.shape[-2:] != (T, T):
            raise ValueError(f"head_fusion must map (..., H, T, T) to (..., T, T), got {fmt_shape(a.shape)}")
        if residual:
            a = 0.5 * a + 0.5 * eye
        # A row with no weight at all (a fully masked query) stays zero rather than NaN.
        a = a / a.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)  # (..., T, T)
        rollout = a if rollout is None else a @ rollout  # (..., T, T): later layers act on the left
    return rollout


def rollout_patch_maps(rollout: torch.Tensor, grid_h: int, grid_w: int, *, cls_index: int = 0) -> torch.Tensor:
    """The class token's rollout over the patches, on the patch grid, scaled to max 1.

    Patches are tokens ``1 .. grid_h * grid_w`` in row-major order (the class token at
    ``cls_index`` is left out).

    Shape: rollout ``(..., T, T)`` with ``T = 1 + grid_h * grid_w`` -> ``(..., grid_h, grid_w)``.
    """
    check_tensor(rollout, "rollout", min_ndim=2)
    check_positive_int(grid_h, "grid_h")
    check_positive_int(grid_w, "grid_w")
    T = 1 + grid_h * grid_w
    if tuple(rollout.shape[-2:]) != (T, T):
        raise ValueError(
            f"rollout must have shape (..., T, T) with T = 1 + grid_h * grid_w = {T}, got {fmt_shape(rollout.shape)}"
        )
    if isinstance(cls_index, bool) or not isinstance(cls_index, int) or not 0 <= cls_index < T:
        raise ValueError(f"cls_index must be an int in [0, {T}), got {cls_index!r}")
    row = rollout[..., cls_index, :]  # (..., T)
    keep = [j for j in range(T) if j != cls_index]
    patches = row[..., keep]  # (..., N)
    top = patches.amax(dim=-1, keepdim=True).clamp_min(torch.finfo(patches.dtype).tiny)
    return (patches / top).reshape(*patches.shape[:-1], grid_h, grid_w)  # (..., grid_h, grid_w)


def plot_rollout(
    images,
    maps,
    titles: Sequence[str] | None = None,
    path: str | os.PathLike | None = None,
    *,
    suptitle: str | None = None,
    cmap: str = "inferno",
    alpha: float = 0.6,
):
    """Draw each image above the same image overlaid with its rollout map.

    Args:
        images: ``(N, H, W)`` grey-scale images (any real scale; shown min to max).
        maps: ``(N, h, w)`` rollout maps (:func:`rollout_patch_maps`), stretched over the
            image with bilinear interpolation.
        titles: one title per image (e.g. "Bag (pred Bag)").
        path: save the figure there (atomically, PNG unless the suffix says otherwise).
        suptitle: the figure's title.
        alpha: opacity of the overlay.

    Returns:
        The :class:`matplotlib.figure.Figure`.
    """
    import numpy as np
    from matplotlib.figure import Figure

    from .heatmap import _as_array, save_figure

    imgs = _as_array(images)
    mps = _as_array(maps)
    if imgs.ndim != 3 or imgs.shape[0] == 0:
        raise ValueError(f"images must have shape (N, H, W) with N >= 1, got shape {imgs.shape}")
    if mps.ndim != 3 or mps.shape[0] != imgs.shape[0]:
        raise ValueError(f"maps must have shape (N={imgs.shape[0]}, h, w) like images, got shape {mps.shape}")
    if not (np.isfinite(imgs).all() and np.isfinite(mps).all()):
        raise ValueError("images and maps must be finite (no NaN or infinite values)")
    n = imgs.shape[0]
    if titles is not None:
        titles = [str(t) for t in titles]
        if len(titles) != n:
            raise ValueError(f"titles has {len(titles)} entries but there are {n} images")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    fig = Figure(figsize=(1.9 * n + 0.4, 4.3 if suptitle else 4.0), layout="constrained")
    axes = fig.subplots(2, n, squeeze=False)
    H, W = imgs.shape[1:]
    extent = (-0.5, W - 0.5, H - 0.5, -0.5)  # the map covers the image exactly
    for i in range(n):
        top, bottom = axes[0, i], axes[1, i]
        top.imshow(imgs[i], cmap="gray")
        bottom.imshow(imgs[i], cmap="gray")
        bottom.imshow(mps[i], cmap=cmap, alpha=alpha, extent=extent, interpolation="bilinear", vmin=0.0, vmax=1.0)
        for a in (top, bottom):
            a.set_xticks([])
            a.set_yticks([])
        if titles is not None:
            top.set_title(titles[i], fontsize="small")
    axes[0, 0].set_ylabel("image")
    axes[1, 0].set_ylabel("rollout")
    if suptitle:
        fig.suptitle(suptitle)
    if path is not None:
        save_figure(fig, path)
    return fig
