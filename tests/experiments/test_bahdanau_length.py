"""``attnlab experiment bahdanau-length``: length bins, per-bin sacreBLEU on hand-made
hypotheses, the markdown table, the plot, and a tiny end-to-end run on the fixture corpus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sacrebleu

from attnlab import cli
from attnlab.experiments import bahdanau_length as bl
from attnlab.experiments.bahdanau_length import BinScore, LengthBin

FIXTURE = Path(__file__).parents[1] / "data" / "fixtures" / "de-en-excerpt.txt"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- bins


def test_parse_bins_and_labels():
    bins = bl.parse_bins("1-5, 6-8,9,10-")
    assert bins == (LengthBin(1, 5), LengthBin(6, 8), LengthBin(9, 9), LengthBin(10, None))
    assert [b.label for b in bins] == ["1-5", "6-8", "9", "10+"]
    assert [b.label for b in bl.parse_bins(bl.DEFAULT_BINS)] == ["1-5", "6-8", "9-11", "12-14", "15+"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "bins must be comma-separated ranges"),
        ("1-5,x-9", "cannot read 'x-9'"),
        ("5-3", "cannot read '5-3'"),
        ("1-5,4-8", "'4-8' overlaps or precedes 1-5"),
        ("6-8,1-5", "'1-5' overlaps or precedes 6-8"),
        ("1-,6-8", "only the last bin may be open-ended"),
    ],
)
def test_parse_bins_rejects_bad_ranges(text, message):
    with pytest.raises(ValueError, match="bins"):
        bl.parse_bins(text)
    with pytest.raises(ValueError) as info:
        bl.parse_bins(text)
    assert message in str(info.value)


def test_assign_bins_edges_and_gaps():
    bins = bl.parse_bins("3-5,6-8,12-")
    assert bl.assign_bins([3, 5, 6, 8, 9, 11, 12, 40, 2], bins) == [0, 0, 1, 1, None, None, 2, 2, None]


# ----------------------------------------------------------------------------- scores


REFS = [
    "The cat sat on the mat.",  # 3 source words
    "We have visitors today.",  # 4
    "He learns quickly and he forgets nothing at all.",  # 7
    "She was confident that she would win the race.",  # 8
    "Sound pressure is expressed in units such as pascal or microbar.",  # 12
]
LENGTHS = [3, 4, 7, 8, 12]
HYPS = [
    "The cat sat on the mat.",  # perfect
    "We have visitors today.",  # perfect
    "He learns quickly and he forgets nothing at all.",  # perfect
    "She thought she would lose.",  # poor
    "Pressure units are many.",  # poor
]


def test_bleu_by_length_matches_sacrebleu_on_each_bin():
    bins = bl.parse_bins("1-5,6-8,9-11,12-")
    scores = bl.bleu_by_length(LENGTHS, HYPS, REFS, bins)
    assert [s.sentences for s in scores] == [2, 2, 0, 1]
    assert scores[0].bleu == pytest.approx(100.0) and scores[0].chrf == pytest.approx(100.0)
    mid = sacrebleu.corpus_bleu(HYPS[2:4], [REFS[2:4]]).score
    assert scores[1].bleu == pytest.approx(mid) and 0 < mid < 100
    assert scores[1].chrf == pytest.approx(sacrebleu.corpus_chrf(HYPS[2:4], [REFS[2:4]]).score)
    assert scores[2] == BinScore(bins[2], 0, None, None)  # empty bin: no score, not zero
    assert scores[3].bleu == pytest.approx(sacrebleu.corpus_bleu(HYPS[4:], [REFS[4:]]).score)
    assert bl.retention(scores) == pytest.approx(scores[3].bleu / 100.0)


def test_bleu_by_length_needs_one_entry_per_sentence():
    with pytest.raises(ValueError, match="one entry per sentence, got 5, 4 and 5"):
        bl.bleu_by_length(LENGTHS, HYPS[:4], REFS, bl.parse_bins("1-"))


def test_retention_edge_cases():
    b1, b2 = LengthBin(1, 5), LengthBin(6, None)
    assert bl.retention([BinScore(b1, 3, 20.0, 1.0), BinScore(b2, 2, 5.0, 1.0)]) == 0.25
    assert bl.retention([BinScore(b1, 3, 20.0, 1.0), BinScore(b2, 0, None, None)]) is None  # one filled bin
    assert bl.retention([BinScore(b1, 3, 0.0, 1.0), BinScore(b2, 2, 5.0, 1.0)]) is None  # no BLEU to keep
    assert bl.retention([BinScore(b1, 3, 0.0, 40.0), BinScore(b2, 2, 5.0, 10.0)], "chrf") == 0.25


def test_markdown_table_by_hand():
    b1, b2 = LengthBin(1, 5), LengthBin(6, None)
    results = {
        "rnnenc": [BinScore(b1, 2, 20.0, 40.0), BinScore(b2, 1, 5.0, 20.0)],
        "rnnsearch": [BinScore(b1, 2, 22.0, 41.0), BinScore(b2, 1, 11.0, 30.0)],
    }
    assert bl.markdown_table(results, {"rnnenc": 15.0, "rnnsearch": 18.3}) == (
        "| source words | sentences | rnnenc BLEU | rnnsearch BLEU |\n"
        "|---|---:|---:|---:|\n"
        "| 1-5 | 2 | 20.0 | 22.0 |\n"
        "| 6+ | 1 | 5.0 | 11.0 |\n"
        "| **all** | 3 | 15.0 | 18.3 |\n"
        "| **last bin / first bin** | | 0.25 | 0.50 |\n"
    )
    assert bl.markdown_table(results, metric="chrf") == (
        "| source words | sentences | rnnenc chrF | rnnsearch chrF |\n"
        "|---|---:|---:|---:|\n"
        "| 1-5 | 2 | 40.0 | 41.0 |\n"
        "| 6+ | 1 | 20.0 | 30.0 |\n"
        "| **last bin / first bin** | | 0.50 | 0.73 |\n"
    )
    with pytest.raises(ValueError, match="unknown metric 'ter'; valid metrics: bleu, chrf"):
        bl.markdown_table(results, metric="ter")
    results["rnnenc"][1] = BinScore(b2, 0, None, None)
    assert "| 6+ | 0 | – | 11.0 |" in bl.markdown_table(results)
    with pytest.raises(ValueError, match="other bins"):
        bl.markdown_table({"a": results["rnnenc"], "b": results["rnnsearch"][:1]})
    with pytest.raises(ValueError, match="results is empty"):
        bl.markdown_table({})


def test_plot_writes_a_png_with_one_line_per_model(tmp_path):
    b1, b2, b3 = LengthBin(1, 5), LengthBin(6, 8), LengthBin(9, None)
    results = {
        "rnnenc": [BinScore(b1, 4, 20.0, 30.0), BinScore(b2, 3, 10.0, 25.0), BinScore(b3, 0, None, None)],
        "rnnsearch": [BinScore(b1, 4, 21.0, 31.0), BinScore(b2, 3, 19.0, 30.0), BinScore(b3, 0, None, None)],
    }
    fig = bl.plot_bleu_by_length(results, tmp_path / "p.png", title="t")
    assert (tmp_path / "p.png").read_bytes().startswith(PNG_MAGIC)
    bleu_ax, chrf_ax = fig.axes[:2]
    lines = bleu_ax.get_lines()
    assert [line.get_label() for line in lines] == ["rnnenc", "rnnsearch"]
    assert list(lines[1].get_ydata()) == [21.0, 19.0]  # the empty bin is left out, not drawn as 0
    assert bleu_ax.get_ylabel() == "BLEU" and chrf_ax.get_ylabel() == "chrF"
    assert list(chrf_ax.get_lines()[0].get_ydata()) == [30.0, 25.0]


# ----------------------------------------------------------------------------- end to end


def test_tiny_experiment_end_to_end(tmp_path):
    from attnlab.translate import DataSettings, TrainOptions

    lines: list[str] = []
    res = bl.run_experiment(
        tmp_path / "exp", models=("rnnenc", "rnnsearch", "transformer"), minutes=0.005, params=30_000,
        vocab_size=300, bins="1-5,6-", data=DataSettings(path=str(FIXTURE), valid=3, test=4),
        options=TrainOptions(batch_tokens=80, quiet=True, valid_sentences=2), command="attnlab experiment x",
        print_fn=lines.append,
    )
    assert set(res.scores) == {"rnnenc", "rnnsearch", "transformer"}
    for name, r in res.runs.items():
        assert abs(r["parameters"] - 30_000) < 8_000, name  # same budget for all
    assert res.runs["transformer"]["sizes"]["num_encoder_layers"] == 2
    assert sum(s.sentences for s in res.scores["rnnenc"]) == 4
    saved = json.loads((tmp_path / "exp" / "results.json").read_text())
    assert saved["by_length"]["rnnsearch"][0]["bin"] == "1-5"
    assert saved["settings"]["test_sentences"] == 4
    md = res.markdown.read_text()
    assert "attnlab experiment x" in md and "| source words | sentences | rnnenc BLEU" in md
    assert "| source words | sentences | rnnenc chrF" in md
    assert res.plot.read_bytes().startswith(PNG_MAGIC)
    assert any("rnnsearch BLEU" in line for line in lines)

    # Scoring the trained runs again with --checkpoints (no training) gives the same figures.
    out = tmp_path / "scored"
    rc = cli.main(["experiment", "bahdanau-length", "--checkpoints", f"A={tmp_path / 'exp' / 'rnnenc'}",
                   f"B={tmp_path / 'exp' / 'rnnsearch' / 'best'}", "--out", str(out), "--bins", "1-5,6-",
                   "--threads", "1"])
    assert rc == 0
    again = json.loads((out / "results.json").read_text())
    assert again["settings"]["mode"] == "checkpoints" and again["settings"]["test_sentences"] == 4
    assert again["overall"]["A"] == pytest.approx(res.overall["rnnenc"])
    assert again["overall"]["B"] == pytest.approx(res.overall["rnnsearch"])
    assert again["by_length"]["A"] == saved["by_length"]["rnnenc"]
    assert again["runs"]["A"]["steps"] == res.runs["rnnenc"]["steps"]
    assert "| A | `" in (out / "bahdanau_length.md").read_text()

    # Runs with different test splits do not compare: a clear error, nothing written.
    import shutil

    other = tmp_path / "other"
    shutil.copytree(tmp_path / "exp" / "rnnenc", other)
    shutil.copy(tmp_path / "exp" / "tokenizer.json", other / "tokenizer.json")
    record = json.loads((other / "run.json").read_text())
    record["data"]["test"] = 3
    (other / "run.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="B was trained with another test split than A"):
        bl.score_checkpoints({"A": tmp_path / "exp" / "rnnenc", "B": other}, tmp_path / "no", print_fn=lines.append)
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--bins", "5-3"], "bins: cannot read '5-3'"),
        (["--models", "rnnenc,gpt"], "--models: unknown model(s) gpt; valid models: seq2seq, rnnenc"),
        (["--models", ","], "--models: unknown model(s) (none given)"),
        (["--checkpoints", "runs/x"], "--checkpoints: expected NAME=DIR (e.g. RNNenc=runs/full/rnnenc), got 'runs/x'"),
        (["--checkpoints", "a=x", "a=y"], "--checkpoints: the name 'a' is given twice"),
    ],
)
def test_cli_bad_input_gives_one_clean_line_before_training(monkeypatch, capsys, tmp_path, argv, message):
    rc = cli.main(["experiment", "bahdanau-length", "--out", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1
    assert err.startswith("attnlab experiment: error: ") and message in err
    assert not (tmp_path / "o").exists()
