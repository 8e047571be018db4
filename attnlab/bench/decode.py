"""The ``decode`` benchmark: greedy generation with a KV cache vs recomputing the prefix.

A minimal pre-norm decoder-only Transformer (Vaswani et al. 2017 with the pre-norm
placement of Xiong et al. 2020), built from :class:`attnlab.nn.MultiheadAttention` and
an ``nn.Linear`` MLP, random-initialized: the benchmark times generation, not quality.

- cached: the prompt goes through once, filling one :class:`attnlab.nn.kv_cache.KVCache`
  per layer; each later step feeds only the newest token, which attends to the cache.
- recompute: each step runs the whole sequence so far with ``is_causal=True`` and
  keeps the last position's logits. Step ``t`` costs ``O(t)`` projections and MLPs
  and ``O(t^2)`` attention instead of ``O(1)`` and ``O(t)``.

Both produce the same logits up to float rounding.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

__all__ = ["TinyDecoder", "generate", "build_decode"]


class _Block(nn.Module):
    """``x + Attn(LN(x))`` then ``x + MLP(LN(x))``."""

    def __init__(self, d: int, heads: int, ff: int) -> None:
        from attnlab.nn.multihead import MultiheadAttention

        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = MultiheadAttention(d, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, ff), nn.GELU(), nn.Linear(ff, d))

    def forward(self, x: torch.Tensor, cache=None) -> torch.Tensor:
        y = self.ln1(x)  # (B, T, d)
        if cache is None:
            a, _ = self.attn(y, y, y, need_weights=False, is_causal=True)
        else:
            a, _ = self.attn(y, y, y, need_weights=False, kv_cache=cache)
        x = x + a
        return x + self.mlp(self.ln2(x))  # (B, T, d)


class TinyDecoder(nn.Module):
    """Token + learned position embeddings, ``layers`` pre-norm blocks, final norm, LM head.

    Shape: tokens (B, T) long -> logits (B, T, vocab).
    """

    def __init__(self, vocab: int, d: int, heads: int, ff: int, layers: int, max_len: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(max_len, d)
        self.blocks = nn.ModuleList(_Block(d, heads, ff) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, tokens: torch.Tensor, caches=None, start: int = 0) -> torch.Tensor:
        T = tokens.shape[1]
        x = self.tok(tokens) + self.pos(torch.arange(start, start + T))  # (B, T, d)
        for i, block in enumerate(self.blocks):
            x = block(x, None if caches is None else caches[i])
        return self.head(self.ln_f(x))  # (B, T, vocab)


@torch.no_grad()
def generate(model: TinyDecoder, prompt: torch.Tensor, tokens: int, *, cached: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy decoding of ``tokens`` new tokens after ``prompt``.

    Shape: prompt (B, P) long -> (generated (B, tokens) long, step logits (B, tokens, vocab)).
    """
    seq = prompt
    logits_per_step = []
    if cached:
        from attnlab.nn.kv_cache import KVCache

        caches = [KVCache(max_len=prompt.shape[1] + tokens) for _ in model.blocks]
        logits = model(prompt, caches, 0)[:, -1]  # (B, vocab)
        for t in range(tokens):
            nxt = logits.argmax(-1, keepdim=True)  # (B, 1)
            logits_per_step.append(logits)
            seq = torch.cat([seq, nxt], dim=1)
            if t + 1 < tokens:
                logits = model(nxt, caches, seq.shape[1] - 1)[:, -1]
    else:
        for _ in range(tokens):
            logits = model(seq)[:, -1]  # (B, vocab): the whole prefix again
            nxt = logits.argmax(-1, keepdim=True)  # (B, 1)
            logits_per_step.append(logits)
            seq = torch.cat([seq, nxt], dim=1)
    return seq[:, prompt.shape[1] :], torch.stack(logits_per_step, dim=1)


def build_decode(
    layers: int,
    d: int,
    heads: int,
    ff: int,
    vocab: int,
    prompt: int,
    tokens: int,
    cached: bool,
    batch: int = 1,
    threads: int | None = None,
) -> Callable[[], torch.Tensor]:
    """``step()`` generates ``tokens`` tokens greedily (KV cache if ``cached``).

    ``threads`` sets ``torch.set_num_threads`` for the process (the harness runs each
    row in its own subprocess), to show what thread synchronization costs per token.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    model = TinyDecoder(vocab, d, heads, ff, layers, max_len=prompt + tokens).eval()
    start = torch.randint(0, vocab, (batch, prompt))  # (B, P)

    def step() -> torch.Tensor:
        return generate(model, start, tokens, cached=cached)[0]

    return step
