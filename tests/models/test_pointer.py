"""Copy mechanism (See et al. 2017): mixture math, gradients, wrapped models."""

from __future__ import annotations


import pytest
import torch

from attnlab.models.decoding import beam_search, greedy_decode
from attnlab.models.pointer import CopyGate, PointerGenerator, pointer_log_probs
from attnlab.models.rnnsearch import RNNSearch, RNNSearchConfig
from attnlab.models.transformer import Transformer, TransformerConfig


def reference(logits, attn, src, p_gen):
    """Loop version of eq. 9 for (T, V), (T, S), (S,), (T,)."""
    T, V = logits.shape
    out = torch.zeros(T, V, dtype=torch.float64)
    pv = torch.softmax(logits.double(), -1)
    for t in range(T):
        for w in range(V):
            copy = sum(float(attn[t, j]) for j in range(src.shape[0]) if int(src[j]) == w)
            out[t, w] = float(p_gen[t]) * pv[t, w] + (1 - float(p_gen[t])) * copy
    return out


def test_hand_computed_case():
    # V = 3, one step; logits 0 -> P_vocab uniform 1/3; source "2 2 0" attended 0.5/0.25/0.25.
    logits = torch.zeros(1, 3)
    attn = torch.tensor([[0.5, 0.25, 0.25]])
    src = torch.tensor([2, 2, 0])
    p = pointer_log_probs(logits, attn, src, torch.tensor([0.4])).exp()
    expected = torch.tensor([[0.4 / 3 + 0.6 * 0.25, 0.4 / 3, 0.4 / 3 + 0.6 * 0.75]])
    torch.testing.assert_close(p, expected, rtol=0, atol=1e-6)


def test_matches_loop_reference_and_sums_to_one():
    g = torch.Generator().manual_seed(0)
    B, T, S, V = 3, 5, 7, 11
    logits = torch.randn(B, T, V, generator=g)
    lengths = torch.tensor([7, 4, 1])
    mask = torch.arange(S)[None] < lengths[:, None]  # (B, S)
    scores = torch.randn(B, T, S, generator=g).masked_fill(~mask[:, None], -1e9)
    attn = torch.softmax(scores, -1) * mask[:, None]
    src = torch.randint(0, V, (B, S), generator=g)
    p_gen = torch.rand(B, T, generator=g)
    logp = pointer_log_probs(logits, attn, src, p_gen)
    assert logp.shape == (B, T, V) and logp.dtype == torch.float32
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(B, T), atol=1e-5, rtol=0)
    for b in range(B):
        torch.testing.assert_close(logp[b].exp().double(), reference(logits[b], attn[b], src[b], p_gen[b]),
                                   atol=1e-6, rtol=1e-5)
    # p_gen (..., T, 1) is the same as (..., T)
    torch.testing.assert_close(pointer_log_probs(logits, attn, src, p_gen[..., None]), logp)


def test_extremes_p_gen():
    g = torch.Generator().manual_seed(1)
    logits, attn = torch.randn(5, 11, generator=g), torch.softmax(torch.randn(5, 7, generator=g), -1)
    src = torch.randint(0, 11, (7,), generator=g)
    torch.testing.assert_close(pointer_log_probs(logits, attn, src, torch.ones(5)).exp(), torch.softmax(logits, -1))
    only_copy = pointer_log_probs(logits, attn, src, torch.zeros(5)).exp()
    assert torch.all(only_copy[:, [w for w in range(11) if w not in src.tolist()]] < 1e-30)
    assert torch.isfinite(pointer_log_probs(logits, attn, src, torch.zeros(5))).all()


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 5, dtype=torch.float64, generator=g, requires_grad=True)
    attn = torch.softmax(torch.randn(3, 7, dtype=torch.float64, generator=g), -1).requires_grad_()
    p_gen = torch.rand(3, dtype=torch.float64, generator=g).requires_grad_()
    src = torch.tensor([0, 4, 4, 2, 1, 0, 3])
    assert torch.autograd.gradcheck(lambda a, b, c: pointer_log_probs(a, b, src, c), (logits, attn, p_gen))


