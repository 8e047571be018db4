"""The pre-LN Transformer: against torch.nn.Transformer(norm_first=True) with the same
weights, KV-cached decoding against the full forward, cross-attention weights against
a hand computation, and a copy task it must learn."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnlab.models.decoding import greedy_decode
from attnlab.models.transformer import Transformer, TransformerConfig

SRC_V, TGT_V, PAD, BOS, EOS = 11, 13, 0, 1, 2
B, S, T = 3, 6, 9  # T > S: decoding runs past the source length
SRC_LENGTHS = [6, 2, 4]


def make(seed: int = 0, **kw) -> Transformer:
    sizes = dict(d_model=12, num_heads=3, num_encoder_layers=2, num_decoder_layers=3, ffn_dim=10, dropout=0.0)
    sizes.update(kw)
    torch.manual_seed(seed)
    return Transformer(TransformerConfig(SRC_V, TGT_V, pad_id=PAD, **sizes)).eval()


def make_batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(SRC_LENGTHS)
    src = torch.randint(3, SRC_V, (B, S), generator=g)
    src[torch.arange(S)[None, :] >= lengths[:, None]] = PAD
    tgt_in = torch.cat([torch.full((B, 1), BOS), torch.randint(3, TGT_V, (B, T - 1), generator=g)], 1)
    return src, lengths, tgt_in


def sinusoids(n: int, d: int) -> torch.Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...) (Vaswani et al. §3.5)."""
    pe = torch.zeros(n, d)
    for pos in range(n):
        for i in range(0, d, 2):
            pe[pos, i] = math.sin(pos / 10000 ** (i / d))
            pe[pos, i + 1] = math.cos(pos / 10000 ** (i / d))
    return pe


def cached_logits(model, src, lengths, tgt_in):
    memory = model.encode(src, lengths)
    state = model.init_state(memory)
    out = []
    for t in range(tgt_in.shape[1]):
        logits, state, _ = model.decode_step(memory, state, tgt_in[:, t])
        out.append(logits)
    return torch.stack(out, 1), state


# --------------------------------------------------------------------------- reference


