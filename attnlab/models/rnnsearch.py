"""RNNsearch: the attention-based encoder-decoder of Bahdanau, Cho & Bengio (2014).

"Neural Machine Translation by Jointly Learning to Align and Translate". The encoder
is a bidirectional GRU; each source position gets an annotation
``h_j = [->h_j; <-h_j]``. The decoder re-reads the annotations at every step through
additive attention:

    e_ij = v^T tanh(W_a s_{i-1} + U_a h_j),      a_ij = softmax_j(e_ij)   (real tokens only)
    c_i  = sum_j a_ij h_j
    s_i  = GRU([E y_{i-1}; c_i], s_{i-1}),       s_0 = tanh(W_s <-h_1)
    p(y_i | y_<i, x) = softmax(W_o g([s_i; c_i; E y_{i-1}]))

``U_a h_j`` does not depend on ``i``: it is computed once per sentence
(:meth:`attnlab.nn.AdditiveAttention.precompute_keys`). The readout ``g`` is linear
("linear", the default) or the paper's deep output with a maxout layer of
``maxout_size`` units (Goodfellow et al. 2013; "maxout"). Padding never reaches the
model: the encoder runs on packed sequences and attention is masked to the real
tokens (weights exactly 0 on padding).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .._checks import check_positive_int, check_probability
from ..nn import AdditiveAttention
from .decoding import check_index, check_prev_tokens, check_source, check_target, source_mask

__all__ = ["RNNSearchConfig", "RNNSearch", "RNNSearchMemory", "READOUTS"]


# --------------------------------------------------------------------------- readouts


class LinearReadout(nn.Module):
    """``W_o [s; c; E y] + b``. Shape: (..., in_dim) -> (..., vocab)."""

    def __init__(self, in_dim: int, vocab: int, maxout_size: int):
        super().__init__()
        self.out = nn.Linear(in_dim, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(x)


class MaxoutReadout(nn.Module):
    """Deep output with maxout (Bahdanau et al. 2014, App. A.2.2):
    ``t_k = max(u_{2k}, u_{2k+1})``, ``u = U [s; c; E y] + b``, logits ``W_o t``.

    Shape: (..., in_dim) -> (..., vocab).
    """

    def __init__(self, in_dim: int, vocab: int, maxout_size: int):
        super().__init__()
        self.maxout_size = maxout_size
        self.pre = nn.Linear(in_dim, 2 * maxout_size)
        self.out = nn.Linear(maxout_size, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.pre(x).unflatten(-1, (self.maxout_size, 2))  # (..., maxout_size, 2)
        return self.out(u.amax(dim=-1))  # (..., vocab)


READOUTS = {"linear": LinearReadout, "maxout": MaxoutReadout}


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class RNNSearchConfig:
    """Sizes of :class:`RNNSearch` (the paper: emb 620, enc/dec hidden 1000, attention
    hidden 1000, maxout 500).

    Args:
        src_vocab, tgt_vocab: vocabulary sizes.
        pad_id: padding id.
        emb_size: token embedding size.
        enc_hidden: GRU state size per direction (annotations are ``2 * enc_hidden``).
        dec_hidden: decoder GRU state size.
        attn_hidden: hidden size of the additive alignment network.
        readout: "linear" or "maxout" (see :data:`READOUTS`).
        maxout_size: maxout units (used by "maxout").
        dropout: on embeddings, annotations and the readout input.
    """

    src_vocab: int
    tgt_vocab: int
    pad_id: int = 0
    emb_size: int = 256
    enc_hidden: int = 256
    dec_hidden: int = 256
    attn_hidden: int = 256
    readout: str = "linear"
    maxout_size: int = 256
    dropout: float = 0.1
    name: str = "rnnsearch"

    def __post_init__(self):
        for f in ("src_vocab", "tgt_vocab", "emb_size", "enc_hidden", "dec_hidden", "attn_hidden", "maxout_size"):
            check_positive_int(getattr(self, f), f)
        check_positive_int(self.pad_id, "pad_id", allow_zero=True)
        check_probability(self.dropout, "dropout")
        if self.readout not in READOUTS:
            raise ValueError(f"unknown readout {self.readout!r}; valid readouts: {', '.join(READOUTS)}")
        if self.name != "rnnsearch":
            raise ValueError(f"name must be 'rnnsearch' for RNNSearchConfig, got {self.name!r}")


class RNNSearchMemory(NamedTuple):
    """annotations (B, S, 2*enc_hidden); projected_keys ``U_a h_j`` (B, S, attn_hidden);
    mask (B, S) bool, True = real source token; init (B, dec_hidden) ``s_0``."""

    annotations: torch.Tensor
    projected_keys: torch.Tensor
    mask: torch.Tensor
    init: torch.Tensor


# --------------------------------------------------------------------------- model


class RNNSearch(nn.Module):
    """Bahdanau et al. (2014) attention encoder-decoder; see the module docstring.

    Shape:
        src (B, S), src_lengths (B,), tgt_in (B, T) -> logits (B, T, tgt_vocab);
        :meth:`forward_with_attention` also gives weights (B, T, S).
        decode_step: prev_tokens (B,) -> logits (B, tgt_vocab), state (B, dec_hidden),
        attention (B, S) (rows sum to 1 over real tokens, 0 on padding).
    """

    def __init__(self, config: RNNSearchConfig):
        super().__init__()
        if not isinstance(config, RNNSearchConfig):
            raise TypeError(f"config must be a RNNSearchConfig, got {type(config).__name__}")
        self.config = c = config
        ann = 2 * c.enc_hidden
        self.src_embed = nn.Embedding(c.src_vocab, c.emb_size, padding_idx=c.pad_id)
        self.tgt_embed = nn.Embedding(c.tgt_vocab, c.emb_size, padding_idx=c.pad_id)
        self.encoder = nn.GRU(c.emb_size, c.enc_hidden, batch_first=True, bidirectional=True)
        self.init_proj = nn.Linear(c.enc_hidden, c.dec_hidden)  # W_s
        self.attention = AdditiveAttention(query_dim=c.dec_hidden, key_dim=ann, hidden_dim=c.attn_hidden)
        self.decoder = nn.GRUCell(c.emb_size + ann, c.dec_hidden)
        self.readout = READOUTS[c.readout](c.dec_hidden + ann + c.emb_size, c.tgt_vocab, c.maxout_size)
        self.dropout = nn.Dropout(c.dropout)

    # ------------------------------------------------------------------ protocol
    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor) -> RNNSearchMemory:
        """Annotations of the bidirectional encoder and the per-sentence key projections."""
        check_source(src, src_lengths, self.config.src_vocab)
        B, S = src.shape
        x = self.dropout(self.src_embed(src.long()))  # (B, S, E)
        packed = pack_padded_sequence(x, src_lengths.cpu().long(), batch_first=True, enforce_sorted=False)
        out, _ = self.encoder(packed)
        annotations, _ = pad_packed_sequence(out, batch_first=True, total_length=S)  # (B, S, 2He), zeros on padding
        backward_first = annotations[:, 0, self.config.enc_hidden :]  # <-h_1: the backward GRU's last state (B, He)
        init = torch.tanh(self.init_proj(backward_first))  # s_0 (B, Hd)
        annotations = self.dropout(annotations)
        return RNNSearchMemory(
            annotations,
            self.attention.precompute_keys(annotations),  # (B, S, attn_hidden)
            source_mask(src, src_lengths),  # (B, S)
            init,
        )

    def init_state(self, memory: RNNSearchMemory) -> torch.Tensor:
        """``s_0 = tanh(W_s <-h_1)``. Shape: -> (B, dec_hidden)."""
        return memory.init

    def _step_features(self, memory: RNNSearchMemory, s_prev: torch.Tensor, y_emb: torch.Tensor):
        """One decoder step, with the readout input ``[s_i; c_i; E y_{i-1}]``.

        Shape: s_prev (B, Hd), y_emb (B, E) -> logits (B, V), s (B, Hd), weights (B, S),
        features (B, Hd + 2He + E).
        """
        context, weights = self.attention(
            s_prev,
            memory.annotations,
            mask=memory.mask,
            need_weights=True,
            projected_keys=memory.projected_keys,
        )  # (B, 2He), (B, S)
        s = self.decoder(torch.cat([y_emb, context], dim=-1), s_prev)  # (B, Hd)
        features = torch.cat([s, context, y_emb], dim=-1)  # (B, Hd + 2He + E)
        logits = self.readout(self.dropout(features))  # (B, V)
        return logits, s, weights, features

    def _step(self, memory: RNNSearchMemory, s_prev: torch.Tensor, y_emb: torch.Tensor):
        """One decoder step.

        Shape: s_prev (B, Hd), y_emb (B, E) -> logits (B, V), s (B, Hd), weights (B, S).
        """
        return self._step_features(memory, s_prev, y_emb)[:3]

    # ------------------------------------------------------------------ readout features
    # For heads stacked on the decoder (e.g. the copy gate of attnlab.models.pointer).

    @property
    def readout_feature_size(self) -> int:
        """Size F of the readout input ``[s_i; c_i; E y_{i-1}]``: dec_hidden + 2 enc_hidden + emb_size."""
        c = self.config
        return c.dec_hidden + 2 * c.enc_hidden + c.emb_size

    def decode_features(self, memory: RNNSearchMemory, tgt_in: torch.Tensor):
        """Teacher-forced logits, attention weights and readout inputs ``[s_i; c_i; E y_{i-1}]``.

        Shape: tgt_in (B, T) -> logits (B, T, V), weights (B, T, S), features (B, T, F).
        """
        check_target(tgt_in, memory.annotations.shape[0], self.config.tgt_vocab)
        y_emb = self.dropout(self.tgt_embed(tgt_in.long()))  # (B, T, E)
        s = self.init_state(memory)  # (B, Hd)
        outs = []
        for t in range(tgt_in.shape[1]):
            step_logits, s, w, f = self._step_features(memory, s, y_emb[:, t])
            outs.append((step_logits, w, f))
        logits, weights, features = (torch.stack(x, dim=1) for x in zip(*outs))  # (B, T, V), (B, T, S), (B, T, F)
        return logits, weights, features

    def decode_step_features(self, memory: RNNSearchMemory, state: torch.Tensor, prev_tokens: torch.Tensor):
        """:meth:`decode_step` plus the readout input. Shape: prev_tokens (B,) -> logits (B, V),
        state (B, Hd), attention (B, S), features (B, F)."""
        check_prev_tokens(prev_tokens, memory.annotations.shape[0], self.config.tgt_vocab)
        y_emb = self.dropout(self.tgt_embed(prev_tokens.long()))  # (B, E)
        return self._step_features(memory, state, y_emb)

    def forward_with_attention(self, src: torch.Tensor, src_lengths: torch.Tensor, tgt_in: torch.Tensor):
        """Teacher-forced logits and attention weights.

        Shape: (B, S), (B,), (B, T) -> logits (B, T, tgt_vocab), weights (B, T, S).
        """
        memory = self.encode(src, src_lengths)
        check_target(tgt_in, src.shape[0], self.config.tgt_vocab)
        y_emb = self.dropout(self.tgt_embed(tgt_in.long()))  # (B, T, E)
        s = self.init_state(memory)  # (B, Hd)
        logits, weights = [], []
        for t in range(tgt_in.shape[1]):  # s_i depends on s_{i-1} through attention: no parallel form
            step_logits, s, w = self._step(memory, s, y_emb[:, t])
            logits.append(step_logits)
            weights.append(w)
        return torch.stack(logits, dim=1), torch.stack(weights, dim=1)  # (B, T, V), (B, T, S)

    def forward(self, src: torch.Tensor, src_lengths: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits. Shape: (B, S), (B,), (B, T) -> (B, T, tgt_vocab)."""
        return self.forward_with_attention(src, src_lengths, tgt_in)[0]

    def decode_step(self, memory: RNNSearchMemory, state: torch.Tensor, prev_tokens: torch.Tensor):
        """One step. Shape: prev_tokens (B,) -> logits (B, V), state (B, Hd), attention (B, S)."""
        check_prev_tokens(prev_tokens, memory.annotations.shape[0], self.config.tgt_vocab)
        y_emb = self.dropout(self.tgt_embed(prev_tokens.long()))  # (B, E)
        return self._step(memory, state, y_emb)

    def reorder(self, memory: RNNSearchMemory, state: torch.Tensor, index: torch.Tensor):
        """Rows ``index`` of the memory and state. Shape: index (B',) -> batch B'."""
        check_index(index, memory.annotations.shape[0])
        index = index.long().to(state.device)
        memory = RNNSearchMemory(*(x.index_select(0, index) for x in memory))
        return memory, state.index_select(0, index)
