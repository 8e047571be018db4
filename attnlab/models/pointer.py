"""The copy mechanism of the pointer-generator network (See, Liu & Manning 2017).

"Get To The Point: Summarization with Pointer-Generator Networks" (ACL 2017), §2.2.
At each decoder step ``t`` a soft switch ``p_gen`` chooses between generating a token
from the vocabulary and copying a source token by pointing at it with the attention
distribution ``a^t`` (eqs. 8-9):

    p_gen = sigmoid(w^T f_t + b),            f_t: what the readout saw (state, context, input)
    P(w)  = p_gen P_vocab(w) + (1 - p_gen) sum_{j: x_j = w} a^t_j

The source and the summary share one subword vocabulary here, so every source token
already has an id in ``P_vocab``'s support and no extended (per-article OOV) vocabulary
is needed: the copy distribution is a ``scatter_add`` of the attention weights onto the
source ids.

Two composable pieces:

- :func:`pointer_log_probs`: the mixture above, pure math, any leading batch dims.
- :class:`PointerGenerator`: wraps any encoder-decoder that offers ``decode_features`` /
  ``decode_step_features`` / ``readout_feature_size`` (:class:`~attnlab.models.transformer.Transformer`,
  :class:`~attnlab.models.rnnsearch.RNNSearch`) and follows the
  :class:`~attnlab.models.decoding.Seq2seqModel` protocol. Its "logits" are the final
  log-probabilities ``log P(w)``: ``log_softmax`` leaves them unchanged, so cross-entropy,
  :func:`~attnlab.models.decoding.greedy_decode` and
  :func:`~attnlab.models.decoding.beam_search` work on them as they are.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_tensor, fmt_shape
from .decoding import check_index, check_source

__all__ = ["pointer_log_probs", "CopyGate", "PointerGenerator", "PointerMemory"]


def pointer_log_probs(
    vocab_logits: torch.Tensor,
    attention: torch.Tensor,
    src_ids: torch.Tensor,
    p_gen: torch.Tensor,
    *,
    eps: float | None = None,
) -> torch.Tensor:
    """``log(p_gen softmax(logits) + (1 - p_gen) scatter_add(a, src_ids))`` (See et al. 2017, eq. 9).

    Args:
        vocab_logits: generator logits over the vocabulary.
        attention: attention weights over the source positions (rows sum to 1 over real
            tokens, 0 on padding).
        src_ids: the source token ids, in ``[0, V)``.
        p_gen: the generation probability in [0, 1], with or without a trailing 1.
        eps: floor added inside the log so a token with probability 0 gives a finite
            log-probability (default: the smallest normal number of the dtype).

    Shape:
        vocab_logits (..., T, V), attention (..., T, S), src_ids (..., S),
        p_gen (..., T) or (..., T, 1) -> (..., T, V). The leading dims broadcast.

    Returns:
        Log-probabilities; ``exp`` of each row sums to 1 (up to ``eps * V``) when the
        attention row sums to 1.
    """
    check_tensor(vocab_logits, "vocab_logits", min_ndim=2)
    check_tensor(attention, "attention", min_ndim=2)
    check_tensor(p_gen, "p_gen", min_ndim=1)
    if not isinstance(src_ids, torch.Tensor) or src_ids.dtype.is_floating_point or src_ids.dtype == torch.bool:
        raise TypeError(f"src_ids must be an integer torch.Tensor of token ids (..., S), got "
                        f"{getattr(src_ids, 'dtype', type(src_ids).__name__)}")
    T, V = vocab_logits.shape[-2:]
    S = attention.shape[-1]
    if attention.shape[-2] != T:
        raise ValueError(f"attention must have shape (..., T, S) with T={T} (from vocab_logits "
                         f"{fmt_shape(vocab_logits.shape)}), got {fmt_shape(attention.shape)}")
    if src_ids.dim() < 1 or src_ids.shape[-1] != S:
        raise ValueError(f"src_ids must have shape (..., S) with S={S} (from attention {fmt_shape(attention.shape)}), "
                         f"got {fmt_shape(src_ids.shape)}")
    if p_gen.shape[-1] != 1 or p_gen.dim() < 2 or p_gen.shape[-2] != T:
        if p_gen.shape[-1] == T:
            p_gen = p_gen.unsqueeze(-1)  # (..., T, 1)
        else:
            raise ValueError(f"p_gen must have shape (..., T) or (..., T, 1) with T={T}, got {fmt_shape(p_gen.shape)}")
    if src_ids.numel() and (int(src_ids.min()) < 0 or int(src_ids.max()) >= V):
        raise ValueError(f"src_ids holds ids in [{int(src_ids.min())}, {int(src_ids.max())}], outside the "
                         f"vocabulary [0, V={V}) of vocab_logits")
    dtype = torch.promote_types(vocab_logits.dtype, attention.dtype)
    # bf16/fp16 would round small copy masses away: mix in at least float32.
    work = torch.promote_types(dtype, torch.float32)
    p_vocab = F.softmax(vocab_logits.to(work), dim=-1)  # (..., T, V)
    p_gen = p_gen.to(work)
    batch = torch.broadcast_shapes(p_vocab.shape[:-2], attention.shape[:-2], src_ids.shape[:-1])
    copy_mass = ((1.0 - p_gen) * attention.to(work)).expand(*batch, T, S)  # (..., T, S)
    index = src_ids.long()[..., None, :].expand(*batch, T, S)  # (..., T, S): the vocab id each weight lands on
    copy = torch.zeros(*batch, T, V, dtype=work, device=p_vocab.device).scatter_add(-1, index, copy_mass)  # (..., T, V)
    mixed = p_gen * p_vocab + copy  # (..., T, V)
    floor = torch.finfo(work).tiny if eps is None else float(eps)
    return torch.log(mixed + floor).to(dtype)


class CopyGate(nn.Module):
    """``p_gen = sigmoid(w^T f + b)`` (See et al. 2017, eq. 8, with ``f = [s_t; h*_t; x_t]``
    the readout's input). Shape: (..., F) -> (..., 1)."""

    def __init__(self, feature_size: int):
        super().__init__()
        self.proj = nn.Linear(feature_size, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.proj(features))


class PointerMemory(NamedTuple):
    """base: the wrapped model's memory; src: (B, S) source ids (where copies land)."""

    base: object
    src: torch.Tensor


class PointerGenerator(nn.Module):
    """A pointer-generator around an attention encoder-decoder (See et al. 2017).

    The wrapped ``base`` model must share one vocabulary between source and target
    (``src_vocab == tgt_vocab``) and provide ``readout_feature_size``,
    ``decode_features(memory, tgt_in)`` and ``decode_step_features(memory, state, prev)``.
    Follows the :class:`~attnlab.models.decoding.Seq2seqModel` protocol; ``forward`` and
    ``decode_step`` return log-probabilities of the copy mixture in place of logits.

    Shape:
        src (B, S), src_lengths (B,), tgt_in (B, T) -> log-probabilities (B, T, V);
        :meth:`forward_with_attention` also gives the attention (B, T, S) and ``p_gen`` (B, T).
        decode_step: prev_tokens (B,) -> log-probabilities (B, V), state, attention (B, S).
    """

    def __init__(self, base: nn.Module):
        super().__init__()
        needed = ("encode", "init_state", "reorder", "decode_features", "decode_step_features", "readout_feature_size")
        missing = [n for n in needed if not hasattr(base, n)]
        if not isinstance(base, nn.Module) or missing:
            raise TypeError(f"base must be an encoder-decoder nn.Module with {', '.join(needed)}; "
                            f"{type(base).__name__} lacks {', '.join(missing) or 'nn.Module'}")
        c = base.config
        if c.src_vocab != c.tgt_vocab:
            raise ValueError(f"base must share one vocabulary (src_vocab == tgt_vocab) so that source tokens can be "
                             f"copied, got src_vocab={c.src_vocab}, tgt_vocab={c.tgt_vocab}")
        self.base = base
        self.config = c
        self.gate = CopyGate(base.readout_feature_size)

    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor) -> PointerMemory:
        check_source(src, src_lengths, self.config.src_vocab)
        return PointerMemory(self.base.encode(src, src_lengths), src)

    def init_state(self, memory: PointerMemory):
        return self.base.init_state(memory.base)

    def forward_with_attention(self, src: torch.Tensor, src_lengths: torch.Tensor, tgt_in: torch.Tensor):
        """Teacher-forced log-probabilities, attention and ``p_gen``.

        Shape: (B, S), (B,), (B, T) -> (B, T, V), (B, T, S), (B, T).
        """
        memory = self.encode(src, src_lengths)
        logits, weights, features = self.base.decode_features(memory.base, tgt_in)  # (B,T,V), (B,T,S), (B,T,F)
        p_gen = self.gate(features)  # (B, T, 1)
        return pointer_log_probs(logits, weights, src, p_gen), weights, p_gen[..., 0]

    def forward(self, src: torch.Tensor, src_lengths: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher-forced log-probabilities. Shape: (B, S), (B,), (B, T) -> (B, T, V)."""
        return self.forward_with_attention(src, src_lengths, tgt_in)[0]

    def decode_step(self, memory: PointerMemory, state, prev_tokens: torch.Tensor):
        """One step. Shape: prev_tokens (B,) -> log-probabilities (B, V), state, attention (B, S)."""
        logits, state, weights, features = self.base.decode_step_features(memory.base, state, prev_tokens)
        p_gen = self.gate(features)  # (B, 1)
        logp = pointer_log_probs(logits[:, None], weights[:, None], memory.src, p_gen[:, None])  # (B, 1, V)
        return logp[:, 0], state, weights

    def reorder(self, memory: PointerMemory, state, index: torch.Tensor):
        check_index(index, memory.src.shape[0])
        base, state = self.base.reorder(memory.base, state, index)
        return PointerMemory(base, memory.src.index_select(0, index.long().to(memory.src.device))), state