def test_matches_torch_transformer_with_norm_first_and_the_same_weights():
    model = make()
    src, lengths, tgt_in = make_batch()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch: nested tensors off because norm_first
        ref = nn.Transformer(
            d_model=12, nhead=3, num_encoder_layers=2, num_decoder_layers=3, dim_feedforward=10,
            dropout=0.0, batch_first=True, norm_first=True,
        ).eval()
    rename = {
        "encoder_layers.": "encoder.layers.", "decoder_layers.": "decoder.layers.", "ffn.w1": "linear1",
        "ffn.w2": "linear2", "cross_attn": "multihead_attn", "encoder_norm": "encoder.norm",
        "decoder_norm": "decoder.norm",
    }
    state = {}
    for k, v in model.state_dict().items():
        if k.startswith(("src_embed", "tgt_embed", "readout")):
            continue
        for a, b in rename.items():
            k = k.replace(a, b)
        state[k] = v
    ref.load_state_dict(state, strict=True)

    E_src, E_tgt = model.src_embed.weight, model.tgt_embed.weight
    x = E_src[src] * math.sqrt(12) + sinusoids(S, 12)  # (B, S, d)
    y = E_tgt[tgt_in] * math.sqrt(12) + sinusoids(T, 12)  # (B, T, d)
    pad = torch.arange(S)[None, :] >= lengths[:, None]  # torch's convention: True = ignore
    causal = nn.Transformer.generate_square_subsequent_mask(T)
    out = ref(x, y, tgt_mask=causal, src_key_padding_mask=pad, memory_key_padding_mask=pad, tgt_is_causal=True)
    expect = out @ E_tgt.T  # tied readout
    torch.testing.assert_close(model(src, lengths, tgt_in), expect, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- KV cache


@pytest.mark.parametrize("positional", ["sinusoidal", "learned", "rope", "alibi"])
def test_kv_cached_decoding_equals_the_uncached_forward(positional):
    model = make(positional=positional, num_heads=2 if positional == "rope" else 3)
    src, lengths, tgt_in = make_batch()
    full = model(src, lengths, tgt_in)
    stepped, state = cached_logits(model, src, lengths, tgt_in)
    torch.testing.assert_close(stepped, full, atol=1e-5, rtol=1e-5)
    assert state.step == T and all(c.length == T for c in state.caches)


def test_decode_state_is_not_changed_by_a_step():
    model = make()
    src, lengths, tgt_in = make_batch()
    memory = model.encode(src, lengths)
    state = model.init_state(memory)
    _, state, _ = model.decode_step(memory, state, tgt_in[:, 0])
    a, _, _ = model.decode_step(memory, state, tgt_in[:, 1])
    b, _, _ = model.decode_step(memory, state, tgt_in[:, 1])  # the same state again
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert all(c.length == 1 for c in state.caches)


def test_cached_decoding_with_grad_backpropagates():
    model = make().train()
    src, lengths, tgt_in = make_batch()
    stepped, _ = cached_logits(model, src, lengths, tgt_in[:, :3])
    stepped.sum().backward()
    assert model.decoder_layers[0].self_attn.in_proj_weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------- alignments


@pytest.mark.parametrize("align_layer", [0, -1])
def test_cross_attention_weights_are_the_head_average_of_the_chosen_layer(align_layer):
    model = make(align_layer=align_layer)
    src, lengths, tgt_in = make_batch()
    layer = model.decoder_layers[align_layer]
    seen = {}
    hook = layer.norm2.register_forward_hook(lambda m, i, o: seen.__setitem__("h", o))
    logits, weights = model.forward_with_attention(src, lengths, tgt_in)
    hook.remove()
    memory = model.encode(src, lengths).states  # (B, S, d)
    W, b = layer.cross_attn.in_proj_weight, layer.cross_attn.in_proj_bias
    q = (seen["h"] @ W[:12].T + b[:12]).view(B, T, 3, 4).transpose(1, 2)  # (B, H, T, Dh)
    k = (memory @ W[12:24].T + b[12:24]).view(B, S, 3, 4).transpose(1, 2)  # (B, H, S, Dh)
    scores = q @ k.transpose(-1, -2) / 2.0  # sqrt(Dh) = 2
    real = torch.arange(S)[None, :] < lengths[:, None]  # (B, S)
    expect = torch.softmax(scores.masked_fill(~real[:, None, None, :], float("-inf")), -1).mean(1)  # (B, T, S)
    assert weights.shape == (B, T, S)
    torch.testing.assert_close(weights, expect, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(logits, model(src, lengths, tgt_in), atol=0, rtol=0)
    _, _, step_attn = model.decode_step(model.encode(src, lengths), model.init_state(None), tgt_in[:, 0])
    torch.testing.assert_close(step_attn, weights[:, 0], atol=1e-6, rtol=1e-5)


def test_align_layer_picks_a_different_layer():
    src, lengths, tgt_in = make_batch()
    _, first = make(align_layer=0).forward_with_attention(src, lengths, tgt_in)
    _, last = make(align_layer=2).forward_with_attention(src, lengths, tgt_in)
    _, last_neg = make(align_layer=-1).forward_with_attention(src, lengths, tgt_in)
    torch.testing.assert_close(last, last_neg, atol=0, rtol=0)
    assert not torch.allclose(first, last, atol=1e-3)


# --------------------------------------------------------------------------- embeddings, config


def test_tied_and_shared_embeddings_are_one_tensor_in_the_state_dict():
    tied = make()
    assert tied.output_weight() is tied.tgt_embed.weight and tied.readout is None
    assert tied.source_embedding is tied.src_embed is not tied.tgt_embed
    untied = make(tie_embeddings=False)
    assert untied.output_weight() is untied.readout.weight
    assert sum(p.numel() for p in untied.parameters()) - sum(p.numel() for p in tied.parameters()) == TGT_V * 12
    torch.manual_seed(0)
    shared = Transformer(TransformerConfig(13, 13, d_model=12, num_heads=3, share_embeddings=True))
    assert shared.source_embedding is shared.tgt_embed and shared.src_embed is None
    assert (shared.tgt_embed.weight[PAD] == 0).all()
    for model in (tied, shared):  # no aliased entries (safetensors refuses them)
        pointers = [v.data_ptr() for v in model.state_dict().values()]
        assert len(pointers) == len(set(pointers))
    with pytest.raises(ValueError, match="share_embeddings needs src_vocab == tgt_vocab, got 11 and 13"):
        TransformerConfig(SRC_V, TGT_V, share_embeddings=True)


def test_bad_configs_name_the_field():
    with pytest.raises(ValueError, match=r"d_model \(10\) must be divisible by num_heads \(3\)"):
        TransformerConfig(SRC_V, TGT_V, d_model=10, num_heads=3)
    with pytest.raises(ValueError, match="positional='rope' needs an even head size"):
        TransformerConfig(SRC_V, TGT_V, d_model=12, num_heads=4, positional="rope")
    with pytest.raises(ValueError, match="valid positional encodings: none, sinusoidal"):
        TransformerConfig(SRC_V, TGT_V, positional="relative")
    with pytest.raises(ValueError, match=r"align_layer must be an int in \[-3, 3\)"):
        TransformerConfig(SRC_V, TGT_V, num_decoder_layers=3, align_layer=3)
    with pytest.raises(ValueError, match="valid activations: relu, gelu"):
        TransformerConfig(SRC_V, TGT_V, activation="swish")
    with pytest.raises(TypeError, match="tie_embeddings must be a bool"):
        TransformerConfig(SRC_V, TGT_V, tie_embeddings=1)


def test_too_long_input_for_sinusoidal_table_names_max_len():
    model = make(max_len=5)
    src, lengths, tgt_in = make_batch()
    with pytest.raises(ValueError, match="max_len"):
        model(src, lengths, tgt_in)


# --------------------------------------------------------------------------- learning


def test_transformer_learns_to_reverse_eight_tokens():
    """Reverse 8 tokens: > 90% greedy token accuracy after 250 steps."""
    V, L = 12, 8
    torch.manual_seed(0)
    model = Transformer(
        TransformerConfig(V, V, d_model=32, num_heads=2, ffn_dim=64, num_encoder_layers=1, num_decoder_layers=1, dropout=0.0)
    )

    def batch(g, n):
        x = torch.randint(3, V, (n, L), generator=g)
        y = x.flip(1)
        return x, torch.full((n,), L), torch.cat([torch.full((n, 1), BOS), y], 1), torch.cat([y, torch.full((n, 1), EOS)], 1)

    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(250):
        x, lengths, tgt_in, tgt_out = batch(g, 32)
        loss = F.cross_entropy(model(x, lengths, tgt_in).flatten(0, 1), tgt_out.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, lengths, _, tgt_out = batch(torch.Generator().manual_seed(99), 100)
    out = greedy_decode(model, x, lengths, BOS, EOS, L + 1).tokens
    right = sum(a == b for seq, ref in zip(out, tgt_out[:, :L].tolist()) for a, b in zip(seq, ref))
    assert right / (100 * L) > 0.9, right / (100 * L)
