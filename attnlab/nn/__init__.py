"""Thin modules: they own the parameters, reshape, and call one function."""

from .additive import AdditiveAttention
from .hard import HARD_ESTIMATORS, HardAttention, HardAttentionOutput
from .kv_cache import KVCache
from .luong import LUONG_MODES, AlignmentScore, LuongAttention
from .multihead import ATTENTION_IMPLS, MultiheadAttention, reference_attention, sdpa_attention
from .positional import (
    POSITIONAL,
    ALiBi,
    LearnedPositionalEmbedding,
    NoPositionalEncoding,
    PositionalScheme,
    RotaryEmbedding,
    ShawRelativePosition,
    SinusoidalPositionalEncoding,
    T5RelativeBias,
    build_positional,
)
from .self_attention import CrossAttention, SelfAttention, SimpleSelfAttention
