"""A GRU4Rec-style recurrent baseline for :mod:`attnlab.models.sasrec`.

.. math::
    h_t = \\mathrm{GRU}(M_{s_t}, h_{t-1}), \\qquad r_{i,t} = (W h_t) \\cdot M_i

GRU4Rec (Hidasi et al., 2016, ICLR) reads a session item by item with a GRU and scores
the next item from the hidden state. This baseline keeps that model but is trained and
scored exactly like SASRec, so the comparison isolates the sequence encoder: the same
left-padded windows, the same *shared* item embedding ``M`` for input and output, the
same BCE loss with one sampled negative per position
(:func:`attnlab.models.sasrec.bce_next_item_loss`), the same evaluation. (GRU4Rec's own
session-parallel mini-batches and ranking losses are not used.)

Shape: items (B, T) int64, left-padded with 0 -> hidden (B, T, d), zero at padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .._checks import check_positive_int, check_probability
from .sasrec import SASRecOutput, check_item_ids

__all__ = ["GRURecConfig", "GRURec"]


@dataclass(frozen=True)
class GRURecConfig:
    """Sizes of :class:`GRURec`.

    Args:
        num_items: items are ``1 .. num_items``; 0 is padding.
        max_len: longest window (kept equal to SASRec's so both see the same history).
        d_model: item embedding width (the output projection maps the GRU state to it).
        hidden_size: GRU state size.
        num_layers: stacked GRU layers.
        dropout: on the item embeddings and the GRU output.
    """

    num_items: int
    max_len: int = 50
    d_model: int = 50
    hidden_size: int = 100
    num_layers: int = 1
    dropout: float = 0.2
    name: str = "gru"

    def __post_init__(self):
        for f in ("num_items", "max_len", "d_model", "hidden_size", "num_layers"):
            check_positive_int(getattr(self, f), f)
        check_probability(self.dropout, "dropout")


def _realign(items: torch.Tensor, lengths: torch.Tensor, to_left: bool) -> torch.Tensor:
    """Move each row's ``lengths[b]`` real entries between the right end (left padding)
    and the left end (right padding) by a per-row rotation along dim 1.

    Shape: items (B, T, ...) -> (B, T, ...).
    """
    B, T = items.shape[:2]
    shift = (T - lengths).unsqueeze(1)  # (B, 1)
    ar = torch.arange(T, device=items.device).unsqueeze(0)  # (1, T)
    idx = (ar - shift) % T if to_left else (ar + shift) % T  # (B, T)
    idx = idx.view(B, T, *([1] * (items.dim() - 2))).expand_as(items)
    return items.gather(1, idx)


class GRURec(nn.Module):
    """GRU4Rec-style next-item model with SASRec's interface (``forward(items).hidden``,
    ``scores``, ``last_hidden``); see the module docstring."""

    def __init__(self, config: GRURecConfig):
        if not isinstance(config, GRURecConfig):
            raise TypeError(f"config must be a GRURecConfig, got {type(config).__name__}")
        super().__init__()
        self.config = config
        self.item_emb = nn.Embedding(config.num_items + 1, config.d_model, padding_idx=0)
        self.dropout = nn.Dropout(config.dropout)
        self.gru = nn.GRU(config.d_model, config.hidden_size, num_layers=config.num_layers, batch_first=True)
        self.proj = nn.Linear(config.hidden_size, config.d_model)
        nn.init.xavier_normal_(self.item_emb.weight)  # as SASRec's, so both start alike
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def forward(self, items: torch.Tensor, need_weights: bool = False) -> SASRecOutput:
        check_item_ids(items, "items", self.config.num_items, self.config.max_len)
        if need_weights:
            raise ValueError("need_weights: the GRU baseline has no attention weights")
        B, T = items.shape
        valid = items != 0  # (B, T)
        lengths = valid.sum(1)  # (B,)
        x = self.dropout(self.item_emb(items))  # (B, T, d)
        # The GRU must start at each row's first real item, not run over the padding:
        # rotate to right padding and pack (rows of length 0 get length 1, then zeroed).
        x = _realign(x, lengths, to_left=False)  # (B, T, d), real items first
        packed = pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        h, _ = self.gru(packed)
        h, _ = pad_packed_sequence(h, batch_first=True, total_length=T)  # (B, T, hidden)
        h = _realign(h, lengths, to_left=True)  # (B, T, hidden), left-padded again
        h = self.proj(self.dropout(h)) * valid.unsqueeze(-1).to(h.dtype)  # (B, T, d)
        return SASRecOutput(h, None)

    def scores(self, hidden: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Shape: (B, T, d) with (B, T) -> (B, T); (B, d) with (B, C) -> (B, C)."""
        check_item_ids(candidates, "candidates", self.config.num_items)
        emb = self.item_emb(candidates)
        if hidden.dim() == 3:
            return (hidden * emb).sum(-1)  # (B, T)
        return torch.einsum("bd,bcd->bc", hidden, emb)  # (B, C)

    def last_hidden(self, items: torch.Tensor) -> torch.Tensor:
        """Shape: (B, T) -> (B, d)."""
        return self(items).hidden[:, -1]
