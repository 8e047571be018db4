"""Greedy decoding and beam search against independent references: re-running the
teacher-forced forward on growing prefixes, exhaustive enumeration of every output,
and a hand-built model on which greedy decoding is provably worse."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnlab.models.decoding import Decoded, beam_search, greedy_decode, length_penalty_gnmt
from attnlab.models.registry import build_model

SRC_V, TGT_V, PAD, BOS, EOS = 11, 7, 0, 1, 2

VARIANTS = {
    "seq2seq": ("seq2seq", dict(emb_size=6, hidden_size=10)),
    "rnnenc": ("rnnenc", dict(emb_size=6, hidden_size=10)),
    "rnnsearch": ("rnnsearch", dict(emb_size=6, enc_hidden=5, dec_hidden=9, attn_hidden=4)),
    "luong": ("luong", dict(emb_size=6, hidden_size=10, num_layers=2, mode="local-p", window=2)),
    "transformer": ("transformer", dict(d_model=12, num_heads=3, num_encoder_layers=1, num_decoder_layers=2, ffn_dim=10)),
}


def make(variant: str, tgt_vocab: int = TGT_V, seed: int = 0):
    name, sizes = VARIANTS[variant]
    torch.manual_seed(seed)
    return build_model(name, src_vocab=SRC_V, tgt_vocab=tgt_vocab, dropout=0.0, **sizes).eval()


def source(seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([5, 2, 4])
    src = torch.randint(3, SRC_V, (3, 5), generator=g)
    src[torch.arange(5)[None, :] >= lengths[:, None]] = PAD
    return src, lengths


def log_probs(model, src, lengths, hyps: list[tuple[list[int], bool]]) -> list[float]:
    """log p(tokens [+ eos] | src) of each (tokens, finished) hypothesis, by teacher forcing
    (one sentence, no padding; the hypotheses go as one padded batch)."""
    targets = [tokens + ([EOS] if finished else []) for tokens, finished in hyps]
    T = max(1, max(len(t) for t in targets))
    tgt_in = torch.full((len(hyps), T), PAD)
    for j, t in enumerate(targets):
        tgt_in[j, : len(t)] = torch.tensor([BOS] + t[:-1]) if t else torch.tensor([], dtype=torch.long)
    with torch.no_grad():
        n = len(hyps)
        logp = F.log_softmax(model(src.expand(n, -1), lengths.expand(n), tgt_in).double(), -1)  # (n, T, V)
    return [float(logp[j, torch.arange(len(t)), torch.tensor(t, dtype=torch.long)].sum()) for j, t in enumerate(targets)]


def log_prob(model, src, lengths, tokens: list[int], finished: bool) -> float:
    return log_probs(model, src, lengths, [(tokens, finished)])[0]


# --------------------------------------------------------------------------- greedy


@pytest.mark.parametrize("variant", ["rnnsearch", "transformer", "seq2seq"])
def test_greedy_equals_argmax_of_the_teacher_forced_forward(variant):
    model = make(variant)
    src, lengths = source()
    out = greedy_decode(model, src, lengths, BOS, EOS, max_len=6)
    assert isinstance(out, Decoded)
    for i in range(3):
        s, l = src[i : i + 1, : lengths[i]], lengths[i : i + 1]
        prefix = [BOS]
        for _ in range(6):  # the reference: recompute everything for every prefix
            with torch.no_grad():
                nxt = int(model(s, l, torch.tensor([prefix]))[0, -1].argmax())
            if nxt == EOS:
                break
            prefix.append(nxt)
        finished = len(prefix) - 1 < 6
        assert out.tokens[i] == prefix[1:]
        assert out.scores[i] == pytest.approx(log_prob(model, s, l, prefix[1:], finished), abs=1e-5)


def test_greedy_attention_rows_are_the_teacher_forced_weights():
    model = make("rnnsearch")
    src, lengths = source()
    out = greedy_decode(model, src, lengths, BOS, EOS, max_len=6)
    for i in range(3):
        n, li = len(out.tokens[i]), int(lengths[i])
        assert out.attention[i].shape == (n, li)
        if n:
            tgt_in = torch.tensor([[BOS] + out.tokens[i][:-1]]) if n > 1 else torch.tensor([[BOS]])
            with torch.no_grad():
                _, w = model.forward_with_attention(src[i : i + 1, :li], lengths[i : i + 1], tgt_in)
            torch.testing.assert_close(out.attention[i], w[0, :n], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(out.attention[i].sum(-1), torch.ones(n), atol=1e-5, rtol=0)


def test_greedy_respects_max_len_and_restores_training_mode():
    model = make("transformer").train()
    src, lengths = source()
    out = greedy_decode(model, src, lengths, BOS, EOS, max_len=2)
    assert all(len(t) <= 2 for t in out.tokens)
    assert model.training  # put back as it came
    model.eval()
    assert greedy_decode(model, src, lengths, BOS, EOS, max_len=2).tokens == out.tokens  # ran in eval mode


# --------------------------------------------------------------------------- beam search


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_beam_size_one_is_greedy(variant):
    model = make(variant)
    src, lengths = source()
    greedy = greedy_decode(model, src, lengths, BOS, EOS, max_len=7)
    beam = beam_search(model, src, lengths, BOS, EOS, beam_size=1, max_len=7, length_penalty=1.0)
    assert beam.tokens == greedy.tokens
    assert beam.scores == pytest.approx(greedy.scores, abs=1e-9)
    for a, b in zip(beam.attention, greedy.attention):
        if a is None:
            assert b is None
        else:
            torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("alpha", [0.0, 1.5])
def test_wide_beam_finds_the_exhaustive_optimum(alpha):
    """With K above the number of prefixes nothing is pruned: beam search must return
    the argmax of log p(y|x) / lp(|y|) over EVERY output of at most max_len tokens."""
    V, max_len = 5, 3
    model = make("rnnsearch", tgt_vocab=V, seed=6)
    with torch.no_grad():  # sharper distributions, eos less likely: the optimum is not [] or greedy's
        model.readout.out.weight.mul_(4.0)
        model.readout.out.bias[EOS] = -2.0
    src, lengths = source()
    greedy = greedy_decode(model, src, lengths, BOS, EOS, max_len=max_len)
    out = beam_search(model, src, lengths, BOS, EOS, beam_size=128, max_len=max_len, length_penalty=alpha)
    others = [t for t in range(V) if t != EOS]
    hyps = [(list(seq), n < max_len) for n in range(max_len + 1) for seq in itertools.product(others, repeat=n)]
    chosen = set()
    for i in range(3):
        s, l = src[i : i + 1, : lengths[i]], lengths[i : i + 1]
        scores = log_probs(model, s, l, hyps)  # every output scored in one teacher-forced batch
        norm = [sc / length_penalty_gnmt(len(t) + int(f), alpha) for sc, (t, f) in zip(scores, hyps)]
        best = max(range(len(hyps)), key=norm.__getitem__)
        assert out.tokens[i] == hyps[best][0]
        assert out.scores[i] == pytest.approx(scores[best], abs=1e-5)
        chosen.add(tuple(out.tokens[i]))
    assert len(chosen) > 1  # the sentences do not all share one trivial answer
    assert out.tokens != greedy.tokens  # and the search beats greedy somewhere


class TableModel(nn.Module):
    """A protocol model whose next-token distribution depends on the previous token only:
    after bos, a (0.55) or b (0.45); after a, a flat a/b/eos; after b, eos (0.97).
    Greedy takes a, then keeps taking a (0.34 > 0.33): log p ~ -3.8 for 4 tokens;
    the best output is [b] with log p = log 0.45 + log 0.97 ~ -0.83."""

    A, B = 3, 4

    def __init__(self):
        super().__init__()
        table = torch.full((5, 5), 1e-6)
        table[BOS, self.A], table[BOS, self.B] = 0.55, 0.45
        table[self.A, self.A], table[self.A, self.B], table[self.A, EOS] = 0.34, 0.33, 0.33
        table[self.B, EOS], table[self.B, self.A] = 0.97, 0.03
        table[EOS, EOS] = table[PAD, EOS] = 1.0
        self.register_buffer("log_table", table.log())
        self.config = None

    def encode(self, src, src_lengths):
        return src

    def init_state(self, memory):
        return None

    def decode_step(self, memory, state, prev_tokens):
        return self.log_table[prev_tokens], state, None

    def reorder(self, memory, state, index):
        return memory.index_select(0, index), state


def test_beam_search_beats_greedy_on_a_constructed_model():
    model = TableModel()
    src, lengths = torch.tensor([[5, 6]]), torch.tensor([2])
    greedy = greedy_decode(model, src, lengths, BOS, EOS, max_len=4)
    beam = beam_search(model, src, lengths, BOS, EOS, beam_size=2, max_len=4, length_penalty=0.0)
    A = TableModel.A
    assert greedy.tokens == [[A, A, A, A]]
    assert greedy.scores[0] == pytest.approx(math.log(0.55) + 3 * math.log(0.34), abs=1e-5)
    assert beam.tokens == [[TableModel.B]]
    assert beam.scores[0] == pytest.approx(math.log(0.45) + math.log(0.97), abs=1e-5)
    assert beam.scores[0] > greedy.scores[0] + 2.5
    assert beam.attention == [None]


@pytest.mark.parametrize("variant", ["rnnsearch", "transformer", "luong"])
def test_beam_scores_and_attention_match_teacher_forcing(variant):
    model = make(variant)
    src, lengths = source()
    out = beam_search(model, src, lengths, BOS, EOS, beam_size=3, max_len=6, length_penalty=0.6)
    for i in range(3):
        s, l = src[i : i + 1, : lengths[i]], lengths[i : i + 1]
        toks = out.tokens[i]
        finished = len(toks) < 6
        assert out.scores[i] == pytest.approx(log_prob(model, s, l, toks, finished), abs=1e-5)
        n, li = len(toks), int(lengths[i])
        assert out.attention[i].shape == (n, li)
        if n:
            with torch.no_grad():
                _, w = model.forward_with_attention(s, l, torch.tensor([[BOS] + toks[:-1]]))
            torch.testing.assert_close(out.attention[i], w[0], atol=1e-5, rtol=1e-5)


def test_batched_beam_search_equals_one_sentence_at_a_time():
    model = make("transformer")
    src, lengths = source()
    batched = beam_search(model, src, lengths, BOS, EOS, beam_size=3, max_len=5)
    for i in range(3):
        alone = beam_search(model, src[i : i + 1, : lengths[i]], lengths[i : i + 1], BOS, EOS, beam_size=3, max_len=5)
        assert alone.tokens[0] == batched.tokens[i]
        assert alone.scores[0] == pytest.approx(batched.scores[i], abs=1e-5)
        torch.testing.assert_close(alone.attention[0], batched.attention[i], atol=1e-5, rtol=1e-5)


def test_length_penalty_is_gnmt():
    assert length_penalty_gnmt(1, 0.6) == 1.0
    assert length_penalty_gnmt(7, 1.0) == 2.0
    assert length_penalty_gnmt(13, 0.5) == pytest.approx(math.sqrt(3.0))
    assert length_penalty_gnmt(30, 0.0) == 1.0


# --------------------------------------------------------------------------- bad input


def test_decoders_reject_bad_arguments():
    model = make("rnnenc")
    src, lengths = source()
    with pytest.raises(ValueError, match="beam_size must be > 0"):
        beam_search(model, src, lengths, BOS, EOS, beam_size=0)
    with pytest.raises(ValueError, match="length_penalty must be a float >= 0"):
        beam_search(model, src, lengths, BOS, EOS, length_penalty=-1.0)
    with pytest.raises(ValueError, match="max_len must be > 0"):
        greedy_decode(model, src, lengths, BOS, EOS, max_len=0)
    with pytest.raises(ValueError, match="eos_id must be >= 0"):
        greedy_decode(model, src, lengths, BOS, -2)
    with pytest.raises(ValueError, match="src_lengths must lie"):
        greedy_decode(model, src, lengths + 1, BOS, EOS)
    with pytest.raises(TypeError, match="lacks encode, init_state, decode_step, reorder"):
        greedy_decode(nn.Linear(2, 2), src, lengths, BOS, EOS)
