"""Registry of the translation models: build any of them by name, count and budget parameters.

    MODELS["rnnsearch"]                       -> (RNNSearchConfig, RNNSearch)
    build_model("rnnsearch", src_vocab=8000, tgt_vocab=8000, enc_hidden=512)
    model_from_config(model.config)           # a fresh model with the same sizes
    count_parameters(model)                   # trainable, shared weights counted once
    sizes_for_budget("transformer", 8000, 5_000_000)   # sizes giving ~5 M parameters

``sizes_for_budget`` serves the "same parameter budget" comparison across designs
(Bahdanau et al. 2014 give RNNencdec and RNNsearch the same layer sizes; across
architectures as different as an RNN and a Transformer, matching the parameter count is
the fairer control): it scales one width per model (:data:`WIDTHS`) to the value whose
parameter count is closest to the budget.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

from torch import nn

from .._checks import check_positive_int
from .luong_seq2seq import LuongConfig, LuongSeq2seq
from .rnnenc import RNNEncDec, RNNEncDecConfig
from .rnnsearch import RNNSearch, RNNSearchConfig
from .seq2seq_rnn import WordByWordConfig, WordByWordRNN
from .transformer import Transformer, TransformerConfig

__all__ = [
    "MODELS",
    "WIDTHS",
    "build_config",
    "build_model",
    "model_from_config",
    "count_parameters",
    "sizes_for_budget",
]

MODELS: dict[str, tuple[type, type[nn.Module]]] = {
    "seq2seq": (WordByWordConfig, WordByWordRNN),
    "rnnenc": (RNNEncDecConfig, RNNEncDec),
    "rnnsearch": (RNNSearchConfig, RNNSearch),
    "luong": (LuongConfig, LuongSeq2seq),
    "transformer": (TransformerConfig, Transformer),
}


def _lookup(name) -> tuple[type, type[nn.Module]]:
    if not isinstance(name, str) or name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}")
    return MODELS[name]


def build_config(name: str, /, **sizes):
    """The config of model ``name`` with the given fields (the rest keep their defaults).

    Raises ValueError naming the unknown fields and listing the valid ones.
    """
    config_cls, _ = _lookup(name)
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(sizes) - fields)
    if unknown:
        raise ValueError(
            f"unknown field(s) {', '.join(unknown)} for model {name!r}; valid fields: {', '.join(sorted(fields))}"
        )
    required = sorted(
        f.name
        for f in dataclasses.fields(config_cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in sizes
    )
    if required:
        raise ValueError(f"model {name!r} needs field(s) {', '.join(required)}")
    return config_cls(**sizes)


def build_model(name: str, /, **sizes) -> nn.Module:
    """A freshly initialised model ``name`` (a key of :data:`MODELS`) with these config fields."""
    return _lookup(name)[1](build_config(name, **sizes))


def model_from_config(config) -> nn.Module:
    """A fresh model for a config object, or for a dict as ``dataclasses.asdict`` makes one
    (e.g. read back from a checkpoint's ``state.json``); the ``name`` field picks the model."""
    if isinstance(config, dict):
        sizes = dict(config)
        return build_model(sizes.get("name"), **sizes)
    name = getattr(config, "name", None)
    config_cls, model_cls = _lookup(name)
    if not isinstance(config, config_cls):
        raise TypeError(f"config for model {name!r} must be a {config_cls.__name__}, got {type(config).__name__}")
    return model_cls(config)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of parameters (tied / shared tensors counted once)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# --------------------------------------------------------------------------- budgets


def _transformer_width(w: int, fixed: dict) -> dict:
    heads = fixed.get("num_heads", TransformerConfig.num_heads)
    step = 2 * heads if fixed.get("positional", TransformerConfig.positional) == "rope" else heads
    d = step * w  # d_model must split evenly into heads (of even size for RoPE)
    return {"d_model": d, "ffn_dim": 4 * d}


# How one integer width w >= 1 sets each model's sizes (embedding and state sizes
# together, so no part of the model stays tiny while another grows).
WIDTHS: dict[str, Callable[[int, dict], dict]] = {
    "seq2seq": lambda w, fixed: {"emb_size": w, "hidden_size": w},
    "rnnenc": lambda w, fixed: {"emb_size": w, "hidden_size": w},
    "rnnsearch": lambda w, fixed: {
        "emb_size": w, "enc_hidden": w, "dec_hidden": w, "attn_hidden": w, "maxout_size": w
    },
    "luong": lambda w, fixed: {"emb_size": w, "hidden_size": w},
    "transformer": _transformer_width,
}


def sizes_for_budget(name: str, vocab, budget: int, **fixed) -> dict:
    """Config fields that give model ``name`` about ``budget`` trainable parameters.

    Scales the model's width (:data:`WIDTHS`) and picks the width whose count is
    closest to ``budget`` (the count is quadratic in the width: fitted exactly on
    three tiny models, so this is fast for any budget). Fields in ``fixed`` (e.g.
    ``num_layers=2``) are kept as given and win over the width's.

    Args:
        name: a key of :data:`MODELS`.
        vocab: vocabulary size (both sides), or a ``(src_vocab, tgt_vocab)`` pair.
        budget: target number of parameters.
        **fixed: other config fields.

    Returns:
        A dict for ``build_model(name, **sizes)``, with ``src_vocab``/``tgt_vocab``.
    """
    _lookup(name)
    check_positive_int(budget, "budget")
    if isinstance(vocab, (tuple, list)) and len(vocab) == 2:
        src_vocab, tgt_vocab = vocab
    else:
        src_vocab = tgt_vocab = vocab
    check_positive_int(src_vocab, "vocab")
    check_positive_int(tgt_vocab, "vocab")
    base = {"src_vocab": src_vocab, "tgt_vocab": tgt_vocab}

    def sizes(w: int) -> dict:
        return {**base, **WIDTHS[name](w, fixed), **fixed}

    def count(w: int) -> int:
        return count_parameters(build_model(name, **sizes(w)))

    # Every parameter tensor is a product of at most two widths (embeddings V*w,
    # matrices w*w, biases w), so count(w) = a w^2 + b w + c exactly: three tiny
    # models give the curve, a fourth checks it, and no large model is ever built.
    c1, c2, c3, c4 = (count(w) for w in (1, 2, 3, 4))
    second_difference = c3 - 2 * c2 + c1  # = 2a
    a = second_difference // 2
    b = (c2 - c1) - 3 * a
    c = c1 - a - b

    def fit(w: int) -> int:
        return a * w * w + b * w + c

    if second_difference % 2 or fit(4) != c4:
        raise RuntimeError(f"parameter count of {name!r} is not quadratic in its width; cannot budget it")
    if c1 > budget:
        raise ValueError(
            f"budget={budget} is below the smallest {name!r} model with these fields ({c1} parameters at width 1)"
        )
    if a > 0:
        root = (-b + math.sqrt(b * b - 4 * a * (c - budget))) / (2 * a)
    else:
        root = (budget - c) / b if b > 0 else 1.0
    candidates = {max(1, math.floor(root)), max(1, math.ceil(root))}
    best = min(sorted(candidates), key=lambda w: abs(fit(w) - budget))
    return sizes(best)
