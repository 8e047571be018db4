"""Word-by-word RNN translation: the naive design that encoder-decoders and attention replaced.

One recurrent network reads the source and writes the target in lockstep: at step
``t`` it reads source token ``x_t`` together with the previous target token
``y_{t-1}`` and emits ``y_t``,

    h_t = GRU([E_x x_t; E_y y_{t-1}], h_{t-1}),      p(y_t | ...) = softmax(W_o h_t + b_o).

So the output at step ``t`` has seen only the source tokens ``x_1 .. x_t``: it must
translate before reading the rest of the sentence, and word order cannot change.
Sutskever, Vinyals & Le (2014, §2) note that a plain RNN maps sequences to sequences
easily only when the alignment between inputs and outputs is known ahead of time;
this model assumes the trivial alignment ``t <-> t``. It is the strawman
baseline of the comparison: it exists to be beaten, not used.

Alignment choice (documented, deliberate): target step ``t`` is aligned with source
position ``t``. When the target is longer than the source, the steps past the source
end read the padding embedding (a zero vector: "no more source"); when it is shorter,
the remaining source tokens are never read. Nothing is truncated or padded in the data:
the model consumes any ``(src, tgt_in)`` pair, and ``decode_step`` walks the source
positions one per generated token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from .._checks import check_positive_int, check_probability
from .decoding import check_index, check_prev_tokens, check_source, check_target

__all__ = ["WordByWordConfig", "WordByWordRNN", "WordByWordMemory", "WordByWordState"]


@dataclass(frozen=True)
class WordByWordConfig:
    """Sizes of :class:`WordByWordRNN`.

    Args:
        src_vocab, tgt_vocab: vocabulary sizes.
        pad_id: padding id (its embeddings are zero: "no source token").
        emb_size: embedding size of source and target tokens.
        hidden_size: GRU state size.
        num_layers: stacked GRU layers.
        dropout: on embeddings, between GRU layers and before the readout.
    """

    src_vocab: int
    tgt_vocab: int
    pad_id: int = 0
    emb_size: int = 256
    hidden_size: int = 256
    num_layers: int = 1
    dropout: float = 0.1
    name: str = "seq2seq"

    def __post_init__(self):
        for f in ("src_vocab", "tgt_vocab", "emb_size", "hidden_size", "num_layers"):
            check_positive_int(getattr(self, f), f)
        check_positive_int(self.pad_id, "pad_id", allow_zero=True)
        check_probability(self.dropout, "dropout")
        if self.name != "seq2seq":
            raise ValueError(f"name must be 'seq2seq' for WordByWordConfig, got {self.name!r}")


class WordByWordMemory(NamedTuple):
    """src (B, S) long with every position past the real length set to ``pad_id``."""

    src: torch.Tensor


class WordByWordState(NamedTuple):
    """hidden (num_layers, B, hidden_size); step: the source position read next."""

    hidden: torch.Tensor
    step: int


class WordByWordRNN(nn.Module):
    """Word-by-word GRU translator (strawman baseline); see the module docstring.

    Shape:
        src (B, S), src_lengths (B,), tgt_in (B, T) -> logits (B, T, tgt_vocab).
        decode_step: prev_tokens (B,) -> logits (B, tgt_vocab), state, attention ``None``.
    """

    def __init__(self, config: WordByWordConfig):
        super().__init__()
        if not isinstance(config, WordByWordConfig):
            raise TypeError(f"config must be a WordByWordConfig, got {type(config).__name__}")
        self.config = c = config
        self.src_embed = nn.Embedding(c.src_vocab, c.emb_size, padding_idx=c.pad_id)
        self.tgt_embed = nn.Embedding(c.tgt_vocab, c.emb_size, padding_idx=c.pad_id)
        self.rnn = nn.GRU(
            2 * c.emb_size, c.hidden_size, c.num_layers, batch_first=True, dropout=c.dropout if c.num_layers > 1 else 0.0
        )
        self.dropout = nn.Dropout(c.dropout)
        self.readout = nn.Linear(c.hidden_size, c.tgt_vocab)

    # ------------------------------------------------------------------ helpers
    def _aligned_source(self, src: torch.Tensor, start: int, T: int) -> torch.Tensor:
        """Source ids at positions ``start .. start+T-1``, ``pad_id`` past the end.

        Shape: src (B, S) (already padded past each real length) -> (B, T).
        """
        B, S = src.shape
        window = src[:, start : start + T]  # (B, <= T)
        missing = T - window.shape[1]
        if missing > 0:
            window = torch.cat([window, src.new_full((B, missing), self.config.pad_id)], dim=1)  # (B, T)
        return window

    def _step_inputs(self, src_ids: torch.Tensor, tgt_ids: torch.Tensor) -> torch.Tensor:
        """``[E_x x_t; E_y y_{t-1}]``. Shape: (B, T), (B, T) -> (B, T, 2 * emb_size)."""
        return self.dropout(torch.cat([self.src_embed(src_ids), self.tgt_embed(tgt_ids)], dim=-1))

    # ------------------------------------------------------------------ protocol
    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor) -> WordByWordMemory:
        """Nothing to encode ahead: keep the source, padding past each real length."""
        check_source(src, src_lengths, self.config.src_vocab)
        src = src.long()
        real = torch.arange(src.shape[1], device=src.device)[None, :] < src_lengths.to(src.device)[:, None]  # (B, S)
        return WordByWordMemory(src.masked_fill(~real, self.config.pad_id))

    def init_state(self, memory: WordByWordMemory) -> WordByWordState:
        c = self.config
        B = memory.src.shape[0]
        h0 = self.readout.weight.new_zeros(c.num_layers, B, c.hidden_size)  # (L, B, H)
        return WordByWordState(h0, 0)

    def forward(self, src: torch.Tensor, src_lengths: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits. Shape: (B, S), (B,), (B, T) -> (B, T, tgt_vocab)."""
        memory = self.encode(src, src_lengths)
        check_target(tgt_in, src.shape[0], self.config.tgt_vocab)
        state = self.init_state(memory)
        T = tgt_in.shape[1]
        x = self._step_inputs(self._aligned_source(memory.src, 0, T), tgt_in.long())  # (B, T, 2E)
        out, _ = self.rnn(x, state.hidden)  # (B, T, H)
        return self.readout(self.dropout(out))  # (B, T, V)

    def decode_step(self, memory: WordByWordMemory, state: WordByWordState, prev_tokens: torch.Tensor):
        """Read source position ``state.step`` and ``prev_tokens``; emit the next logits.

        Shape: prev_tokens (B,) -> logits (B, tgt_vocab), new state, attention ``None``.
        """
        check_prev_tokens(prev_tokens, memory.src.shape[0], self.config.tgt_vocab)
        src_ids = self._aligned_source(memory.src, state.step, 1)  # (B, 1)
        x = self._step_inputs(src_ids, prev_tokens.long()[:, None])  # (B, 1, 2E)
        out, hidden = self.rnn(x, state.hidden)  # (B, 1, H), (L, B, H)
        logits = self.readout(self.dropout(out[:, 0]))  # (B, V)
        return logits, WordByWordState(hidden, state.step + 1), None

    def reorder(self, memory: WordByWordMemory, state: WordByWordState, index: torch.Tensor):
        """Rows ``index`` of the memory and state. Shape: index (B',) -> batch B'."""
        check_index(index, memory.src.shape[0])
        index = index.long().to(memory.src.device)
        return (
            WordByWordMemory(memory.src.index_select(0, index)),
            WordByWordState(state.hidden.index_select(1, index), state.step),
        )
