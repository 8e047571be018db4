"""Listen, Attend and Spell: shapes, masking, the location-aware score against a
hand-written loop, decoding, bad input."""

from __future__ import annotations

import pytest
import torch

from attnlab.models.las import LAS, ContentAttention, LASConfig, Listener, LocationAwareAttention, frame_mask

SMALL = dict(vocab_size=11, n_mels=7, listener_hidden=5, pyramid_layers=2, speller_hidden=9, emb_size=3,
             attn_hidden=6, location_channels=4, location_kernel=3, dropout=0.0)


def _inputs(B=3, T=13, M=7, L=5, V=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(B, T, M, generator=g)
    lengths = torch.tensor([13, 5, 9][:B])
    tgt = torch.randint(3, V, (B, L), generator=g)
    return feats, lengths, tgt


def test_forward_backward_shapes():
    torch.manual_seed(0)
    m = LAS(LASConfig(**SMALL))
    feats, lengths, tgt = _inputs()
    logits, weights, enc_lengths = m.forward_with_attention(feats, lengths, tgt)
    # 13 -> 7 -> 4 frames; 5 -> 3 -> 2; 9 -> 5 -> 3.
    assert enc_lengths.tolist() == [4, 2, 3]
    assert logits.shape == (3, 5, 11) and weights.shape == (3, 5, 4)
    logits.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters() if p.requires_grad)


@pytest.mark.parametrize("attention", ["location", "additive"])
def test_attention_rows_sum_to_one_over_valid_frames(attention):
    torch.manual_seed(1)
    m = LAS(LASConfig(**{**SMALL, "attention": attention}))
    feats, lengths, tgt = _inputs()
    _, w, enc_lengths = m.forward_with_attention(feats, lengths, tgt)
    valid = frame_mask(enc_lengths, w.shape[-1])[:, None, :].expand_as(w)  # (B, L, T')
    assert (w[~valid] == 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 5))


def test_padding_does_not_change_an_utterance():
    torch.manual_seed(2)
    m = LAS(LASConfig(**SMALL)).eval()
    feats, lengths, tgt = _inputs()
    full, _, _ = m.forward_with_attention(feats, lengths, tgt)
    alone, _, _ = m.forward_with_attention(feats[1:2, :5], lengths[1:2], tgt[1:2])
    torch.testing.assert_close(full[1:2], alone, atol=1e-5, rtol=1e-5)


def test_listener_halves_time_per_pyramid_layer():
    lis = Listener(7, 5, 3)
    h, lens = lis(torch.randn(2, 17, 7), torch.tensor([17, 8]))
    assert h.shape == (2, 3, 10) and lens.tolist() == [3, 1]  # 17 -> 9 -> 5 -> 3, 8 -> 4 -> 2 -> 1
    assert (h[1, 1:] == 0).all()


def test_location_aware_attention_matches_hand_written_loop():
    torch.manual_seed(3)
    att = LocationAwareAttention(5, 7, 6, channels=3, kernel_size=3).double()
    B, T = 2, 4
    q = torch.randn(B, 5, dtype=torch.float64)
    k = torch.randn(B, T, 7, dtype=torch.float64)
    prev = torch.softmax(torch.randn(B, T, dtype=torch.float64), -1)
    mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
    out, w = att(q, k, prev_weights=prev, mask=mask)
    a = att.additive
    F = att.conv.weight[:, 0]  # (channels, kernel)
    U = att.location.weight  # (hidden, channels)
    ref_w = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        e = []
        for j in range(T):
            # f_ij = sum_r F[:, r] a_{i-1, j + r - 1} (zero outside the utterance's frames array)
            f = sum(F[:, r] * prev[b, j + r - 1] for r in range(3) if 0 <= j + r - 1 < T)
            e.append(a.v @ torch.tanh(a.w_q @ q[b] + a.w_k @ k[b, j] + U @ f + a.bias))
        e = torch.stack(e).masked_fill(~mask[b], float("-inf"))
        ref_w[b] = torch.softmax(e, 0)
    torch.testing.assert_close(w, ref_w)
    torch.testing.assert_close(out, torch.einsum("bt,btd->bd", ref_w, k))


def test_location_attention_gradcheck():
    torch.manual_seed(4)
    att = LocationAwareAttention(3, 5, 4, channels=2, kernel_size=3).double()
    q = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 5, 5, dtype=torch.float64, requires_grad=True)
    prev = torch.rand(2, 5, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    assert torch.autograd.gradcheck(lambda q, k, p: att(q, k, prev_weights=p, mask=mask)[0], (q, k, prev))


def test_content_attention_ignores_previous_weights():
    torch.manual_seed(5)
    att = ContentAttention(3, 5, 4)
    q, k = torch.randn(2, 3), torch.randn(2, 7, 5)
    a = att(q, k, prev_weights=torch.rand(2, 7))
    b = att(q, k, prev_weights=None)
    torch.testing.assert_close(a.weights, b.weights)


def test_greedy_and_beam_decoding():
    torch.manual_seed(6)
    m = LAS(LASConfig(**SMALL)).eval()
    feats, lengths, _ = _inputs()
    hyps = m.greedy_decode(feats, lengths, max_len=6)
    assert len(hyps) == 3
    for h, n in zip(hyps, [4, 2, 3]):
        assert len(h.tokens) <= 7 and all(t != m.config.eos_id for t in h.tokens)
        assert h.attention.shape[1] == n and h.attention.shape[0] in (len(h.tokens), len(h.tokens) + 1)
        torch.testing.assert_close(h.attention.sum(-1), torch.ones(h.attention.shape[0]))
    beams = m.beam_search(feats, lengths, beam_size=1, max_len=6)
    assert [b.tokens for b in beams] == [h.tokens for h in hyps]  # beam 1 is greedy
    wide = m.beam_search(feats, lengths, beam_size=3, max_len=6)
    assert len(wide) == 3


def test_bad_input():
    m = LAS(LASConfig(**SMALL))
    feats, lengths, tgt = _inputs()
    with pytest.raises(ValueError, match=r"features must have shape \(B, T, n_mels=7\)"):
        m(feats[..., :4], lengths, tgt)
    with pytest.raises(ValueError, match=r"lengths must be in \[1, T=13\]"):
        m(feats, torch.tensor([14, 2, 2]), tgt)
    with pytest.raises(TypeError, match="lengths must be an int64 tensor"):
        m(feats, lengths.float(), tgt)
    with pytest.raises(ValueError, match=r"tgt_in must have shape \(B=3, L\)"):
        m(feats, lengths, tgt[:2])
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        LASConfig(**{**SMALL, "location_kernel": 4}) and LAS(LASConfig(**{**SMALL, "location_kernel": 4}))
    with pytest.raises(ValueError, match="unknown attention 'dot'; valid attentions: additive, location"):
        LASConfig(**{**SMALL, "attention": "dot"})
    with pytest.raises(ValueError, match="eos_id must be < vocab_size=11"):
        LASConfig(**{**SMALL, "eos_id": 11})
    att = LocationAwareAttention(3, 5, 4)
    with pytest.raises(ValueError, match=r"prev_weights must have shape \(B, Tk\) = \(2, 7\)"):
        att(torch.randn(2, 3), torch.randn(2, 7, 5), prev_weights=torch.rand(2, 6))
