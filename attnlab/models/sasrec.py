"""SASRec: self-attentive sequential recommendation (Kang & McAuley, 2018, ICDM).

.. math::
    E = [M_{s_1} + P_1; \\dots; M_{s_T} + P_T], \\quad
    S^{(b)} = \\mathrm{SA}(F^{(b-1)}), \\quad F^{(b)} = \\mathrm{FFN}(S^{(b)}), \\quad
    r_{i,t} = F^{(B)}_t M_i^\\top

Item embeddings ``M`` plus learned position embeddings ``P`` (§3.1-3.2) go through ``B``
blocks of causal self-attention and a point-wise feed-forward network (§3.3), each with
layer norm, residual connection and dropout (§3.4; the pre-norm arrangement of the
authors' code: ``x = LN(x) + SA(LN(x))``, ``x = x + FFN(LN(x))``). The relevance of item
``i`` as the next item after position ``t`` is the dot product of the last block's
output with the *shared* item embedding ``M_i`` (§3.5). Training: binary cross-entropy
with one sampled negative per position (eq. 3), :func:`bce_next_item_loss`.

Sequences are left-padded with item 0 (the most recent item is the last column). Keys
at padding are masked, so a padded query row attends to nothing and gives zero output
(attnlab's convention), and a real item never attends to padding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_positive_int, check_probability, fmt_shape
from ..nn import MultiheadAttention

__all__ = ["SASRecConfig", "SASRec", "SASRecOutput", "SASRecBlock", "bce_next_item_loss", "check_item_ids"]


@dataclass(frozen=True)
class SASRecConfig:
    """Sizes of :class:`SASRec` (defaults: the paper's ML-1M setting, but ``max_len`` 50).

    Args:
        num_items: items are ``1 .. num_items``; 0 is padding.
        max_len: longest sequence window ``n`` (the position table's size).
        d_model: embedding width ``d`` (50 in the paper).
        num_blocks: self-attention blocks ``b`` (2).
        num_heads: attention heads (1 in the paper); ``d_model % num_heads == 0``.
        dropout: on embeddings, attention weights and sub-layer outputs (0.2 for ML-1M).
    """

    num_items: int
    max_len: int = 50
    d_model: int = 50
    num_blocks: int = 2
    num_heads: int = 1
    dropout: float = 0.2
    name: str = "sasrec"

    def __post_init__(self):
        for f in ("num_items", "max_len", "d_model", "num_blocks", "num_heads"):
            check_positive_int(getattr(self, f), f)
        check_probability(self.dropout, "dropout")
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})")


class SASRecOutput(NamedTuple):
    """hidden: (B, T, d) the last block's output (zero at padding); weights: one
    (B, H, T, T) tensor per block when asked for, else None."""

    hidden: torch.Tensor
    weights: list | None


def check_item_ids(items, name: str, num_items: int, max_len: int | None = None) -> None:
    """Raise unless ``items`` is a (B, T) integer tensor of ids in ``0 .. num_items``."""
    if not isinstance(items, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of item ids, got {type(items).__name__}")
    if items.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must be an int64 tensor of item ids, got {items.dtype}")
    if items.dim() != 2 or items.shape[1] == 0:
        raise ValueError(f"{name} must have shape (B, T) with T >= 1, got shape {fmt_shape(items.shape)}")
    if max_len is not None and items.shape[1] > max_len:
        raise ValueError(f"{name} has T={items.shape[1]} positions, more than max_len={max_len}")
    if items.numel() and (int(items.min()) < 0 or int(items.max()) > num_items):
        raise ValueError(
            f"{name} holds ids outside 0 .. num_items={num_items} (0 = padding): "
            f"min {int(items.min())}, max {int(items.max())}"
        )


class SASRecBlock(nn.Module):
    """One block (§3.3-3.4): ``x = LN(x) + SA(LN(x))`` (causal), ``x = x + FFN(LN(x))``.

    Shape: x (B, T, d), valid (B, T) bool (True = a real item) -> (B, T, d), weights (B, H, T, T) or None.
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float):
        super().__init__()
        self.attn_norm = nn.LayerNorm(d_model, eps=1e-8)
        self.attn = MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.ffn_norm = nn.LayerNorm(d_model, eps=1e-8)
        # The point-wise FFN of §3.3: ReLU(x W1 + b1) W2 + b2, dropout after each layer.
        self.ffn = nn.Sequential(
            nn.Linear(d_model, d_model), nn.Dropout(dropout), nn.ReLU(), nn.Linear(d_model, d_model), nn.Dropout(dropout)
        )

    def forward(self, x, valid, need_weights: bool = False):
        q = self.attn_norm(x)
        # The public edge of MultiheadAttention speaks torch's key_padding_mask (True = ignore).
        a, w = self.attn(q, x, x, key_padding_mask=~valid, need_weights=need_weights,
                         average_attn_weights=False, is_causal=True)  # (B, T, d), (B, H, T, T)
        x = q + a
        x = x + self.ffn(self.ffn_norm(x))
        return x * valid.unsqueeze(-1).to(x.dtype), w


class SASRec(nn.Module):
    """Self-attentive sequential recommender (Kang & McAuley, 2018); see the module docstring.

    Shape:
        items: (B, T) int64, left-padded with 0, ``T <= max_len`` -> :class:`SASRecOutput`
        with hidden (B, T, d). ``scores(hidden, candidates)``: (B, T, d) x (B, T) -> (B, T),
        or (B, d) x (B, C) -> (B, C).
    """

    def __init__(self, config: SASRecConfig):
        if not isinstance(config, SASRecConfig):
            raise TypeError(f"config must be a SASRecConfig, got {type(config).__name__}")
        super().__init__()
        self.config = config
        d = config.d_model
        self.item_emb = nn.Embedding(config.num_items + 1, d, padding_idx=0)
        self.pos_emb = nn.Embedding(config.max_len, d)
        self.emb_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(SASRecBlock(d, config.num_heads, config.dropout) for _ in range(config.num_blocks))
        self.final_norm = nn.LayerNorm(d, eps=1e-8)
        # Xavier-normal embeddings as in the authors' code: nn.Embedding's N(0, 1) times
        # sqrt(d) gives scores of size ~d at the start and a BCE loss of ~6 instead of ~1.4.
        nn.init.xavier_normal_(self.item_emb.weight)
        nn.init.xavier_normal_(self.pos_emb.weight)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def forward(self, items: torch.Tensor, need_weights: bool = False) -> SASRecOutput:
        check_item_ids(items, "items", self.config.num_items, self.config.max_len)
        B, T = items.shape
        valid = items != 0  # (B, T)
        # Positions count from the window's left edge; with left padding the most recent
        # item of every full window sits at position max_len - 1.
        offset = self.config.max_len - T
        pos = torch.arange(offset, offset + T, device=items.device)  # (T,)
        x = self.item_emb(items) * math.sqrt(self.config.d_model) + self.pos_emb(pos)  # (B, T, d)
        x = self.emb_dropout(x) * valid.unsqueeze(-1).to(x.dtype)
        weights = [] if need_weights else None
        for block in self.blocks:
            x, w = block(x, valid, need_weights)
            if need_weights:
                weights.append(w)
        x = self.final_norm(x) * valid.unsqueeze(-1).to(x.dtype)  # (B, T, d)
        return SASRecOutput(x, weights)

    def scores(self, hidden: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """``r = F_t . M_i`` for each candidate (§3.5, shared item embedding).

        Shape: hidden (B, T, d) with candidates (B, T) (one per position) -> (B, T);
        hidden (B, d) with candidates (B, C) -> (B, C).
        """
        check_item_ids(candidates, "candidates", self.config.num_items)
        emb = self.item_emb(candidates)  # (B, T|C, d)
        if hidden.dim() == 3:
            return (hidden * emb).sum(-1)  # (B, T)
        return torch.einsum("bd,bcd->bc", hidden, emb)  # (B, C)

    def last_hidden(self, items: torch.Tensor) -> torch.Tensor:
        """The output at the last (most recent) position. Shape: (B, T) -> (B, d)."""
        return self(items).hidden[:, -1]


def bce_next_item_loss(model, items, positives, negatives) -> tuple[torch.Tensor, int]:
    """SASRec's eq. 3: ``-sum_t [log s(r_{o_t,t}) + log(1 - s(r_{j,t}))]`` over real positions,
    averaged; ``o_t`` the next item, ``j`` one sampled negative. Works for any model with
    ``forward(items).hidden`` and ``scores(hidden, candidates)``.

    Shape: items, positives, negatives (B, T) int64 (0 = padding, ignored).

    Returns: (mean loss over real positions, number of real positions).
    """
    hidden = model(items).hidden  # (B, T, d)
    pos = model.scores(hidden, positives)  # (B, T)
    neg = model.scores(hidden, negatives)  # (B, T)
    real = (positives != 0).to(pos.dtype)  # (B, T)
    n = int(real.sum())
    if n == 0:
        raise ValueError("positives holds no item (all padding); nothing to learn from this batch")
    loss = F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos), weight=real, reduction="sum")
    loss = loss + F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg), weight=real, reduction="sum")
    return loss / n, n
