"""Fast paths with the same contract as :mod:`attnlab.functional`, each tested against it.

Plain dot-product attention goes to torch's SDPA (see :mod:`attnlab.nn.multihead`); these
cover what SDPA's fast path does not: additive scores, sliding windows without a dense
mask, and score biases (ALiBi, T5, learnable) without a T x T tensor per head.
"""

from .additive import additive_attention
from .bias import DEFAULT_BIAS_BLOCK, TileBias, alibi_bias_fn, biased_attention, t5_bias_fn
from .window import default_window_block, window_attention
