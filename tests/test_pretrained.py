"""The translation models shipped inside the package (``attnlab/pretrained``): they load
offline, translate the sentences recorded at export exactly, and reproduce their recorded
test BLEU / chrF through ``attnlab evaluate`` (issue 8)."""

from __future__ import annotations

import json

import pytest

from attnlab import cli
from attnlab import translate as tr

SHIPPED = [name for name in tr.PRETRAINED if (tr.PRETRAINED_ROOT / tr.PRETRAINED[name] / tr.RUN_FILE).is_file()]
# The Transformer is the default model of `attnlab translate`; issue 8 ships an RNNsearch beside it.
REQUIRED = ("transformer", "rnnsearch")


def test_the_default_translation_model_is_shipped_and_small():
    for name in REQUIRED:
        assert name in SHIPPED, f"the shipped {name} model is missing under {tr.PRETRAINED_ROOT}"
    total = sum(f.stat().st_size for f in tr.PRETRAINED_ROOT.rglob("*") if f.is_file())
    assert total < 60 * 2**20, f"shipped models take {total / 2**20:.1f} MiB; the budget is 60 MB"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_translates_the_recorded_sentences_exactly(name):
    record = tr.read_run(tr.pretrained_path(name))
    examples = record["exported"]["examples"]
    assert examples, "export records translations of fixed sentences"
    translator = tr.Translator.load(name)
    for beam in {e["beam"] for e in examples}:
        chosen = [e for e in examples if e["beam"] == beam]
        first = translator.translate([e["de"] for e in chosen], beam=beam)
        second = translator.translate([e["de"] for e in chosen], beam=beam)
        assert [t.text for t in first] == [t.text for t in second]  # deterministic
        assert [t.text for t in first] == [e["en"] for e in chosen]  # and what was shipped
        for t in first:
            assert t.attention is not None and t.attention.shape == (len(t.target_tokens), len(t.source_tokens))


@pytest.mark.parametrize("name", SHIPPED)
def test_evaluate_reproduces_the_recorded_test_scores(name, tmp_path, capsys):
    recorded = tr.read_run(tr.pretrained_path(name))["exported"]["scores"]
    assert {"bleu", "chrf", "sentences", "beam"} <= set(recorded)  # written by `export translate --evaluate`
    out = tmp_path / "scores.json"
    # --beam left out: evaluate uses the beam the recorded scores were measured with.
    rc = cli.main(["evaluate", "--checkpoint", name, "--json", str(out), "--threads", "2"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert (f"beam {recorded['beam']}" if recorded["beam"] > 1 else "greedy") in printed
    got = json.loads(out.read_text())
    assert got["sentences"] == recorded["sentences"]
    assert abs(got["bleu"] - recorded["bleu"]) <= 0.1
    assert abs(got["chrf"] - recorded["chrf"]) <= 0.1
