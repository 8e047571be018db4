"""RNN encoder-decoder with one fixed-size context vector (Cho et al. 2014; Sutskever et al. 2014).

Cho, van Merrienboer, Gulcehre, Bahdanau, Bougares, Schwenk & Bengio (2014), "Learning
Phrase Representations using RNN Encoder-Decoder for Statistical Machine Translation";
Sutskever, Vinyals & Le (2014), "Sequence to Sequence Learning with Neural Networks".
Bahdanau et al. (2014) call this model *RNNencdec* and show it degrades on long
sentences: the whole source must squeeze through one vector.

    encoder:  h_j = GRU(E_x x_j, h_{j-1}),            c = h_{|x|}   (the last REAL position)
    decoder:  s_0 = tanh(W_s c)
              s_t = GRU([E_y y_{t-1}; c], s_{t-1})     (c fed at every step, as Cho et al.)
              p(y_t | y_<t, x) = softmax(W_o [s_t; E_y y_{t-1}; c] + b_o)

The readout is linear over the three inputs Cho et al. feed their maxout layer. ``c``
is the top encoder layer's state after the last real token of each sentence (packed
sequences), so padding never leaks into it. There is no attention: ``decode_step``
returns ``None`` for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from .._checks import check_positive_int, check_probability
from .decoding import check_index, check_prev_tokens, check_source, check_target

__all__ = ["RNNEncDecConfig", "RNNEncDec", "RNNEncDecMemory"]


@dataclass(frozen=True)
class RNNEncDecConfig:
    """Sizes of :class:`RNNEncDec`.

    Args:
        src_vocab, tgt_vocab: vocabulary sizes.
        pad_id: padding id.
        emb_size: token embedding size.
        hidden_size: GRU state size of encoder and decoder (and of ``c``).
        num_layers: stacked GRU layers in encoder and decoder.
        dropout: on embeddings, between layers and before the readout.
    """

    src_vocab: int
    tgt_vocab: int
    pad_id: int = 0
    emb_size: int = 256
    hidden_size: int = 256
    num_layers: int = 1
    dropout: float = 0.1
    name: str = "rnnenc"

    def __post_init__(self):
        for f in ("src_vocab", "tgt_vocab", "emb_size", "hidden_size", "num_layers"):
            check_positive_int(getattr(self, f), f)
        check_positive_int(self.pad_id, "pad_id", allow_zero=True)
        check_probability(self.dropout, "dropout")
        if self.name != "rnnenc":
            raise ValueError(f"name must be 'rnnenc' for RNNEncDecConfig, got {self.name!r}")


class RNNEncDecMemory(NamedTuple):
    """context (B, hidden_size): the single vector ``c`` the decoder sees."""

    context: torch.Tensor


class RNNEncDec(nn.Module):
    """Encoder-decoder with a single context vector; see the module docstring.

    Shape:
        src (B, S), src_lengths (B,), tgt_in (B, T) -> logits (B, T, tgt_vocab).
        decode_step: prev_tokens (B,) -> logits (B, tgt_vocab), state
        (num_layers, B, hidden_size), attention ``None``.
    """

    def __init__(self, config: RNNEncDecConfig):
        super().__init__()
        if not isinstance(config, RNNEncDecConfig):
            raise TypeError(f"config must be a RNNEncDecConfig, got {type(config).__name__}")
        self.config = c = config
        layer_dropout = c.dropout if c.num_layers > 1 else 0.0
        self.src_embed = nn.Embedding(c.src_vocab, c.emb_size, padding_idx=c.pad_id)
        self.tgt_embed = nn.Embedding(c.tgt_vocab, c.emb_size, padding_idx=c.pad_id)
        self.encoder = nn.GRU(c.emb_size, c.hidden_size, c.num_layers, batch_first=True, dropout=layer_dropout)
        self.init_proj = nn.Linear(c.hidden_size, c.num_layers * c.hidden_size)  # W_s
        self.decoder = nn.GRU(
            c.emb_size + c.hidden_size, c.hidden_size, c.num_layers, batch_first=True, dropout=layer_dropout
        )
        self.readout = nn.Linear(2 * c.hidden_size + c.emb_size, c.tgt_vocab)  # W_o over [s; E y; c]
        self.dropout = nn.Dropout(c.dropout)

    # ------------------------------------------------------------------ protocol
    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor) -> RNNEncDecMemory:
        """``c``: the top encoder layer's state after each sentence's last real token."""
        check_source(src, src_lengths, self.config.src_vocab)
        x = self.dropout(self.src_embed(src.long()))  # (B, S, E)
        packed = pack_padded_sequence(x, src_lengths.cpu().long(), batch_first=True, enforce_sorted=False)
        _, h_n = self.encoder(packed)  # (L, B, H), at each real length, original order
        return RNNEncDecMemory(h_n[-1])  # (B, H)

    def init_state(self, memory: RNNEncDecMemory) -> torch.Tensor:
        """``s_0 = tanh(W_s c)``, one slice per decoder layer. Shape: -> (L, B, H)."""
        c = self.config
        B = memory.context.shape[0]
        s0 = torch.tanh(self.init_proj(memory.context))  # (B, L * H)
        return s0.view(B, c.num_layers, c.hidden_size).transpose(0, 1).contiguous()  # (L, B, H)

    def _readout(self, s: torch.Tensor, y_emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Shape: s (B, T, H), y_emb (B, T, E), context (B, T, H) -> (B, T, V)."""
        return self.readout(self.dropout(torch.cat([s, y_emb, context], dim=-1)))

    def forward(self, src: torch.Tensor, src_lengths: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits. Shape: (B, S), (B,), (B, T) -> (B, T, tgt_vocab)."""
        memory = self.encode(src, src_lengths)
        check_target(tgt_in, src.shape[0], self.config.tgt_vocab)
        T = tgt_in.shape[1]
        y_emb = self.dropout(self.tgt_embed(tgt_in.long()))  # (B, T, E)
        context = memory.context[:, None, :].expand(-1, T, -1)  # (B, T, H)
        s, _ = self.decoder(torch.cat([y_emb, context], dim=-1), self.init_state(memory))  # (B, T, H)
        return self._readout(s, y_emb, context)  # (B, T, V)

    def decode_step(self, memory: RNNEncDecMemory, state: torch.Tensor, prev_tokens: torch.Tensor):
        """One decoder step. Shape: prev_tokens (B,) -> logits (B, V), state (L, B, H), ``None``."""
        check_prev_tokens(prev_tokens, memory.context.shape[0], self.config.tgt_vocab)
        y_emb = self.dropout(self.tgt_embed(prev_tokens.long()[:, None]))  # (B, 1, E)
        context = memory.context[:, None, :]  # (B, 1, H)
        s, state = self.decoder(torch.cat([y_emb, context], dim=-1), state)  # (B, 1, H), (L, B, H)
        return self._readout(s, y_emb, context)[:, 0], state, None  # (B, V)

    def reorder(self, memory: RNNEncDecMemory, state: torch.Tensor, index: torch.Tensor):
        """Rows ``index`` of the memory and state. Shape: index (B',) -> batch B'."""
        check_index(index, memory.context.shape[0])
        index = index.long().to(memory.context.device)
        return RNNEncDecMemory(memory.context.index_select(0, index)), state.index_select(1, index)
