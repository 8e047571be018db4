"""DecoderLM: shapes, causality, a training step per scheme, a hand-written reference
forward, shared/per-layer positional tables, checkpoint round trip, bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from attnlab.models.decoder_lm import CAUSAL_DEFAULTS, DecoderLM, DecoderLMConfig
from attnlab.nn import ALiBi, LearnedPositionalEmbedding, ShawRelativePosition, T5RelativeBias
from attnlab.train.checkpoint import load_checkpoint, save_checkpoint

SCHEMES = ("sinusoidal", "learned", "shaw", "t5", "rope", "alibi", "none")
V, B, T = 11, 3, 7  # distinct sizes so a swapped axis fails


def small(positional: str, **kw) -> DecoderLMConfig:
    base = dict(vocab_size=V, d_model=12, num_heads=3, num_layers=2, ffn_dim=5, dropout=0.0, max_len=9,
                positional=positional)
    return DecoderLMConfig(**{**base, **kw})


def tokens(seed: int = 0, b: int = B, t: int = T) -> torch.Tensor:
    return torch.randint(0, V, (b, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_shapes_and_attention_weights(scheme):
    torch.manual_seed(0)
    model = DecoderLM(small(scheme)).eval()
    x = tokens()
    logits, weights = model.forward_with_attention(x)
    assert logits.shape == (B, T, V) and logits.dtype == torch.float32
    assert torch.equal(model(x), logits)
    assert len(weights) == 2
    for w in weights:
        assert w.shape == (B, 3, T, T)
        torch.testing.assert_close(w.sum(-1), torch.ones(B, 3, T))
        assert torch.all(w.triu(1) == 0)  # causal: no weight on future keys


@pytest.mark.parametrize("scheme", SCHEMES)
def test_changing_a_future_token_leaves_past_logits_unchanged(scheme):
    torch.manual_seed(1)
    model = DecoderLM(small(scheme)).eval()
    x = tokens(1)
    t = 4
    y = x.clone()
    y[:, t] = (y[:, t] + 1) % V
    with torch.no_grad():
        a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :t], b[:, :t], rtol=0, atol=1e-6)
    assert (a[:, t] - b[:, t]).abs().max() > 1e-4  # the changed position itself does change


@pytest.mark.parametrize("scheme", SCHEMES)
def test_each_scheme_trains_a_step(scheme):
    torch.manual_seed(2)
    model = DecoderLM(small(scheme, dropout=0.1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    x = tokens(2, t=6)  # 6 < max_len 9: rows 6..8 of a learned table are not used
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
    assert math.isfinite(loss.item()) and loss.item() > 0
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
    if scheme in ("learned", "shaw", "t5"):
        table = dict(model.named_parameters())[
            {"learned": "input_positional.weight", "shaw": "layers.0.self_attn.positional.weight",
             "t5": "layers.0.self_attn.positional.weight"}[scheme]
        ]
        assert table.grad.abs().sum() > 0
    if scheme == "learned":
        assert torch.all(model.input_positional.weight.grad[5:] == 0)  # positions never used: no gradient
    opt.step()
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert "embed.weight" in changed and "layers.1.ffn.w2.weight" in changed
    if scheme == "learned":
        torch.testing.assert_close(model.input_positional.weight[5:], before["input_positional.weight"][5:],
                                   rtol=0, atol=0)


# ----------------------------------------------------------------------------- reference


def reference_forward(model: DecoderLM, x: torch.Tensor, scheme: str) -> torch.Tensor:
    """The model written out by hand: loops over heads, explicit masks, ALiBi slopes
    2^(-8(h+1)/H) (Press et al. 2022 §3) or learned rows added to the embeddings."""
    c = model.config
    H, D = c.num_heads, c.d_model // c.num_heads
    Tn = x.shape[1]
    h = model.embed.weight[x] * math.sqrt(c.d_model)  # (B, T, d)
    if scheme == "learned":
        h = h + model.input_positional.weight[:Tn]
    i = torch.arange(Tn)[:, None]
    j = torch.arange(Tn)[None, :]
    for layer in model.layers:
        a = F.layer_norm(h, (c.d_model,), layer.norm1.weight, layer.norm1.bias)
        mha = layer.self_attn
        Wq, Wk, Wv = mha.in_proj_weight.split(c.d_model)
        bq, bk, bv = mha.in_proj_bias.split(c.d_model)
        heads = []
        for hh in range(H):
            sl = slice(hh * D, (hh + 1) * D)
            q = a @ Wq[sl].T + bq[sl]  # (B, T, D)
            k = a @ Wk[sl].T + bk[sl]
            v = a @ Wv[sl].T + bv[sl]
            s = q @ k.transpose(1, 2) / math.sqrt(D)  # (B, T, T)
            if scheme == "alibi":
                s = s - 2.0 ** (-8.0 * (hh + 1) / H) * (i - j).abs()
            s = s.masked_fill(j > i, float("-inf"))
            heads.append(torch.softmax(s, -1) @ v)
        attn = torch.cat(heads, -1) @ mha.out_proj.weight.T + mha.out_proj.bias
        h = h + attn
        f = F.layer_norm(h, (c.d_model,), layer.norm2.weight, layer.norm2.bias)
        h = h + layer.ffn.w2(F.gelu(layer.ffn.w1(f)))
    h = F.layer_norm(h, (c.d_model,), model.norm.weight, model.norm.bias)
    return h @ model.embed.weight.T  # (B, T, V)


@pytest.mark.parametrize("scheme", ["none", "learned", "alibi"])
def test_matches_a_hand_written_forward_in_float64(scheme):
    torch.manual_seed(3)
    model = DecoderLM(small(scheme, num_heads=4, d_model=16)).double().eval()
    with torch.no_grad():
        if model.input_positional is not None:
            model.input_positional.weight.normal_()  # unit-scale rows, so positions matter
        x = tokens(3)
        torch.testing.assert_close(model(x), reference_forward(model, x, scheme), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_one_layer_sees_the_order_of_its_context_only_through_positions(scheme):
    # One causal layer, last query: without positions attention over the context is a
    # permutation-invariant sum, so reordering the context leaves the last logits unchanged.
    torch.manual_seed(4)
    model = DecoderLM(small(scheme, num_layers=1)).eval()
    x = torch.tensor([[1, 2, 3, 4, 5, 6]])
    y = torch.tensor([[4, 1, 5, 3, 2, 6]])  # same context, other order, same last token
    with torch.no_grad():
        same = torch.allclose(model(x)[0, -1], model(y)[0, -1], atol=1e-5)
    assert same == (scheme == "none")


def test_attention_schemes_take_inputs_longer_than_max_len():
    alibi = DecoderLM(small("alibi", max_len=4)).eval()
    assert alibi(tokens(5, t=13)).shape == (B, 13, V)


# ----------------------------------------------------------------------------- structure


def test_t5_table_is_shared_across_layers_and_causal_by_default_shaw_is_per_layer():
    t5 = DecoderLM(small("t5", positional_options={"max_distance": 20}))
    p0, p1 = (layer.self_attn.positional for layer in t5.layers)
    assert isinstance(p0, T5RelativeBias) and p0 is p1
    assert p0.bidirectional is False and p0.max_distance == 20 and CAUSAL_DEFAULTS["t5"] == {"bidirectional": False}
    n_t5 = sum(p.numel() for p in t5.parameters())
    assert t5.num_parameters() == n_t5
    assert n_t5 == DecoderLM(small("none")).num_parameters() + 32 * 3  # one (32, H) table, counted once
    bi = DecoderLM(small("t5", positional_options={"bidirectional": True}))
    assert bi.layers[0].self_attn.positional.bidirectional is True
    shaw = DecoderLM(small("shaw"))
    s0, s1 = (layer.self_attn.positional for layer in shaw.layers)
    assert isinstance(s0, ShawRelativePosition) and s0 is not s1
    alibi = DecoderLM(small("alibi"))
    assert isinstance(alibi.layers[0].self_attn.positional, ALiBi) and alibi.input_positional is None
    learned = DecoderLM(small("learned"))
    assert isinstance(learned.input_positional, LearnedPositionalEmbedding)
    assert learned.input_positional.weight.shape == (9, 12) and learned.layers[0].self_attn.positional is None


def test_checkpoint_round_trip_rebuilds_config_and_weights(tmp_path):
    torch.manual_seed(5)
    config = small("t5", positional_options={"max_distance": 20})
    model = DecoderLM(config).eval()
    save_checkpoint(tmp_path / "ckpt", model, config=config)
    ckpt = load_checkpoint(tmp_path / "ckpt", restore_rng=False)
    rebuilt_config = DecoderLMConfig(**ckpt.config)
    assert rebuilt_config == config and rebuilt_config.positional_options == (("max_distance", 20),)
    rebuilt = DecoderLM(rebuilt_config).eval()
    load_checkpoint(tmp_path / "ckpt", rebuilt, restore_rng=False)
    assert rebuilt.layers[0].self_attn.positional is rebuilt.layers[1].self_attn.positional
    x = tokens(6)
    torch.testing.assert_close(rebuilt(x), model(x), rtol=0, atol=0)
    # a list of pairs (what JSON gives back) is accepted too, and the config stays hashable
    assert DecoderLMConfig(**{**ckpt.config, "positional_options": [["max_distance", 20]]}) == config
    hash(config)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kw, error, match",
    [
        ({"positional": "xpos"}, ValueError, "unknown positional encoding 'xpos'; valid positional encodings: .*alibi"),
        ({"positional": "rope", "d_model": 9, "num_heads": 3}, ValueError, "even head size"),
        ({"d_model": 10, "num_heads": 3}, ValueError, r"d_model \(10\) must be divisible by num_heads \(3\)"),
        ({"num_layers": 0}, ValueError, "num_layers must be > 0"),
        ({"dropout": 1.5}, ValueError, "dropout must be in"),
        ({"activation": "swish"}, ValueError, "valid activations: relu, gelu"),
        ({"positional_options": 5}, TypeError, "positional_options must be a dict"),
        ({"positional_options": {"max_distance": [1]}}, TypeError, r"positional_options\['max_distance'\]"),
        ({"name": "gpt"}, ValueError, "name must be 'decoder_lm'"),
    ],
)
def test_config_rejects_bad_values(kw, error, match):
    with pytest.raises(error, match=match):
        small(kw.pop("positional", "sinusoidal"), **kw)


def test_forward_rejects_bad_tokens():
    model = DecoderLM(small("learned"))
    with pytest.raises(TypeError, match="tokens must be an integer"):
        model(torch.zeros(B, T))
    with pytest.raises(ValueError, match=r"tokens must have shape \(B, T\).*got \(7\)"):
        model(torch.zeros(T, dtype=torch.long))
    with pytest.raises(ValueError, match=r"tokens must be ids in \[0, vocab_size\) = \[0, 11\).*\[0, 11\]"):
        model(torch.tensor([[0, 11]]))
    with pytest.raises(ValueError, match="T = 10 positions but config.max_len = 9"):
        model(tokens(7, t=10))
    with pytest.raises(TypeError, match="config must be a DecoderLMConfig"):
        DecoderLM({"vocab_size": V})
