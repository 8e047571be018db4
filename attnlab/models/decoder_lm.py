"""A small decoder-only Transformer language model, pre-norm, with any positional scheme.

The GPT shape (Radford et al. 2018/2019) at toy size, built from attnlab parts:

    h_0 = dropout(E[x] * sqrt(d) (+ P[pos] for an "input" scheme))
    h_l = h_{l-1} + dropout(CausalSelfAttn(LN(h_{l-1})))            (positional scheme inside
    h_l = h_l     + dropout(FFN(LN(h_l)))                             for an "attention" one)
    p(x_{t+1} | x_<=t) = softmax(W_o LN(h_L)_t),   W_o = E (tied, Press & Wolf 2017)

Pre-LN (Xiong et al. 2020) trains without warm-up tricks. Every attention is
:class:`attnlab.nn.MultiheadAttention` with ``is_causal=True``. Positions come from
:data:`attnlab.nn.POSITIONAL` by name (``DecoderLMConfig.positional``):

- ``"sinusoidal"`` (Vaswani et al. 2017 §3.5) and ``"learned"`` (Gehring et al. 2017;
  GPT-2) are "input" schemes, added to the scaled token embeddings; they know positions
  ``< max_len`` only. A learned table has ``max_len`` rows, and rows no training
  sequence reached keep their initial values: the model runs at those positions, it
  has simply never been taught them.
- ``"rope"`` (Su et al. 2021), ``"alibi"`` (Press et al. 2022), ``"shaw"`` (Shaw et al.
  2018) and ``"t5"`` (Raffel et al. 2020) act inside every self-attention and accept
  any length. As in the papers, the T5 bias table is one module shared by all layers
  and buckets past distances only (T5's decoder: ``bidirectional=False``); Shaw's
  key-side table is one per layer. ``positional_options`` go to the scheme's
  constructor (e.g. ``{"max_distance": 64}`` for ``t5``).

Shape:
    tokens (B, T) long ids -> logits (B, T, vocab_size); logits[:, t] predict tokens[:, t + 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_positive_int, check_probability, fmt_shape
from ..nn import POSITIONAL, MultiheadAttention, build_positional
from .transformer import ACTIVATIONS, FeedForward

__all__ = ["DecoderLMConfig", "DecoderLM", "DecoderLayer", "ACTIVATIONS", "CAUSAL_DEFAULTS"]

#: Schemes whose parameters the papers share across layers (one module for the stack).
SHARED_ACROSS_LAYERS = frozenset({"t5"})
#: Options a causal model needs unless ``positional_options`` says otherwise: T5's decoder
#: buckets only past distances (all its buckets then serve keys the mask lets through).
CAUSAL_DEFAULTS: dict[str, dict] = {"t5": {"bidirectional": False}}


def _options_tuple(options) -> tuple:
    """``{"max_distance": 64}`` or ``(("max_distance", 64),)`` -> sorted tuple of pairs
    (hashable, so the frozen config stays hashable; survives a JSON round trip as a list)."""
    if isinstance(options, Mapping):
        items = list(options.items())
    elif isinstance(options, (tuple, list)):
        items = []
        for item in options:
            if not (isinstance(item, (tuple, list)) and len(item) == 2):
                raise TypeError(
                    f"positional_options must be a dict or a sequence of (name, value) pairs, got item {item!r}"
                )
            items.append(tuple(item))
    else:
        raise TypeError(f"positional_options must be a dict of keyword arguments, got {type(options).__name__}")
    for key, value in items:
        if not isinstance(key, str):
            raise TypeError(f"positional_options keys must be str argument names, got {key!r}")
        if not (value is None or isinstance(value, (bool, int, float, str))):
            raise TypeError(f"positional_options[{key!r}] must be a number, str, bool or None, got {type(value).__name__}")
    return tuple(sorted(items))


@dataclass(frozen=True)
class DecoderLMConfig:
    """Sizes of :class:`DecoderLM`.

    Args:
        vocab_size: number of token ids.
        d_model: model width; ``d_model % num_heads == 0`` (and an even head size for "rope").
        num_heads: attention heads.
        num_layers: decoder layers.
        ffn_dim: inner size of the feed-forward network.
        dropout: on embeddings, sub-layer outputs and attention weights (training only).
        activation: "gelu" (GPT) or "relu".
        positional: a name of :data:`attnlab.nn.POSITIONAL` ("sinusoidal", "learned",
            "shaw", "t5", "rope", "alibi", "none").
        positional_options: keyword arguments of that scheme's constructor, as a dict or
            (name, value) pairs (stored as a sorted tuple of pairs).
        max_len: positions an input scheme ("sinusoidal", "learned") has rows for; longer
            inputs are refused for those schemes (attention schemes take any length).
        tie_embeddings: the readout is the token embedding matrix.
    """

    vocab_size: int
    d_model: int = 128
    num_heads: int = 4
    num_layers: int = 2
    ffn_dim: int = 512
    dropout: float = 0.1
    activation: str = "gelu"
    positional: str = "sinusoidal"
    positional_options: tuple = ()
    max_len: int = 1024
    tie_embeddings: bool = True
    name: str = "decoder_lm"

    def __post_init__(self):
        for f in ("vocab_size", "d_model", "num_heads", "num_layers", "ffn_dim", "max_len"):
            check_positive_int(getattr(self, f), f)
        check_probability(self.dropout, "dropout")
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; valid activations: {', '.join(ACTIVATIONS)}")
        if self.positional not in POSITIONAL:
            raise ValueError(
                f"unknown positional encoding {self.positional!r}; valid positional encodings: "
                f"{', '.join(POSITIONAL)}"
            )
        if self.positional == "rope" and (self.d_model // self.num_heads) % 2:
            raise ValueError(
                f"positional='rope' needs an even head size d_model / num_heads, got {self.d_model}/{self.num_heads}"
            )
        object.__setattr__(self, "positional_options", _options_tuple(self.positional_options))
        if not isinstance(self.tie_embeddings, bool):
            raise TypeError(f"tie_embeddings must be a bool, got {type(self.tie_embeddings).__name__}")
        if self.name != "decoder_lm":
            raise ValueError(f"name must be 'decoder_lm' for DecoderLMConfig, got {self.name!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def positional_kind(self) -> str:
        """"input" (added to the embeddings) or "attention" (inside every self-attention)."""
        return POSITIONAL[self.positional].kind

    def build_positional(self) -> nn.Module:
        """A fresh module of the configured scheme: :data:`CAUSAL_DEFAULTS` overridden by
        ``positional_options``."""
        options = {**CAUSAL_DEFAULTS.get(self.positional, {}), **dict(self.positional_options)}
        return build_positional(
            self.positional, num_heads=self.num_heads, head_dim=self.head_dim, d_model=self.d_model,
            max_len=self.max_len, **options,
        )


class DecoderLayer(nn.Module):
    """Pre-LN causal layer: ``x + SelfAttn(LN(x))`` then ``x + FFN(LN(x))``.

    Args:
        config: the model's :class:`DecoderLMConfig`.
        positional: the attention-kind scheme of this layer's self-attention, or ``None``.

    Shape:
        x (B, T, d_model) -> (B, T, d_model), attention weights (B, H, T, T) or ``None``.
    """

    def __init__(self, config: DecoderLMConfig, positional: nn.Module | None):
        super().__init__()
        c = config
        self.norm1 = nn.LayerNorm(c.d_model)
        self.self_attn = MultiheadAttention(
            c.d_model, c.num_heads, dropout=c.dropout, batch_first=True, positional=positional
        )
        self.norm2 = nn.LayerNorm(c.d_model)
        self.ffn = FeedForward(c.d_model, c.ffn_dim, c.dropout, c.activation)
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor, need_weights: bool = False):
        h = self.norm1(x)
        out, weights = self.self_attn(
            h, h, h, is_causal=True, need_weights=need_weights, average_attn_weights=False
        )  # (B, T, d), (B, H, T, T) or None
        x = x + self.dropout(out)
        return x + self.dropout(self.ffn(self.norm2(x))), weights


class DecoderLM(nn.Module):
    """Decoder-only causal language model; see the module docstring.

    Shape:
        tokens (B, T) -> logits (B, T, vocab_size); :meth:`forward_with_attention` also
        gives each layer's weights (B, H, T, T).
    """

    def __init__(self, config: DecoderLMConfig):
        super().__init__()
        if not isinstance(config, DecoderLMConfig):
            raise TypeError(f"config must be a DecoderLMConfig, got {type(config).__name__}")
        self.config = c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        # Embeddings of std d^-1/2: times sqrt(d) they enter at unit scale, and as a tied
        # readout they give logits of unit scale (as in attnlab.models.transformer).
        nn.init.normal_(self.embed.weight, std=c.d_model**-0.5)
        self.embed_scale = math.sqrt(c.d_model)
        self.input_positional = None
        if c.positional_kind == "input":
            self.input_positional = c.build_positional()
            per_layer = [None] * c.num_layers
        elif c.positional == "none":
            per_layer = [None] * c.num_layers
        elif c.positional in SHARED_ACROSS_LAYERS:
            shared = c.build_positional()
            per_layer = [shared] * c.num_layers
        else:
            per_layer = [c.build_positional() for _ in range(c.num_layers)]
        self.layers = nn.ModuleList(DecoderLayer(c, pos) for pos in per_layer)
        self.norm = nn.LayerNorm(c.d_model)
        self.readout = None if c.tie_embeddings else nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.dropout = nn.Dropout(c.dropout)

    def output_weight(self) -> torch.Tensor:
        """``W_o`` (vocab_size, d_model): the token embedding when ``tie_embeddings``."""
        return self.embed.weight if self.readout is None else self.readout.weight

    def _check_tokens(self, tokens) -> None:
        if not isinstance(tokens, torch.Tensor):
            raise TypeError(f"tokens must be a torch.Tensor of token ids, got {type(tokens).__name__}")
        if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
            raise TypeError(f"tokens must be an integer (long) tensor of token ids, got {tokens.dtype}")
        if tokens.dim() != 2 or tokens.shape[1] == 0:
            raise ValueError(f"tokens must have shape (B, T) with T >= 1, got {fmt_shape(tokens.shape)}")
        c = self.config
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= c.vocab_size):
            raise ValueError(
                f"tokens must be ids in [0, vocab_size) = [0, {c.vocab_size}), "
                f"got values in [{int(tokens.min())}, {int(tokens.max())}]"
            )
        if self.input_positional is not None and tokens.shape[1] > c.max_len:
            raise ValueError(
                f"tokens has T = {tokens.shape[1]} positions but config.max_len = {c.max_len} and the "
                f"{c.positional!r} encoding has no rows beyond it; build the model with max_len >= {tokens.shape[1]}"
            )

    def _run(self, tokens: torch.Tensor, need_weights: bool):
        self._check_tokens(tokens)
        x = self.embed(tokens.long()) * self.embed_scale  # (B, T, d)
        if self.input_positional is not None:
            x = self.input_positional(x)  # (B, T, d) + P[0:T]
        x = self.dropout(x)
        weights = []
        for layer in self.layers:
            x, w = layer(x, need_weights=need_weights)  # (B, T, d), (B, H, T, T) or None
            weights.append(w)
        logits = F.linear(self.norm(x), self.output_weight())  # (B, T, V)
        return logits, weights

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Next-token logits. Shape: tokens (B, T) -> (B, T, vocab_size)."""
        return self._run(tokens, need_weights=False)[0]

    def forward_with_attention(self, tokens: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and every layer's causal self-attention weights (per head, rows sum to 1).

        Shape: tokens (B, T) -> logits (B, T, vocab_size), list of num_layers (B, H, T, T).
        """
        return self._run(tokens, need_weights=True)

    def num_parameters(self) -> int:
        """Distinct trainable parameters (a shared T5 table counts once)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
