"""Luong, Pham & Manning (2015): stacked RNN encoder-decoder with global or local attention.

"Effective Approaches to Attention-based Neural Machine Translation". A stacked
unidirectional LSTM (or GRU) encoder; a stacked decoder whose TOP state ``h_t``
(computed first, unlike Bahdanau's ``s_{i-1}``) queries the source states:

    a_t  = align(h_t, h_s)  with score dot | general | concat,  mode global | local-m | local-p
    c_t  = sum_s a_t(s) h_s
    h~_t = tanh(W_c [c_t; h_t])                      (attentional hidden state)
    p(y_t | y_<t, x) = softmax(W_s h~_t)

Input feeding (§3.3): the decoder's input at step ``t`` is ``[E y_{t-1}; h~_{t-1}]``
(``h~_0 = 0``), so alignment decisions are known to the next step. Without input
feeding (``input_feeding=False``, the paper's ablation) the decoder input is
``E y_{t-1}`` alone and the whole target runs in one batched pass.

The decoder starts from the encoder's final states (of the real lengths: packed
sequences). Attention is masked to the real source tokens; local-p takes the source
length ``S`` of each sentence from that mask. local-m centres its window at
``p_t = min(t, S_i - 1)``: the paper's ``p_t = t``, held at the last real source
token when the target is the longer one (else its window would hold no source at
all). The attention itself is :class:`attnlab.nn.LuongAttention`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .._checks import check_positive_int, check_probability
from ..nn import LUONG_MODES, LuongAttention
from .decoding import check_index, check_prev_tokens, check_source, check_target, source_mask

__all__ = ["LuongConfig", "LuongSeq2seq", "LuongMemory", "LuongState", "CELLS"]

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}
SCORES = ("dot", "general", "concat")


@dataclass(frozen=True)
class LuongConfig:
    """Sizes of :class:`LuongSeq2seq` (the paper: 4-layer LSTM, 1000 units, D = 10).

    Args:
        src_vocab, tgt_vocab: vocabulary sizes.
        pad_id: padding id.
        emb_size: token embedding size.
        hidden_size: RNN state size of encoder and decoder (also ``h~_t``).
        num_layers: stacked layers in encoder and decoder.
        cell: "lstm" or "gru".
        score: "dot", "general" or "concat".
        mode: "global", "local-m" or "local-p".
        window: half width ``D`` of the local window.
        input_feeding: feed ``h~_{t-1}`` to the decoder (§3.3).
        dropout: on embeddings, between layers and on ``h~_t``.
    """

    src_vocab: int
    tgt_vocab: int
    pad_id: int = 0
    emb_size: int = 256
    hidden_size: int = 256
    num_layers: int = 2
    cell: str = "lstm"
    score: str = "general"
    mode: str = "global"
    window: int = 10
    input_feeding: bool = True
    dropout: float = 0.1
    name: str = "luong"

    def __post_init__(self):
        for f in ("src_vocab", "tgt_vocab", "emb_size", "hidden_size", "num_layers"):
            check_positive_int(getattr(self, f), f)
        check_positive_int(self.pad_id, "pad_id", allow_zero=True)
        check_positive_int(self.window, "window", allow_zero=True)
        check_probability(self.dropout, "dropout")
        if self.cell not in CELLS:
            raise ValueError(f"unknown cell {self.cell!r}; valid cells: {', '.join(CELLS)}")
        if self.score not in SCORES:
            raise ValueError(f"unknown score {self.score!r}; valid scores: {', '.join(SCORES)}")
        if self.mode not in LUONG_MODES:
            raise ValueError(f"unknown mode {self.mode!r}; valid modes: {', '.join(LUONG_MODES)}")
        if not isinstance(self.input_feeding, bool):
            raise TypeError(f"input_feeding must be a bool, got {type(self.input_feeding).__name__}")
        if self.name != "luong":
            raise ValueError(f"name must be 'luong' for LuongConfig, got {self.name!r}")


class LuongMemory(NamedTuple):
    """outputs (B, S, H): top encoder states ``h_s``; mask (B, S) bool, True = real token;
    final: the encoder's final RNN state, (L, B, H) or an LSTM's (h, c) pair."""

    outputs: torch.Tensor
    mask: torch.Tensor
    final: torch.Tensor | tuple[torch.Tensor, torch.Tensor]


class LuongState(NamedTuple):
    """rnn: decoder RNN state ((L, B, H) or an (h, c) pair); feed: ``h~_{t-1}`` (B, H);
    step: target position ``t`` of the next step (local-m's window centre)."""

    rnn: torch.Tensor | tuple[torch.Tensor, torch.Tensor]
    feed: torch.Tensor
    step: int


def _select(rnn_state, index: torch.Tensor, dim: int):
    """Rows ``index`` of an RNN state (a tensor or an LSTM (h, c) pair) along ``dim``."""
    if isinstance(rnn_state, tuple):
        return tuple(x.index_select(dim, index) for x in rnn_state)
    return rnn_state.index_select(dim, index)


class LuongSeq2seq(nn.Module):
    """Luong et al. (2015) attention encoder-decoder; see the module docstring.

    Shape:
        src (B, S), src_lengths (B,), tgt_in (B, T) -> logits (B, T, tgt_vocab);
        :meth:`forward_with_attention` also gives weights (B, T, S).
        decode_step: prev_tokens (B,) -> logits (B, tgt_vocab), state, attention (B, S).
    """

    def __init__(self, config: LuongConfig):
        super().__init__()
        if not isinstance(config, LuongConfig):
            raise TypeError(f"config must be a LuongConfig, got {type(config).__name__}")
        self.config = c = config
        rnn = CELLS[c.cell]
        layer_dropout = c.dropout if c.num_layers > 1 else 0.0
        H = c.hidden_size
        self.src_embed = nn.Embedding(c.src_vocab, c.emb_size, padding_idx=c.pad_id)
        self.tgt_embed = nn.Embedding(c.tgt_vocab, c.emb_size, padding_idx=c.pad_id)
        self.encoder = rnn(c.emb_size, H, c.num_layers, batch_first=True, dropout=layer_dropout)
        dec_in = c.emb_size + (H if c.input_feeding else 0)
        self.decoder = rnn(dec_in, H, c.num_layers, batch_first=True, dropout=layer_dropout)
        self.attention = LuongAttention(
            H, H, score=c.score, mode=c.mode, window=c.window, hidden_dim=H, attentional_dim=H
        )  # owns W_c of h~_t = tanh(W_c [c_t; h_t])
        self.readout = nn.Linear(H, c.tgt_vocab)  # W_s
        self.dropout = nn.Dropout(c.dropout)

    # ------------------------------------------------------------------ protocol
    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor) -> LuongMemory:
        """Top-layer source states and final states of the stacked encoder."""
        check_source(src, src_lengths, self.config.src_vocab)
        x = self.dropout(self.src_embed(src.long()))  # (B, S, E)
        packed = pack_padded_sequence(x, src_lengths.cpu().long(), batch_first=True, enforce_sorted=False)
        out, final = self.encoder(packed)  # final at each real length, original order
        outputs, _ = pad_packed_sequence(out, batch_first=True, total_length=src.shape[1])  # (B, S, H)
        return LuongMemory(self.dropout(outputs), source_mask(src, src_lengths), final)

    def init_state(self, memory: LuongMemory) -> LuongState:
        """Decoder starts from the encoder's final state; ``h~_0 = 0``."""
        B, H = memory.outputs.shape[0], self.config.hidden_size
        return LuongState(memory.final, memory.outputs.new_zeros(B, H), 0)

    def _attend(self, memory: LuongMemory, h: torch.Tensor, first_position: int):
        """Context, ``h~`` and weights for decoder states ``h``.

        Shape: h (B, Tq, H) -> logits (B, Tq, V), h~ (B, Tq, H), weights (B, Tq, S).
        """
        positions = None
        if self.config.mode == "local-m":
            # p_t = t, held at the last real source token once t passes it (otherwise a
            # target longer than its source would attend an empty window).
            t = torch.arange(first_position, first_position + h.shape[1], device=h.device)  # (Tq,)
            last = memory.mask.sum(-1, keepdim=True) - 1  # (B, 1)
            positions = torch.minimum(t[None, :], last)  # (B, Tq)
        context, weights = self.attention(
            h, memory.outputs, mask=memory.mask[:, None, :], query_positions=positions, need_weights=True
        )  # (B, Tq, H), (B, Tq, S); mask (B, 1, S)
        h_tilde = self.attention.combine(context, h)  # (B, Tq, H)
        return self.readout(self.dropout(h_tilde)), h_tilde, weights

    def _step(self, memory: LuongMemory, state: LuongState, y_emb: torch.Tensor):
        """Shape: y_emb (B, E) -> logits (B, V), state, weights (B, S)."""
        x = torch.cat([y_emb, state.feed], dim=-1) if self.config.input_feeding else y_emb  # (B, E [+ H])
        h, rnn_state = self.decoder(x[:, None, :], state.rnn)  # (B, 1, H)
        logits, h_tilde, weights = self._attend(memory, h, state.step)  # (B, 1, V), (B, 1, H), (B, 1, S)
        return logits[:, 0], LuongState(rnn_state, h_tilde[:, 0], state.step + 1), weights[:, 0]

    def forward_with_attention(self, src: torch.Tensor, src_lengths: torch.Tensor, tgt_in: torch.Tensor):
        """Teacher-forced logits and attention weights.

        Shape: (B, S), (B,), (B, T) -> logits (B, T, tgt_vocab), weights (B, T, S).
        """
        memory = self.encode(src, src_lengths)
        check_target(tgt_in, src.shape[0], self.config.tgt_vocab)
        y_emb = self.dropout(self.tgt_embed(tgt_in.long()))  # (B, T, E)
        state = self.init_state(memory)
        if not self.config.input_feeding:
            # No step depends on the previous h~: run the decoder and attention over all T at once.
            h, _ = self.decoder(y_emb, state.rnn)  # (B, T, H)
            logits, _, weights = self._attend(memory, h, 0)
            return logits, weights
        logits, weights = [], []
        for t in range(tgt_in.shape[1]):
            step_logits, state, w = self._step(memory, state, y_emb[:, t])
            logits.append(step_logits)
            weights.append(w)
        return torch.stack(logits, dim=1), torch.stack(weights, dim=1)  # (B, T, V), (B, T, S)

    def forward(self, src: torch.Tensor, src_lengths: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits. Shape: (B, S), (B,), (B, T) -> (B, T, tgt_vocab)."""
        return self.forward_with_attention(src, src_lengths, tgt_in)[0]

    def decode_step(self, memory: LuongMemory, state: LuongState, prev_tokens: torch.Tensor):
        """One step. Shape: prev_tokens (B,) -> logits (B, V), state, attention (B, S)."""
        check_prev_tokens(prev_tokens, memory.outputs.shape[0], self.config.tgt_vocab)
        return self._step(memory, state, self.dropout(self.tgt_embed(prev_tokens.long())))

    def reorder(self, memory: LuongMemory, state: LuongState, index: torch.Tensor):
        """Rows ``index`` of the memory and state. Shape: index (B',) -> batch B'."""
        check_index(index, memory.outputs.shape[0])
        index = index.long().to(memory.outputs.device)
        memory = LuongMemory(
            memory.outputs.index_select(0, index), memory.mask.index_select(0, index), _select(memory.final, index, 1)
        )
        state = LuongState(_select(state.rnn, index, 1), state.feed.index_select(0, index), state.step)
        return memory, state