def test_bf16_follows_input():
    out = pointer_log_probs(torch.randn(2, 3, 5, dtype=torch.bfloat16),
                            torch.softmax(torch.randn(2, 3, 7), -1).bfloat16(),
                            torch.randint(0, 5, (2, 7)), torch.rand(2, 3, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


@pytest.mark.parametrize("args, match", [
    ((torch.randn(3, 5), torch.rand(4, 7), torch.zeros(7, dtype=torch.long), torch.rand(3)), "attention"),
    ((torch.randn(3, 5), torch.rand(3, 7), torch.zeros(6, dtype=torch.long), torch.rand(3)), "src_ids"),
    ((torch.randn(3, 5), torch.rand(3, 7), torch.full((7,), 5), torch.rand(3)), r"src_ids holds ids"),
    ((torch.randn(3, 5), torch.rand(3, 7), torch.zeros(7), torch.rand(3)), "src_ids must be an integer"),
    ((torch.randn(3, 5), torch.rand(3, 7), torch.zeros(7, dtype=torch.long), torch.rand(4)), "p_gen"),
    ((torch.zeros(3, 5, dtype=torch.long), torch.rand(3, 7), torch.zeros(7, dtype=torch.long), torch.rand(3)),
     "vocab_logits"),
])
def test_bad_input(args, match):
    with pytest.raises((TypeError, ValueError), match=match):
        pointer_log_probs(*args)


def _models():
    V = 13
    torch.manual_seed(0)
    yield Transformer(TransformerConfig(src_vocab=V, tgt_vocab=V, d_model=16, num_heads=2, num_encoder_layers=1,
                                        num_decoder_layers=2, ffn_dim=32, dropout=0.0, share_embeddings=True))
    yield RNNSearch(RNNSearchConfig(src_vocab=V, tgt_vocab=V, emb_size=8, enc_hidden=6, dec_hidden=10,
                                    attn_hidden=5, dropout=0.0))


@pytest.mark.parametrize("base", list(_models()), ids=["transformer", "rnnsearch"])
def test_wrapped_model_steps_match_forward_and_gradient_flows(base):
    model = PointerGenerator(base).eval()
    g = torch.Generator().manual_seed(3)
    src = torch.randint(4, 13, (3, 7), generator=g)
    lengths = torch.tensor([7, 5, 2])
    src = src.masked_fill(torch.arange(7)[None] >= lengths[:, None], 0)
    tgt_in = torch.randint(1, 13, (3, 5), generator=g)
    logp, attn, p_gen = model.forward_with_attention(src, lengths, tgt_in)
    assert logp.shape == (3, 5, 13) and attn.shape == (3, 5, 7) and p_gen.shape == (3, 5)
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(3, 5), atol=1e-5, rtol=0)
    # cached steps give the teacher-forced distribution
    memory = model.encode(src, lengths)
    state = model.init_state(memory)
    for t in range(5):
        step, state, w = model.decode_step(memory, state, tgt_in[:, t])
        torch.testing.assert_close(step, logp[:, t], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(w, attn[:, t], atol=1e-5, rtol=1e-4)
    # the copy path carries gradient to the gate and to the attention (encoder side)
    model.train()
    loss = -model(src, lengths, tgt_in).gather(-1, tgt_in[..., None]).mean()
    loss.backward()
    assert model.gate.proj.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    # decoders accept it as a Seq2seqModel
    d = greedy_decode(model, src, lengths, 1, 2, max_len=4)
    b = beam_search(model, src, lengths, 1, 2, beam_size=3, max_len=4)
    assert len(d.tokens) == len(b.tokens) == 3 and d.attention[1].shape[1] == 5


def test_copy_can_reach_tokens_the_generator_never_gives():
    """With a closed generator (p_gen -> 0) the output copies the attended source token."""
    base = next(_models())
    model = PointerGenerator(base).eval()
    with torch.no_grad():
        model.gate.proj.weight.zero_()
        model.gate.proj.bias.fill_(-30.0)
    src = torch.tensor([[9, 9, 9, 2]])
    d = greedy_decode(model, src, torch.tensor([4]), 1, 2, max_len=3)
    assert set(d.tokens[0]) <= {9}


def test_gate_and_wrapper_errors():
    assert CopyGate(7)(torch.randn(3, 5, 7)).shape == (3, 5, 1)
    with pytest.raises(ValueError, match="src_vocab == tgt_vocab"):
        PointerGenerator(RNNSearch(RNNSearchConfig(src_vocab=11, tgt_vocab=13, emb_size=4, enc_hidden=4,
                                                   dec_hidden=4, attn_hidden=4)))
    with pytest.raises(TypeError, match="base must be"):
        PointerGenerator(torch.nn.Linear(3, 5))
