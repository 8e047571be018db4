"""Transformer encoder-decoder, pre-norm (Vaswani et al. 2017; pre-LN as in Xiong et al. 2020).

Vaswani et al. (2017), "Attention Is All You Need", with the layer norm moved in front
of each sub-layer ("pre-LN": Xiong et al. 2020, "On Layer Normalization in the
Transformer Architecture"), which trains without learning-rate warm-up tricks on small
data:

    encoder layer:  x = x + SelfAttn(LN(x))                         (padding keys masked)
                    x = x + FFN(LN(x))
    decoder layer:  y = y + CausalSelfAttn(LN(y))                   (KV cache when decoding)
                    y = y + CrossAttn(LN(y), memory)                (padding keys masked)
                    y = y + FFN(LN(y))
    FFN(x) = W_2 act(W_1 x + b_1) + b_2;     final LN after each stack
    p(y_t | y_<t, x) = softmax(W_o LN(y_t)),  W_o = E_y (tied) or its own matrix

Token embeddings are scaled by ``sqrt(d_model)`` (§3.4). Positions come from
:data:`attnlab.nn.POSITIONAL`: an input scheme ("sinusoidal", §3.5, or "learned") is
added to the embeddings; an attention scheme ("rope", "alibi", ...) acts inside every
self-attention (not in cross-attention, whose query and key positions belong to
different sentences). All attention is :class:`attnlab.nn.MultiheadAttention`.

Decoding keeps one :class:`attnlab.nn.KVCache` per decoder layer, so a step projects
only the new token; its logits equal those of the full teacher-forced forward. (The
cross-attention keys/values are re-projected from the memory at each step:
``MultiheadAttention`` takes no precomputed keys; this costs ``2 S d^2`` per layer and
step, small next to the readout at these sizes.)

Alignments for heatmaps: the cross-attention weights of decoder layer
``align_layer`` (default the last), averaged over heads.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_positive_int, check_probability
from ..nn import POSITIONAL, KVCache, MultiheadAttention, build_positional
from .decoding import check_index, check_prev_tokens, check_source, check_target, source_mask

__all__ = ["TransformerConfig", "Transformer", "TransformerMemory", "TransformerState", "ACTIVATIONS"]

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


@dataclass(frozen=True)
class TransformerConfig:
    """Sizes of :class:`Transformer` (the paper's base model: d_model 512, 8 heads,
    6 + 6 layers, ffn 2048, dropout 0.1).

    Args:
        src_vocab, tgt_vocab: vocabulary sizes.
        pad_id: padding id.
        d_model: model width; ``d_model % num_heads == 0`` (and an even head size for "rope").
        num_heads: attention heads.
        num_encoder_layers, num_decoder_layers: stack depths.
        ffn_dim: inner size of the position-wise feed-forward network.
        dropout: on sub-layer outputs, embeddings and attention weights.
        ffn_dropout: on the feed-forward network's inner activation (tensor2tensor's
            "relu_dropout"; the paper names only the other dropouts); None: ``dropout``.
        activation: "relu" (the paper) or "gelu".
        positional: a name of :data:`attnlab.nn.POSITIONAL` ("sinusoidal", "learned",
            "rope", "alibi", "t5", "shaw", "none").
        max_len: longest sequence an input scheme ("sinusoidal", "learned") can encode.
        tie_embeddings: the readout ``W_o`` is the target embedding matrix (Press & Wolf 2017).
        share_embeddings: source and target share one embedding (a joint vocabulary;
            needs ``src_vocab == tgt_vocab``).
        align_layer: decoder layer whose cross-attention weights are returned (negative
            counts from the end).
    """

    src_vocab: int
    tgt_vocab: int
    pad_id: int = 0
    d_model: int = 256
    num_heads: int = 4
    num_encoder_layers: int = 3
    num_decoder_layers: int = 3
    ffn_dim: int = 1024
    dropout: float = 0.1
    ffn_dropout: float | None = None
    activation: str = "relu"
    positional: str = "sinusoidal"
    max_len: int = 1024
    tie_embeddings: bool = True
    share_embeddings: bool = False
    align_layer: int = -1
    name: str = "transformer"

    def __post_init__(self):
        for f in ("src_vocab", "tgt_vocab", "d_model", "num_heads", "num_encoder_layers", "num_decoder_layers",
                  "ffn_dim", "max_len"):
            check_positive_int(getattr(self, f), f)
        check_positive_int(self.pad_id, "pad_id", allow_zero=True)
        check_probability(self.dropout, "dropout")
        if self.ffn_dropout is not None:
            check_probability(self.ffn_dropout, "ffn_dropout")
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; valid activations: {', '.join(ACTIVATIONS)}")
        if self.positional not in POSITIONAL:
            raise ValueError(
                f"unknown positional encoding {self.positional!r}; valid positional encodings: {', '.join(POSITIONAL)}"
            )
        if self.positional == "rope" and (self.d_model // self.num_heads) % 2:
            raise ValueError(
                f"positional='rope' needs an even head size d_model / num_heads, got {self.d_model}/{self.num_heads}"
            )
        for f in ("tie_embeddings", "share_embeddings"):
            if not isinstance(getattr(self, f), bool):
                raise TypeError(f"{f} must be a bool, got {type(getattr(self, f)).__name__}")
        if self.share_embeddings and self.src_vocab != self.tgt_vocab:
            raise ValueError(
                f"share_embeddings needs src_vocab == tgt_vocab, got {self.src_vocab} and {self.tgt_vocab}"
            )
        if isinstance(self.align_layer, bool) or not isinstance(self.align_layer, int) or not (
            -self.num_decoder_layers <= self.align_layer < self.num_decoder_layers
        ):
            raise ValueError(
                f"align_layer must be an int in [-{self.num_decoder_layers}, {self.num_decoder_layers}) "
                f"(num_decoder_layers={self.num_decoder_layers}), got {self.align_layer!r}"
            )
        if self.name != "transformer":
            raise ValueError(f"name must be 'transformer' for TransformerConfig, got {self.name!r}")


# --------------------------------------------------------------------------- layers


class FeedForward(nn.Module):
    """``W_2 dropout(act(W_1 x + b_1)) + b_2``. Shape: (..., d_model) -> (..., d_model)."""

    def __init__(self, d_model: int, ffn_dim: int, dropout: float, activation: str):
        super().__init__()
        self.w1 = nn.Linear(d_model, ffn_dim)
        self.w2 = nn.Linear(ffn_dim, d_model)
        self.act = ACTIVATIONS[activation]
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(self.dropout(self.act(self.w1(x))))


def _ffn_dropout(c: TransformerConfig) -> float:
    return c.dropout if c.ffn_dropout is None else c.ffn_dropout


def _self_attention(c: TransformerConfig) -> MultiheadAttention:
    kind = POSITIONAL[c.positional].kind
    return MultiheadAttention(
        c.d_model, c.num_heads, dropout=c.dropout, batch_first=True,
        positional=c.positional if kind == "attention" and c.positional != "none" else None,
    )


class EncoderLayer(nn.Module):
    """Pre-LN encoder layer. Shape: x (B, S, d), key_padding_mask (B, S) (True = pad) -> (B, S, d)."""

    def __init__(self, c: TransformerConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(c.d_model)
        self.self_attn = _self_attention(c)
        self.norm2 = nn.LayerNorm(c.d_model)
        self.ffn = FeedForward(c.d_model, c.ffn_dim, _ffn_dropout(c), c.activation)
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.dropout(self.self_attn(h, h, h, key_padding_mask=key_padding_mask, need_weights=False)[0])
        return x + self.dropout(self.ffn(self.norm2(x)))


class DecoderLayer(nn.Module):
    """Pre-LN decoder layer.

    Shape: y (B, T, d), memory (B, S, d), memory_padding_mask (B, S) (True = pad) ->
    y (B, T, d), cross-attention weights (B, T, S) averaged over heads, or ``None``.
    """

    def __init__(self, c: TransformerConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(c.d_model)
        self.self_attn = _self_attention(c)
        self.norm2 = nn.LayerNorm(c.d_model)
        self.cross_attn = MultiheadAttention(c.d_model, c.num_heads, dropout=c.dropout, batch_first=True)
        self.norm3 = nn.LayerNorm(c.d_model)
        self.ffn = FeedForward(c.d_model, c.ffn_dim, _ffn_dropout(c), c.activation)
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, y, memory, memory_padding_mask, *, kv_cache: KVCache | None = None, need_weights: bool = False):
        h = self.norm1(y)
        y = y + self.dropout(self.self_attn(h, h, h, is_causal=True, kv_cache=kv_cache, need_weights=False)[0])
        h = self.norm2(y)
        out, weights = self.cross_attn(
            h, memory, memory, key_padding_mask=memory_padding_mask, need_weights=need_weights
        )  # (B, T, d), (B, T, S) or None
        y = y + self.dropout(out)
        return y + self.dropout(self.ffn(self.norm3(y))), weights


# --------------------------------------------------------------------------- model


class TransformerMemory(NamedTuple):
    """states (B, S, d_model): encoder output; mask (B, S) bool, True = real token."""

    states: torch.Tensor
    mask: torch.Tensor


class TransformerState(NamedTuple):
    """caches: one :class:`KVCache` of decoder self-attention per layer; step: position
    of the next target token."""

    caches: list[KVCache]
    step: int


class Transformer(nn.Module):
    """Pre-LN Transformer encoder-decoder; see the module docstring.

    Shape:
        src (B, S), src_lengths (B,), tgt_in (B, T) -> logits (B, T, tgt_vocab);
        :meth:`forward_with_attention` also gives cross-attention weights (B, T, S).
        decode_step: prev_tokens (B,) -> logits (B, tgt_vocab), state, attention (B, S).
    """

    def __init__(self, config: TransformerConfig):
        super().__init__()
        if not isinstance(config, TransformerConfig):
            raise TypeError(f"config must be a TransformerConfig, got {type(config).__name__}")
        self.config = c = config
        # Tied / shared matrices are registered once (no second name for one tensor), so
        # the state dict has no aliased entries: safetensors refuses those.
        self.tgt_embed = nn.Embedding(c.tgt_vocab, c.d_model, padding_idx=c.pad_id)
        self.src_embed = None if c.share_embeddings else nn.Embedding(c.src_vocab, c.d_model, padding_idx=c.pad_id)
        self.positional = build_positional(
            c.positional, num_heads=c.num_heads, head_dim=c.d_model // c.num_heads, d_model=c.d_model, max_len=c.max_len
        )  # its forward adds input encodings; identity for attention schemes (they live in the MHAs)
        self.encoder_layers = nn.ModuleList(EncoderLayer(c) for _ in range(c.num_encoder_layers))
        self.encoder_norm = nn.LayerNorm(c.d_model)
        self.decoder_layers = nn.ModuleList(DecoderLayer(c) for _ in range(c.num_decoder_layers))
        self.decoder_norm = nn.LayerNorm(c.d_model)
        self.readout = None if c.tie_embeddings else nn.Linear(c.d_model, c.tgt_vocab, bias=False)
        self.dropout = nn.Dropout(c.dropout)
        self.embed_scale = math.sqrt(c.d_model)
        # Embeddings of std d^-1/2: times sqrt(d) they enter at unit scale, and as a tied
        # readout they give logits of unit scale (fairseq's choice).
        for emb in (self.src_embed, self.tgt_embed):
            if emb is not None:
                nn.init.normal_(emb.weight, std=c.d_model**-0.5)
                with torch.no_grad():
                    emb.weight[c.pad_id].zero_()
        self._align = c.align_layer % c.num_decoder_layers

    @property
    def source_embedding(self) -> nn.Embedding:
        """``E_x``: the target embedding itself when ``share_embeddings``."""
        return self.tgt_embed if self.src_embed is None else self.src_embed

    def output_weight(self) -> torch.Tensor:
        """``W_o`` (tgt_vocab, d_model): the target embedding when ``tie_embeddings``."""
        return self.tgt_embed.weight if self.readout is None else self.readout.weight

    def _embed(self, embed: nn.Embedding, ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Scaled embeddings plus input positions. Shape: ids (B, T) -> (B, T, d_model)."""
        x = embed(ids.long()) * self.embed_scale  # (B, T, d)
        if self.positional.kind == "input":
            positions = torch.arange(start, start + ids.shape[1], device=ids.device)  # (T,)
            x = self.positional(x, positions)
        return self.dropout(x)

    # ------------------------------------------------------------------ protocol
    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor) -> TransformerMemory:
        """Encoder states. Shape: src (B, S), src_lengths (B,) -> states (B, S, d_model)."""
        check_source(src, src_lengths, self.config.src_vocab)
        mask = source_mask(src, src_lengths)  # (B, S), True = real
        pad = ~mask  # MultiheadAttention keeps torch's key_padding_mask convention (True = ignore)
        x = self._embed(self.source_embedding, src)  # (B, S, d)
        for layer in self.encoder_layers:
            x = layer(x, pad)
        return TransformerMemory(self.encoder_norm(x), mask)

    def init_state(self, memory: TransformerMemory) -> TransformerState:
        return TransformerState([KVCache() for _ in self.decoder_layers], 0)

    def _decoder_states(self, memory: TransformerMemory, y: torch.Tensor, caches, need_weights: bool):
        """Run the decoder stack. Shape: y (B, T, d) -> states (B, T, d) (after the final LN),
        weights (B, T, S) or None."""
        pad = ~memory.mask  # (B, S)
        weights = None
        for i, layer in enumerate(self.decoder_layers):
            want = need_weights and i == self._align
            y, w = layer(y, memory.states, pad, kv_cache=None if caches is None else caches[i], need_weights=want)
            if want:
                weights = w  # (B, T, S)
        return self.decoder_norm(y), weights

    def _decode(self, memory: TransformerMemory, y: torch.Tensor, caches, need_weights: bool):
        """Run the decoder stack. Shape: y (B, T, d) -> logits (B, T, V), weights (B, T, S) or None."""
        h, weights = self._decoder_states(memory, y, caches, need_weights)
        return F.linear(h, self.output_weight()), weights  # (B, T, V)

    # ------------------------------------------------------------------ readout features
    # For heads stacked on the decoder (e.g. the copy gate of attnlab.models.pointer):
    # the logits, the alignment and the vector the readout saw, per step.

    @property
    def readout_feature_size(self) -> int:
        """Size F of :meth:`decode_features`' features: ``[h_t; c_t]`` = 2 * d_model."""
        return 2 * self.config.d_model

    def _features(self, memory: TransformerMemory, h: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``[h_t; c_t]``, ``c_t = sum_j a_tj m_j`` over the align layer's head-averaged weights.

        Shape: h (B, T, d), weights (B, T, S) -> (B, T, 2d).
        """
        context = torch.matmul(weights.to(memory.states.dtype), memory.states)  # (B, T, d)
        return torch.cat([h, context], dim=-1)

    def decode_features(self, memory: TransformerMemory, tgt_in: torch.Tensor):
        """Teacher-forced logits, align-layer cross-attention and readout features.

        Shape: tgt_in (B, T) -> logits (B, T, V), weights (B, T, S), features (B, T, 2 d_model).
        """
        check_target(tgt_in, memory.states.shape[0], self.config.tgt_vocab)
        h, weights = self._decoder_states(memory, self._embed(self.tgt_embed, tgt_in), None, need_weights=True)
        return F.linear(h, self.output_weight()), weights, self._features(memory, h, weights)

    def decode_step_features(self, memory: TransformerMemory, state: TransformerState, prev_tokens: torch.Tensor):
        """:meth:`decode_step` plus the step's readout features.

        Shape: prev_tokens (B,) -> logits (B, V), state, attention (B, S), features (B, 2 d_model).
        """
        check_prev_tokens(prev_tokens, memory.states.shape[0], self.config.tgt_vocab)
        y = self._embed(self.tgt_embed, prev_tokens[:, None], start=state.step)  # (B, 1, d)
        caches = [copy.copy(cache) for cache in state.caches]  # see decode_step
        h, weights = self._decoder_states(memory, y, caches, need_weights=True)  # (B, 1, d), (B, 1, S)
        logits = F.linear(h, self.output_weight())  # (B, 1, V)
        features = self._features(memory, h, weights)  # (B, 1, 2d)
        return logits[:, 0], TransformerState(caches, state.step + 1), weights[:, 0], features[:, 0]

    def forward_with_attention(self, src: torch.Tensor, src_lengths: torch.Tensor, tgt_in: torch.Tensor):
        """Teacher-forced logits and cross-attention weights of ``align_layer``.

        Shape: (B, S), (B,), (B, T) -> logits (B, T, tgt_vocab), weights (B, T, S).
        """
        memory = self.encode(src, src_lengths)
        check_target(tgt_in, src.shape[0], self.config.tgt_vocab)
        return self._decode(memory, self._embed(self.tgt_embed, tgt_in), None, need_weights=True)

    def forward(self, src: torch.Tensor, src_lengths: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits. Shape: (B, S), (B,), (B, T) -> (B, T, tgt_vocab)."""
        memory = self.encode(src, src_lengths)
        check_target(tgt_in, src.shape[0], self.config.tgt_vocab)
        return self._decode(memory, self._embed(self.tgt_embed, tgt_in), None, need_weights=False)[0]

    def decode_step(self, memory: TransformerMemory, state: TransformerState, prev_tokens: torch.Tensor):
        """One cached step. Shape: prev_tokens (B,) -> logits (B, V), state, attention (B, S)."""
        check_prev_tokens(prev_tokens, memory.states.shape[0], self.config.tgt_vocab)
        y = self._embed(self.tgt_embed, prev_tokens[:, None], start=state.step)  # (B, 1, d)
        # Shallow copies: a growing KVCache concatenates into new tensors, so appending to
        # a copy leaves the caller's state as it was (a state can be stepped twice).
        caches = [copy.copy(cache) for cache in state.caches]
        logits, weights = self._decode(memory, y, caches, need_weights=True)  # (B, 1, V), (B, 1, S)
        return logits[:, 0], TransformerState(caches, state.step + 1), weights[:, 0]

    def reorder(self, memory: TransformerMemory, state: TransformerState, index: torch.Tensor):
        """Rows ``index`` of the memory and of every cache. Shape: index (B',) -> batch B'."""
        check_index(index, memory.states.shape[0])
        index = index.long().to(memory.states.device)
        memory = TransformerMemory(memory.states.index_select(0, index), memory.mask.index_select(0, index))
        caches = []
        for cache in state.caches:
            new = KVCache()
            if cache.length:
                new.append(cache.k.index_select(0, index), cache.v.index_select(0, index))  # (B', H, t, D)
            caches.append(new)
        return memory, TransformerState(caches, state.step)
