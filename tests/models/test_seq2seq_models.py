"""The five translation models against the Seq2seqModel protocol, their papers' equations,
and padding; plus the registry. Sizes are distinct (B=3, S=7, T=5, vocab 11/13) so a
swapped axis fails."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from attnlab.models.decoding import greedy_decode
from attnlab.models.luong_seq2seq import LuongConfig, LuongSeq2seq
from attnlab.models.registry import (
    MODELS,
    WIDTHS,
    build_config,
    build_model,
    count_parameters,
    model_from_config,
    sizes_for_budget,
)
from attnlab.models.rnnenc import RNNEncDec
from attnlab.models.rnnsearch import RNNSearch, RNNSearchConfig
from attnlab.models.transformer import TransformerConfig

SRC_V, TGT_V, PAD, BOS, EOS = 11, 13, 0, 1, 2
B, S, T = 3, 7, 5
SRC_LENGTHS = [7, 3, 5]
TGT_LENGTHS = [5, 2, 4]

VARIANTS = {
    "seq2seq": ("seq2seq", dict(emb_size=6, hidden_size=10, num_layers=2)),
    "rnnenc": ("rnnenc", dict(emb_size=6, hidden_size=10, num_layers=2)),
    "rnnsearch": ("rnnsearch", dict(emb_size=6, enc_hidden=5, dec_hidden=9, attn_hidden=4)),
    "rnnsearch-maxout": ("rnnsearch", dict(emb_size=6, enc_hidden=5, dec_hidden=9, attn_hidden=4, readout="maxout", maxout_size=3)),
    "luong-lstm-general-localp": (
        "luong", dict(emb_size=6, hidden_size=10, num_layers=2, cell="lstm", score="general", mode="local-p", window=2)
    ),
    "luong-gru-concat-global": ("luong", dict(emb_size=6, hidden_size=10, num_layers=1, cell="gru", score="concat")),
    "luong-dot-localm-nofeed": (
        "luong", dict(emb_size=6, hidden_size=10, num_layers=2, score="dot", mode="local-m", window=1, input_feeding=False)
    ),
    "transformer": ("transformer", dict(d_model=12, num_heads=3, num_encoder_layers=2, num_decoder_layers=2, ffn_dim=10)),
    "transformer-rope-untied": (
        "transformer",
        dict(d_model=12, num_heads=2, num_encoder_layers=1, num_decoder_layers=2, ffn_dim=10, positional="rope", tie_embeddings=False),
    ),
}
WITH_ATTENTION = [v for v in VARIANTS if not v.startswith(("seq2seq", "rnnenc"))]


def make(variant: str, seed: int = 0):
    name, sizes = VARIANTS[variant]
    torch.manual_seed(seed)
    return build_model(name, src_vocab=SRC_V, tgt_vocab=TGT_V, pad_id=PAD, dropout=0.0, **sizes).eval()


def make_batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(3, SRC_V, (B, S), generator=g)
    tgt = torch.randint(3, TGT_V, (B, T), generator=g)
    for i, (ls, lt) in enumerate(zip(SRC_LENGTHS, TGT_LENGTHS)):
        src[i, ls:] = PAD
        tgt[i, lt:] = PAD
    tgt_in = torch.cat([torch.full((B, 1), BOS), tgt[:, :-1]], dim=1)  # (B, T)
    return src, torch.tensor(SRC_LENGTHS), tgt_in


def step_all(model, src, lengths, tgt_in):
    """decode_step over the teacher-forced tokens: logits (B, T, V), attention (B, T, S) or None."""
    memory = model.encode(src, lengths)
    state = model.init_state(memory)
    logits, attns = [], []
    for t in range(tgt_in.shape[1]):
        step_logits, state, attn = model.decode_step(memory, state, tgt_in[:, t])
        logits.append(step_logits)
        attns.append(attn)
    return torch.stack(logits, 1), None if attns[0] is None else torch.stack(attns, 1)


# --------------------------------------------------------------------------- protocol


@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_shape_config_and_backward_reaches_every_parameter(variant):
    model = make(variant).train()
    src, lengths, tgt_in = make_batch()
    logits = model(src, lengths, tgt_in)
    assert logits.shape == (B, T, TGT_V) and logits.dtype == torch.float32
    assert model.config.name == VARIANTS[variant][0]
    assert (model.config.src_vocab, model.config.tgt_vocab, model.config.pad_id) == (SRC_V, TGT_V, PAD)
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.config.src_vocab = 5
    F.cross_entropy(logits.flatten(0, 1), torch.randint(0, TGT_V, (B * T,))).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert p.grad.abs().sum() > 0, f"{name} got a zero gradient"


@pytest.mark.parametrize("variant", VARIANTS)
def test_padding_does_not_change_a_sentences_logits(variant):
    model = make(variant)
    src, lengths, tgt_in = make_batch()
    batched = model(src, lengths, tgt_in)
    for i, (ls, lt) in enumerate(zip(SRC_LENGTHS, TGT_LENGTHS)):
        alone = model(src[i : i + 1, :ls], lengths[i : i + 1], tgt_in[i : i + 1, :lt])
        torch.testing.assert_close(batched[i, :lt], alone[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_decode_steps_equal_teacher_forced_forward(variant):
    model = make(variant)
    src, lengths, tgt_in = make_batch()
    stepped, _ = step_all(model, src, lengths, tgt_in)
    torch.testing.assert_close(stepped, model(src, lengths, tgt_in), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_reorder_selects_and_duplicates_rows(variant):
    model = make(variant)
    src, lengths, tgt_in = make_batch()
    memory = model.encode(src, lengths)
    state = model.init_state(memory)
    for t in range(2):
        _, state, _ = model.decode_step(memory, state, tgt_in[:, t])
    index = torch.tensor([2, 0, 0, 1])
    expect, _, expect_attn = model.decode_step(memory, state, tgt_in[:, 2])
    mem2, state2 = model.reorder(memory, state, index)
    got, _, got_attn = model.decode_step(mem2, state2, tgt_in[index, 2])
    torch.testing.assert_close(got, expect[index], atol=1e-6, rtol=1e-6)
    if expect_attn is not None:
        torch.testing.assert_close(got_attn, expect_attn[index], atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="index"):
        model.reorder(memory, state, torch.tensor([0, 3]))


@pytest.mark.parametrize("variant", VARIANTS)
def test_bf16_model_gives_bf16_logits(variant):
    model = make(variant).to(torch.bfloat16)
    src, lengths, tgt_in = make_batch()
    logits = model(src, lengths, tgt_in)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()


@pytest.mark.parametrize("variant", WITH_ATTENTION)
def test_attention_is_a_distribution_over_real_source_tokens(variant):
    model = make(variant)
    src, lengths, tgt_in = make_batch()
    stepped_logits, attn = step_all(model, src, lengths, tgt_in)
    assert attn.shape == (B, T, S)
    real = torch.arange(S)[None, :] < lengths[:, None]  # (B, S)
    assert (attn >= 0).all()
    assert (attn.masked_select(~real[:, None, :].expand_as(attn)) == 0).all(), "weight on padding"
    sums = attn.sum(-1)  # (B, T)
    if "localp" in variant:  # softmax times a Gaussian (Luong eq. 10): at most 1
        assert (sums <= 1 + 1e-6).all() and (sums > 0).all()
    else:
        torch.testing.assert_close(sums, torch.ones(B, T), atol=1e-5, rtol=0)
    logits, weights = model.forward_with_attention(src, lengths, tgt_in)
    torch.testing.assert_close(weights, attn, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits, stepped_logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", ["seq2seq", "rnnenc"])
def test_models_without_attention_return_none(variant):
    model = make(variant)
    src, lengths, tgt_in = make_batch()
    _, attn = step_all(model, src, lengths, tgt_in)
    assert attn is None
    decoded = greedy_decode(model, src, lengths, BOS, EOS, 4)
    assert decoded.attention == [None] * B


# --------------------------------------------------------------------------- each design


def test_word_by_word_output_at_t_sees_only_source_up_to_t():
    model = make("seq2seq")
    src, lengths, tgt_in = make_batch()
    base = model(src, lengths, tgt_in)
    for t in range(T - 1):
        changed = src.clone()
        changed[0, t + 1 :] = (changed[0, t + 1 :] + 1 - 3) % (SRC_V - 3) + 3  # other real tokens
        out = model(changed, lengths, tgt_in)
        torch.testing.assert_close(out[0, : t + 1], base[0, : t + 1], atol=0, rtol=0)
        assert not torch.allclose(out[0, t + 1], base[0, t + 1]), "step t+1 must read source token t+1"
    # The contrast: an encoder-decoder's first output already depends on the last source token.
    other = make("rnnsearch")
    changed = src.clone()
    changed[0, -1] = 3 if src[0, -1] != 3 else 4
    assert not torch.allclose(other(changed, lengths, tgt_in)[0, 0], other(src, lengths, tgt_in)[0, 0])


def test_word_by_word_target_longer_than_source_reads_padding():
    model = make("seq2seq")
    src = torch.tensor([[5, 6]])
    tgt_in = torch.tensor([[BOS, 4, 7, 8]])
    logits = model(src, torch.tensor([2]), tgt_in)
    assert logits.shape == (1, 4, TGT_V)
    # Past the source end the model reads pad: the same as an explicitly padded source.
    padded = model(torch.tensor([[5, 6, PAD, PAD]]), torch.tensor([2]), tgt_in)
    torch.testing.assert_close(logits, padded, atol=0, rtol=0)


def test_rnnenc_context_is_the_last_real_state_of_the_encoder():
    model: RNNEncDec = make("rnnenc")
    src, lengths, _ = make_batch()
    memory = model.encode(src, lengths)
    assert memory.context.shape == (B, 10)
    for i, ls in enumerate(SRC_LENGTHS):
        out, _ = model.encoder(model.src_embed(src[i : i + 1, :ls]))  # (1, ls, H): no padding at all
        torch.testing.assert_close(memory.context[i], out[0, -1], atol=1e-6, rtol=1e-6)


def test_rnnsearch_step_matches_bahdanau_equations():
    model: RNNSearch = make("rnnsearch")
    src, lengths, tgt_in = make_batch()
    He = model.config.enc_hidden
    memory = model.encode(src, lengths)
    # Annotations: the bidirectional GRU run on each unpadded sentence alone.
    for i, ls in enumerate(SRC_LENGTHS):
        ref, _ = model.encoder(model.src_embed(src[i : i + 1, :ls]))  # (1, ls, 2He)
        torch.testing.assert_close(memory.annotations[i, :ls], ref[0], atol=1e-6, rtol=1e-6)
    h = memory.annotations  # (B, S, 2He)
    s0 = torch.tanh(model.init_proj(h[:, 0, He:]))  # s_0 = tanh(W_s <-h_1)
    att = model.attention
    e = torch.tanh((s0 @ att.w_q.T + att.bias)[:, None, :] + h @ att.w_k.T) @ att.v  # (B, S)
    real = torch.arange(S)[None, :] < lengths[:, None]
    a = torch.softmax(e.masked_fill(~real, float("-inf")), dim=-1)  # (B, S)
    c = (a[:, :, None] * h).sum(1)  # (B, 2He)
    y = model.tgt_embed(tgt_in[:, 0])
    s1 = model.decoder(torch.cat([y, c], -1), s0)
    expect = model.readout.out(torch.cat([s1, c, y], -1))
    logits, state, weights = model.decode_step(memory, model.init_state(memory), tgt_in[:, 0])
    torch.testing.assert_close(weights, a, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(state, s1, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(logits, expect, atol=1e-6, rtol=1e-6)


def test_luong_global_general_with_input_feeding_matches_equations():
    torch.manual_seed(0)
    model = LuongSeq2seq(
        LuongConfig(SRC_V, TGT_V, emb_size=6, hidden_size=10, num_layers=1, cell="gru", score="general", dropout=0.0)
    ).eval()
    src, lengths, tgt_in = make_batch()
    memory = model.encode(src, lengths)
    hs = memory.outputs  # (B, S, H)
    real = torch.arange(S)[None, :] < lengths[:, None]
    W_a, W_c = model.attention.score.weight, model.attention.w_c.weight
    rnn_state, feed = memory.final, torch.zeros(B, 10)
    for t in range(3):
        x = torch.cat([model.tgt_embed(tgt_in[:, t]), feed], -1)  # input feeding: [E y_{t-1}; h~_{t-1}]
        out, rnn_state = model.decoder(x[:, None], rnn_state)
        h = out[:, 0]  # h_t (B, H)
        score = torch.einsum("bh,hk,bsk->bs", h, W_a, hs)  # h_t^T W_a h_s
        a = torch.softmax(score.masked_fill(~real, float("-inf")), -1)
        c = torch.einsum("bs,bsh->bh", a, hs)
        feed = torch.tanh(torch.cat([c, h], -1) @ W_c.T)  # h~_t = tanh(W_c [c_t; h_t])
        expect = model.readout(feed)
        if t == 0:
            state = model.init_state(memory)
        logits, state, weights = model.decode_step(memory, state, tgt_in[:, t])
        torch.testing.assert_close(weights, a, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(logits, expect, atol=1e-5, rtol=1e-5)


def test_luong_input_feeding_changes_the_decoder():
    on = make("luong-gru-concat-global")
    cfg = dataclasses.replace(on.config, input_feeding=False)
    off = LuongSeq2seq(cfg)
    assert off.decoder.input_size == on.decoder.input_size - cfg.hidden_size


def test_rnnsearch_learns_to_reverse_eight_tokens():
    """Reverse 8 tokens: RNNsearch reaches > 90% greedy token accuracy in 150 steps."""
    V, L = 12, 8
    torch.manual_seed(0)
    model = build_model(
        "rnnsearch", src_vocab=V, tgt_vocab=V, emb_size=16, enc_hidden=32, dec_hidden=32, attn_hidden=32, dropout=0.0
    )
    acc = _train_reverse(model, V, L, steps=150, lr=5e-3)
    assert acc > 0.9, acc


def _train_reverse(model, V, L, steps, lr):
    def batch(g, n):
        x = torch.randint(3, V, (n, L), generator=g)
        y = x.flip(1)
        return x, torch.full((n,), L), torch.cat([torch.full((n, 1), BOS), y], 1), torch.cat([y, torch.full((n, 1), EOS)], 1)

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(steps):
        x, lengths, tgt_in, tgt_out = batch(g, 32)
        loss = F.cross_entropy(model(x, lengths, tgt_in).flatten(0, 1), tgt_out.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, lengths, _, tgt_out = batch(torch.Generator().manual_seed(99), 100)
    out = greedy_decode(model, x, lengths, BOS, EOS, L + 1).tokens
    right = sum(a == b for seq, ref in zip(out, tgt_out[:, :L].tolist()) for a, b in zip(seq, ref))
    return right / (100 * L)


# --------------------------------------------------------------------------- bad input


def test_bad_inputs_name_the_argument():
    model = make("rnnsearch")
    src, lengths, tgt_in = make_batch()
    with pytest.raises(TypeError, match="src must be an integer"):
        model(src.float(), lengths, tgt_in)
    with pytest.raises(ValueError, match=r"src must have shape \(B, S\)"):
        model(src[0], lengths, tgt_in)
    with pytest.raises(ValueError, match=r"src_lengths must lie in \[1, S=7\]"):
        model(src, torch.tensor([8, 3, 5]), tgt_in)
    with pytest.raises(ValueError, match="src_lengths must lie"):
        model(src, torch.tensor([0, 3, 5]), tgt_in)
    with pytest.raises(ValueError, match=r"src_lengths must have shape \(B,\) = \(3,\)"):
        model(src, lengths[:2], tgt_in)
    with pytest.raises(TypeError, match="src_lengths must be an integer"):
        model(src, lengths.float(), tgt_in)
    with pytest.raises(ValueError, match="tgt_in must have batch size B=3"):
        model(src, lengths, tgt_in[:2])
    with pytest.raises(ValueError, match=r"src holds token ids in \[3, 11\], outside \[0, src_vocab=11\)"):
        model(src.masked_fill(src == PAD, SRC_V), lengths, tgt_in)
    with pytest.raises(ValueError, match="outside \\[0, tgt_vocab=13\\)"):
        model(src, lengths, tgt_in + TGT_V)
    memory = model.encode(src, lengths)
    with pytest.raises(ValueError, match=r"prev_tokens must have shape \(B,\) = \(3,\)"):
        model.decode_step(memory, model.init_state(memory), tgt_in[:2, 0])


def test_bad_configs_list_valid_choices():
    with pytest.raises(ValueError, match="valid modes: global, local-m, local-p"):
        LuongConfig(SRC_V, TGT_V, mode="local")
    with pytest.raises(ValueError, match="valid cells: lstm, gru"):
        LuongConfig(SRC_V, TGT_V, cell="rnn")
    with pytest.raises(ValueError, match="valid scores: dot, general, concat"):
        LuongConfig(SRC_V, TGT_V, score="additive")
    with pytest.raises(ValueError, match="valid readouts: linear, maxout"):
        RNNSearchConfig(SRC_V, TGT_V, readout="deep")
    with pytest.raises(ValueError, match="hidden_size must be > 0"):
        build_config("rnnenc", src_vocab=SRC_V, tgt_vocab=TGT_V, hidden_size=0)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        build_config("seq2seq", src_vocab=SRC_V, tgt_vocab=TGT_V, dropout=1.5)
    with pytest.raises(ValueError, match="name must be 'luong'"):
        LuongConfig(SRC_V, TGT_V, name="rnnsearch")
    with pytest.raises(TypeError, match="config must be a RNNSearchConfig"):
        RNNSearch(LuongConfig(SRC_V, TGT_V))


# --------------------------------------------------------------------------- registry


def test_registry_holds_the_five_models():
    assert set(MODELS) == {"seq2seq", "rnnenc", "rnnsearch", "luong", "transformer"}
    for name, (config_cls, model_cls) in MODELS.items():
        model = build_model(name, src_vocab=SRC_V, tgt_vocab=TGT_V)
        assert isinstance(model, model_cls) and isinstance(model.config, config_cls)
        assert model.config.name == name


def test_build_model_errors_list_valid_names_and_fields():
    with pytest.raises(ValueError, match="unknown model 'gpt'; valid models: seq2seq, rnnenc, rnnsearch, luong, transformer"):
        build_model("gpt", src_vocab=SRC_V, tgt_vocab=TGT_V)
    with pytest.raises(ValueError, match=r"unknown field\(s\) hidden for model 'rnnsearch'; valid fields: .*dec_hidden"):
        build_model("rnnsearch", src_vocab=SRC_V, tgt_vocab=TGT_V, hidden=5)
    with pytest.raises(ValueError, match=r"model 'luong' needs field\(s\) tgt_vocab"):
        build_model("luong", src_vocab=SRC_V)


@pytest.mark.parametrize("variant", ["rnnsearch", "transformer-rope-untied"])
def test_model_from_config_round_trips_through_a_dict(variant):
    model = make(variant)
    again = model_from_config(dataclasses.asdict(model.config))
    assert again.config == model.config
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert model_from_config(model.config).config == model.config


def test_count_parameters_counts_tied_weights_once():
    cfg = dict(src_vocab=SRC_V, tgt_vocab=TGT_V, d_model=12, num_heads=3, ffn_dim=10)
    tied = build_model("transformer", **cfg)
    untied = build_model("transformer", tie_embeddings=False, **cfg)
    assert count_parameters(untied) - count_parameters(tied) == TGT_V * 12
    by_hand = sum(p.numel() for p in {id(p): p for p in tied.parameters()}.values())
    assert count_parameters(tied) == by_hand
    tied.tgt_embed.weight.requires_grad_(False)
    assert count_parameters(tied) == by_hand - TGT_V * 12
    assert count_parameters(tied, trainable_only=False) == by_hand


@pytest.mark.parametrize("name", list(MODELS))
def test_sizes_for_budget_picks_the_width_closest_to_the_budget(name):
    budget, vocab = 60_000, {"src_vocab": 101, "tgt_vocab": 97}
    sizes = sizes_for_budget(name, (101, 97), budget)
    assert {k: sizes[k] for k in vocab} == vocab
    n = count_parameters(build_model(name, **sizes))
    assert abs(n - budget) / budget < 0.1, (sizes, n)
    # Every other width is no closer (counted on real models, not on the fitted curve).
    w = sizes["d_model"] // TransformerConfig.num_heads if name == "transformer" else sizes["emb_size"]
    assert WIDTHS[name](w, {}).items() <= sizes.items()
    for other in (w - 1, w + 1, w + 2):
        m = build_model(name, **vocab, **WIDTHS[name](other, {}))
        assert abs(count_parameters(m) - budget) >= abs(n - budget), (other, w)


def test_sizes_for_budget_keeps_fixed_fields_and_rejects_tiny_budgets():
    sizes = sizes_for_budget("transformer", 50, 40_000, num_heads=2, positional="rope", num_encoder_layers=1)
    assert sizes["num_heads"] == 2 and sizes["num_encoder_layers"] == 1
    assert sizes["d_model"] % 4 == 0  # RoPE needs an even head size
    with pytest.raises(ValueError, match="budget=10 is below the smallest 'rnnsearch' model"):
        sizes_for_budget("rnnsearch", 50, 10)
    with pytest.raises(ValueError, match="unknown model"):
        sizes_for_budget("rnn", 50, 10_000)
    with pytest.raises(ValueError, match="budget must be > 0"):
        sizes_for_budget("luong", 50, 0)
