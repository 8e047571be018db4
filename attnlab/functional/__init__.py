"""The readable reference of every mechanism: pure functions, no parameters."""

from .attend import AttentionResult, attend
from .masks import (
    causal_mask,
    from_key_padding_mask,
    lengths_to_mask,
    local_p_window,
    mask_and,
    mask_or,
    padding_mask,
    window_mask,
)
from .normalizers import (
    NORMALIZERS,
    entmax15,
    get_normalizer,
    gumbel_softmax,
    hard_argmax,
    relu_normalizer,
    sigmoid_normalizer,
    softmax,
    sparsemax,
)
from .scores import SCORES, additive_score, additive_score_from_projections, concat_score, dot_score, general_score, get_score, scaled_dot_score
from .positional import (
    alibi_bias,
    alibi_bias_from_relative,
    alibi_slopes,
    apply_rope,
    pairwise_relative,
    relative_positions,
    rope_frequencies,
    shaw_relative_index,
    shaw_scores,
    shaw_table_scores,
    sinusoidal_table,
    t5_bias,
    t5_bias_from_relative,
    t5_relative_bucket,
)
