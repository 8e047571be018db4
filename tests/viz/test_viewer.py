"""attnlab.viz.viewer (the page as text) and attnlab.viz_cli (sources and the command).

What the page does in a browser is tested in test_viewer_browser.py.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import json
import os
import re

import numpy as np
import pytest
import torch

from attnlab import viz_cli
from attnlab.viz.viewer import build_viewer_html, save_viewer_html

EVIL = "</script><script>window.__pwned=1</script>"


def _weights(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(3 * torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def _data(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="attnlab-data">(.*?)</script>', page, re.S)
    assert m, "no data element"
    return json.loads(m.group(1))


def _inline(page: str, tag: str) -> list[str]:
    return re.findall(rf"<{tag}>(.*?)</{tag}>", page, re.S)


def _page(**kw):
    args = dict(
        title="t",
        layers=[{"name": "layer 0", "heads": _weights(3, 5, 7)}, {"name": "layer 1", "heads": _weights(2, 5, 7, seed=1)}],
        query_tokens=list("abcde"),
        key_tokens=list("ABCDEFG"),
        meta={"model": "m", "tokens": 5},
    )
    args.update(kw)
    return build_viewer_html(**args)


# ----------------------------------------------------------------------------- the page


def test_data_round_trips_through_the_page_rounded_to_4_decimals():
    h0, h1 = _weights(3, 5, 7), _weights(2, 5, 7, seed=1)
    page = _page(layers=[{"name": "layer 0", "heads": h0}, {"name": "enc 1", "heads": h1.numpy().tolist()}])
    data = _data(page)
    assert [layer["name"] for layer in data["layers"]] == ["layer 0", "enc 1"]
    # Layers may have different head counts; the (H, Tq, Tk) axes keep their order.
    np.testing.assert_allclose(np.array(data["layers"][0]["heads"]), h0.numpy(), rtol=0, atol=5e-5 + 1e-12)
    np.testing.assert_allclose(np.array(data["layers"][1]["heads"]), h1.numpy(), rtol=0, atol=5e-5 + 1e-12)
    assert np.array(data["layers"][0]["heads"]).shape == (3, 5, 7)
    assert data["query_tokens"] == list("abcde") and data["key_tokens"] == list("ABCDEFG")
    assert data["meta"] == {"model": "m", "tokens": "5"}
    assert data["view"] == "lines"
    assert data["query_label"] and data["key_label"]


def test_hand_checked_rounding_and_default_key_tokens_for_self_attention():
    heads = [[[0.123456, 0.876544], [1.0, 0.0]]]  # (1, 2, 2)
    data = _data(build_viewer_html("x", [{"name": "L", "heads": heads}], ["p", "q"], view="heatmap"))
    assert data["layers"][0]["heads"] == [[[0.1235, 0.8765], [1.0, 0.0]]]
    assert data["key_tokens"] == ["p", "q"]
    assert data["view"] == "heatmap"


@pytest.mark.parametrize(
    "token",
    [EVIL, "<script>alert(1)</script>", "<!--", "a & b", "x\u2028y\u2029z", '"quoted" \\ back', "<img src=x onerror=alert(1)>"],
)
def test_token_text_cannot_leave_the_json_element(token):
    page = _page(query_tokens=["a", token, "c", "d", "e"], meta={"text": token}, title=token)
    m = re.search(r'<script type="application/json" id="attnlab-data">(.*?)</script>', page, re.S)
    raw = m.group(1)
    # Nothing that HTML parsing could see as markup, nor a JS line terminator.
    for bad in ("<", ">", "&", "\u2028", "\u2029"):
        assert bad not in raw
    data = json.loads(raw)
    assert data["query_tokens"][1] == token and data["meta"]["text"] == token and data["title"] == token
    # Only the page's own two script elements exist; the title is HTML-escaped.
    assert len(re.findall(r"<script\b", page, re.I)) == 2
    assert f"<title>{html.escape(token)}</title>" in page


def test_title_is_html_escaped_and_placeholders_in_it_are_not_expanded():
    page = _page(title="<b>%%DATA%%</b> & %%JS%%")
    assert "<title>&lt;b&gt;%%DATA%%&lt;/b&gt; &amp; %%JS%%</title>" in page
    assert "<h1>&lt;b&gt;%%DATA%%&lt;/b&gt; &amp; %%JS%%</h1>" in page
    _data(page)  # the data element is intact


def test_page_is_self_contained_and_its_csp_allows_exactly_its_own_inline_code():
    page = _page()
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page).group(1)
    assert "default-src 'none'" in csp

    def sha(text):
        return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"

    (style,) = _inline(page, "style")
    (script,) = _inline(page, "script")  # the code (the data element has attributes)
    assert f"style-src {sha(style)}" in csp and f"script-src {sha(script)}" in csp
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|eval\(|document\.write|new Function", script)
    # No external resource: no src attribute, no link other than the data: icon, and the
    # only URL is the SVG namespace (an identifier, never fetched).
    assert not re.search(r"\ssrc\s*=", page)
    assert re.findall(r'href="([^"]*)"', page) == ["data:,"]
    assert set(re.findall(r"https?://[^\s\"')]+", page)) == {"http://www.w3.org/2000/svg"}
    assert "@import" not in style and "url(" not in style


def test_accepts_numpy_and_int_weights():
    a = np.zeros((1, 2, 3), dtype=np.int64)
    a[0, :, 1] = 1
    data = _data(build_viewer_html("x", [{"name": "L", "heads": a}], ["a", "b"], ["p", "q", "r"]))
    assert data["layers"][0]["heads"] == [[[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]]]


@pytest.mark.parametrize(
    "kw, exc, match",
    [
        (dict(layers=[]), ValueError, "layers is empty"),
        (dict(layers={"name": "x", "heads": np.ones((1, 5, 7))}), TypeError, "layers must be a list"),
        (dict(layers=[np.ones((1, 5, 7))]), TypeError, r"layers\[0\] must be a dict"),
        (dict(layers=[{"name": 3, "heads": np.ones((1, 5, 7))}]), TypeError, r'layers\[0\]\["name"\] must be a str'),
        (dict(layers=[{"name": "x", "heads": np.ones((5, 7))}]), ValueError, r"\(H, Tq, Tk\).*weights\[None\]"),
        (dict(layers=[{"name": "x", "heads": np.ones((0, 5, 7))}]), ValueError, "at least one head"),
        (dict(layers=[{"name": "x", "heads": np.full((1, 5, 7), np.nan)}]), ValueError, "NaN"),
        (dict(layers=[{"name": "x", "heads": -np.ones((1, 5, 7))}]), ValueError, "negative"),
        (dict(layers=[{"name": "x", "heads": np.array([["a"]])}]), TypeError, "real numbers"),
        (dict(layers=[{"name": "x", "heads": np.ones((1, 5, 7))}, {"name": "y", "heads": np.ones((1, 5, 3))}]),
         ValueError, r'layers\[1\]\["heads"\] has \(Tq, Tk\) = \(5, 3\)'),
        (dict(query_tokens=list("abc")), ValueError, "query_tokens has 3 tokens but the weights have 5"),
        (dict(key_tokens=list("AB")), ValueError, "key_tokens has 2 tokens but the weights have 7"),
        (dict(key_tokens=None), ValueError, "key_tokens is required"),
        (dict(query_tokens="abcde"), TypeError, "query_tokens must be a list of str"),
        (dict(query_tokens=["a", "b", 3, "d", "e"]), TypeError, r"query_tokens\[2\] must be a str"),
        (dict(meta={"x": [1]}), TypeError, r"meta\['x'\]"),
        (dict(meta="x"), TypeError, "meta must be a dict"),
        (dict(title=None), TypeError, "title must be a str"),
        (dict(view="table"), ValueError, "unknown view 'table'; valid views: lines, heatmap"),
    ],
)
def test_bad_input_names_the_argument(kw, exc, match):
    with pytest.raises(exc, match=match):
        _page(**kw)


def test_save_is_atomic_utf8_and_checks_the_folder(tmp_path):
    page = _page(query_tokens=["ä", "ß", "日本", "e", "f"])
    path = save_viewer_html(page, tmp_path / "v.html")
    assert path.read_text(encoding="utf-8") == page
    assert os.listdir(tmp_path) == ["v.html"]  # no temporary file left behind
    save_viewer_html("<p>new</p>", path)  # replaces
    assert path.read_text(encoding="utf-8") == "<p>new</p>"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_viewer_html(page, tmp_path / "missing" / "v.html")
    with pytest.raises(TypeError, match="html must be a str"):
        save_viewer_html(b"x", tmp_path / "b.html")


# ----------------------------------------------------------------------------- sources


def test_random_source_is_seeded_row_stochastic_and_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    a = viz_cli.random_attention("the cat sat on the mat", seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    b = viz_cli.random_attention("the cat sat on the mat", seed=3)
    c = viz_cli.random_attention("the cat sat on the mat", seed=4)
    T = len(a.query_tokens)
    assert T >= 6 and a.key_tokens is None
    assert len(a.layers) == viz_cli.RANDOM_LAYERS
    for layer, other in zip(a.layers, b.layers):
        assert layer["heads"].shape == (viz_cli.RANDOM_HEADS, T, T)
        torch.testing.assert_close(layer["heads"].sum(-1), torch.ones(viz_cli.RANDOM_HEADS, T))
        assert torch.equal(layer["heads"], other["heads"])
    assert not torch.allclose(a.layers[0]["heads"], c.layers[0]["heads"])
    # Heads differ from each other (each head has its own projections).
    assert not torch.allclose(a.layers[0]["heads"][0], a.layers[0]["heads"][1])
    page = a.html(view="heatmap")
    assert _data(page)["view"] == "heatmap"


def test_minilm_source_returns_every_head_of_the_pretrained_bert():
    bert = pytest.importorskip("attnlab.models.bert")
    from attnlab.data.minilm import MiniLMNotAvailable

    try:
        v = viz_cli.minilm_attention("The cat sat.")
    except MiniLMNotAvailable as exc:
        pytest.skip(str(exc))
    assert v.query_tokens[0] == "[CLS]" and v.query_tokens[-1] == "[SEP]" and "cat" in v.query_tokens
    T = len(v.query_tokens)
    assert len(v.layers) == 6
    enc = bert.load_minilm()
    batch = enc.tokenize(["The cat sat."])
    with torch.no_grad():
        ref = enc.bert(batch.input_ids, batch.attention_mask, need_weights=True).attentions  # (L, 1, H, T, T)
    for l, layer in enumerate(v.layers):
        assert layer["heads"].shape == (12, T, T)
        torch.testing.assert_close(layer["heads"], ref[l, 0].float())


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """Two untrained translation runs laid out as `attnlab train translate` writes them."""
    translate = pytest.importorskip("attnlab.translate")
    from attnlab.data.tokenizer import SubwordTokenizer
    from attnlab.models.registry import build_model
    from attnlab.train.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("runs")
    texts = ["Ich möchte dir helfen.", "I want to help you.", "Das ist gut.", "That is good."] * 3
    tok = SubwordTokenizer.train(texts, vocab_size=60, min_frequency=1)
    sizes = {
        "rnnsearch": dict(emb_size=8, enc_hidden=8, dec_hidden=8, attn_hidden=8, maxout_size=8),
        "rnnenc": dict(emb_size=8, hidden_size=8),
    }
    runs = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for name, s in sizes.items():
            model = build_model(name, src_vocab=tok.vocab_size, tgt_vocab=tok.vocab_size, **s)
            tok.save(root / name)
            save_checkpoint(root / name / "best", model, config=model.config)
            runs[name] = root / name
    return translate, runs


def test_checkpoint_source_shows_the_alignment_translate_computes(tiny_runs):
    translate, runs = tiny_runs
    v = viz_cli.load_attention(str(runs["rnnsearch"]), "Ich möchte dir helfen.")
    (tr,) = translate.Translator.load(runs["rnnsearch"]).translate(["Ich möchte dir helfen."])
    assert v.query_tokens == tr.target_tokens and v.key_tokens == tr.source_tokens
    assert v.key_tokens[-1] == "</s>"
    (layer,) = v.layers
    assert layer["heads"].shape == (1, len(tr.target_tokens), len(tr.source_tokens))
    torch.testing.assert_close(layer["heads"][0], tr.attention)
    assert (v.query_label, v.key_label) == ("target (generated)", "source")
    assert v.meta["model"] == "rnnsearch"
    # A checkpoint directory inside the run works too.
    v2 = viz_cli.load_attention(str(runs["rnnsearch"] / "best"), "Ich möchte dir helfen.")
    torch.testing.assert_close(v2.layers[0]["heads"], layer["heads"])
    v.html()  # builds


def test_checkpoint_without_attention_is_a_clear_error(tiny_runs):
    _, runs = tiny_runs
    with pytest.raises(ValueError, match="reads no attention"):
        viz_cli.load_attention(str(runs["rnnenc"]), "Ich möchte dir helfen.")


def test_unknown_model_and_empty_text_are_clear_errors():
    with pytest.raises(ValueError, match=r"unknown model 'nope'.*minilm, random"):
        viz_cli.load_attention("nope", "hi")
    with pytest.raises(ValueError, match="text is empty"):
        viz_cli.load_attention("random", "   ")
    with pytest.raises(TypeError, match="model must be a str"):
        viz_cli.load_attention(3, "hi")
    with pytest.raises(ValueError, match="seed must be an int >= 0"):
        viz_cli.random_attention("hi", seed=-1)


# ----------------------------------------------------------------------------- the command


def _run(argv):
    parser = argparse.ArgumentParser(prog="attnlab")
    viz_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_command_writes_one_page_in_the_current_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert _run(["viz", "random", "the cat sat", "--view", "heatmap", "--seed", "2"]) == 0
    assert os.listdir(tmp_path) == ["attention-random.html"]
    page = (tmp_path / "attention-random.html").read_text(encoding="utf-8")
    data = _data(page)
    assert data["view"] == "heatmap" and "seed 2" in data["meta"]["model"]
    assert "attention-random.html" in capsys.readouterr().out
    assert _run(["viz", "random", "the cat sat", "--out", "sub.html"]) == 0
    assert (tmp_path / "sub.html").is_file()


def test_default_name_of_a_checkpoint_page():
    assert str(viz_cli._default_out("runs/my run/best")) == "attention-my-run-best.html"
    assert str(viz_cli._default_out("minilm")) == "attention-minilm.html"


@pytest.mark.parametrize(
    "argv, match",
    [
        (["viz", "random", " "], "text is empty"),
        (["viz", "random", "hi", "--out", "missing/x.html"], "folder 'missing' does not exist"),
        (["viz", "random", "hi", "--out", "."], "is a folder"),
        (["viz", "minilm", "hi", "--seed", "3"], "--seed only applies to the random model"),
        (["viz", "no-such-model", "hi"], "unknown model 'no-such-model'"),
    ],
)
def test_command_errors(tmp_path, monkeypatch, argv, match):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=match):
        _run(argv)
    assert os.listdir(tmp_path) == []

