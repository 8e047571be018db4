"""Transformer word classifier over conv-subsampled log-mels: shapes, padding masks,
pooling, bad input."""

from __future__ import annotations

import pytest
import torch

from attnlab.models.audio_transformer import (
    AudioTransformer,
    AudioTransformerConfig,
    ConvSubsampling,
    subsampled_lengths,
)

SMALL = dict(num_classes=5, n_mels=11, d_model=12, num_heads=3, num_layers=2, ffn_dim=7, conv_channels=3, dropout=0.0)


def _inputs():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(3, 13, 11, generator=g)
    lengths = torch.tensor([13, 6, 9])
    feats[1, 6:] = 0  # padding frames are zero, as make_batch leaves them
    feats[2, 9:] = 0
    return feats, lengths


def test_subsampling_shapes():
    assert subsampled_lengths(torch.tensor([13, 6, 9, 1, 4])).tolist() == [4, 2, 3, 1, 1]
    y = ConvSubsampling(11, 3, 12)(torch.randn(2, 13, 11), torch.tensor([13, 5]))
    assert y.shape == (2, 4, 12)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_forward_backward_and_weights(pooling):
    torch.manual_seed(1)
    m = AudioTransformer(AudioTransformerConfig(**{**SMALL, "pooling": pooling}))
    feats, lengths = _inputs()
    logits, weights, valid = m.forward_with_attention(feats, lengths)
    extra = 1 if pooling == "cls" else 0
    assert logits.shape == (3, 5)
    assert len(weights) == 2 and weights[0].shape == (3, 3, 4 + extra, 4 + extra)
    assert valid.sum(1).tolist() == [4 + extra, 2 + extra, 3 + extra]
    for w in weights:  # every row sums to 1 over the valid frames, padding keys get 0
        key_valid = valid[:, None, None, :].expand_as(w)
        assert (w[~key_valid] == 0).all()
        torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]))
    logits.sum().backward()
    assert all(p.grad is not None for p in m.parameters())


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_padding_does_not_change_the_logits(pooling):
    torch.manual_seed(2)
    m = AudioTransformer(AudioTransformerConfig(**{**SMALL, "pooling": pooling})).eval()
    feats, lengths = _inputs()
    full = m(feats, lengths)
    alone = m(feats[1:2, :6], lengths[1:2])
    torch.testing.assert_close(full[1:2], alone, atol=1e-5, rtol=1e-5)


def test_mean_pooling_against_a_hand_average():
    torch.manual_seed(3)
    m = AudioTransformer(AudioTransformerConfig(**SMALL)).eval()
    feats, lengths = _inputs()
    captured = {}
    m.norm.register_forward_hook(lambda mod, inp, out: captured.setdefault("z", out))
    logits = m(feats, lengths)
    z = captured["z"]  # (B, T', d)
    pooled = torch.stack([z[0, :4].mean(0), z[1, :2].mean(0), z[2, :3].mean(0)])
    torch.testing.assert_close(logits, m.head(pooled))


def test_bad_input():
    m = AudioTransformer(AudioTransformerConfig(**SMALL))
    feats, lengths = _inputs()
    with pytest.raises(ValueError, match=r"features must have shape \(B, T, n_mels=11\)"):
        m(feats[..., :3], lengths)
    with pytest.raises(ValueError, match=r"lengths must have shape \(B,\) = \(3,\) with values in \[1, T=13\]"):
        m(feats, torch.tensor([0, 3, 3]))
    with pytest.raises(TypeError, match="lengths must be an int64 tensor"):
        m(feats, [13, 6, 9])
    with pytest.raises(ValueError, match="unknown pooling 'max'; valid poolings: cls, mean"):
        AudioTransformerConfig(**{**SMALL, "pooling": "max"})
    with pytest.raises(ValueError, match=r"d_model \(12\) must be divisible by num_heads \(5\)"):
        AudioTransformerConfig(**{**SMALL, "num_heads": 5})
    short = AudioTransformer(AudioTransformerConfig(**{**SMALL, "max_len": 2}))
    with pytest.raises(ValueError, match="features are too long: 4 frames after subsampling, max_len is 2"):
        short(feats, lengths)
