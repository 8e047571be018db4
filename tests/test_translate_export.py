"""Shipping translation models: ``attnlab export translate``, the shipped-model default of
``translate`` / ``evaluate``, and the training-source settings of the combined corpus."""

from __future__ import annotations

import argparse
import json
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from attnlab import cli
from attnlab import translate as tr

FIXTURE = Path(__file__).parent / "data" / "fixtures" / "de-en-excerpt.txt"
DATA = ["--data", str(FIXTURE), "--valid-size", "3", "--test-size", "3", "--vocab-size", "300"]
TINY = ["--width", "8", "--batch-tokens", "80", "--eval-every", "2", "--valid-sentences", "3", "--quiet"]
SENTENCE = "Ich möchte dir helfen."


@pytest.fixture
def attnlab(monkeypatch, capsys):
    modules = tuple(cli.COMMAND_MODULES)
    if "attnlab.translate" not in modules:
        monkeypatch.setattr(cli, "COMMAND_MODULES", modules + ("attnlab.translate",))

    def run(*argv):
        capsys.readouterr()
        try:
            rc = cli.main([str(a) for a in argv])
        except SystemExit as exc:
            rc = exc.code
        out, err = capsys.readouterr()
        return rc, out, err

    return run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "transformer"
    rc = cli.main(["train", "translate", "--model", "transformer", "--out", str(out), "--steps", "4",
                   "--heads", "2", "--layers", "1", *TINY, *DATA])
    assert rc == 0
    return out


def test_export_writes_half_precision_weights_that_translate_like_the_run(run_dir, tmp_path, attnlab):
    out = tmp_path / "shipped"
    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps({"bleu": 1.25, "chrf": 10.5, "sentences": 3}))
    rc, stdout, err = attnlab("export", "translate", "--checkpoint", run_dir, "--out", out, "--scores", scores)
    assert rc == 0, err
    assert "float16" in stdout
    weights = load_file(str(out / "best" / "weights.safetensors"))
    assert weights and all(t.dtype == torch.float16 for t in weights.values())
    assert not (out / "best" / "optimizer.json").exists()
    record = tr.read_run(out)
    assert record["exported"]["dtype"] == "float16"
    assert record["exported"]["scores"]["bleu"] == 1.25
    assert record["model"] == "transformer"
    examples = record["exported"]["examples"]
    assert [e["de"] for e in examples] == list(tr.EXPORT_SENTENCES)
    again = tr.Translator.load(out).translate(list(tr.EXPORT_SENTENCES), beam=tr.EXPORT_BEAM)
    assert [e["en"] for e in examples] == [t.text for t in again]

    run, shipped = tr.Translator.load(run_dir), tr.Translator.load(out)
    assert next(shipped.model.parameters()).dtype == torch.float32  # cast back on load
    for name, p in run.model.state_dict().items():
        torch.testing.assert_close(shipped.model.state_dict()[name], p.half().float())
    # Same model to within float16 rounding: the first decoder step's log-probabilities agree.
    src = torch.tensor([run.tokenizer.encode(SENTENCE, add_bos=False, add_eos=True)])
    lengths = torch.tensor([src.shape[1]])
    tgt = torch.tensor([[run.tokenizer.bos_id]])
    a = run.model(src, lengths, tgt).log_softmax(-1)
    b = shipped.model(src, lengths, tgt).log_softmax(-1)
    torch.testing.assert_close(a, b, atol=2e-2, rtol=0)


def test_export_evaluate_records_the_scores_evaluate_reproduces(run_dir, tmp_path, attnlab):
    out = tmp_path / "scored"
    rc, stdout, err = attnlab("export", "translate", "--checkpoint", run_dir, "--out", out, "--evaluate", "2")
    assert rc == 0, err
    rec = tr.read_run(out)["exported"]["scores"]
    assert rec["beam"] == 2 and rec["sentences"] == 3 and rec["split"] == "test"
    assert f"BLEU {rec['bleu']:.2f}" in stdout
    js = tmp_path / "again.json"
    rc, stdout, err = attnlab("evaluate", "--checkpoint", out, "--json", js)  # beam 2 from the record
    assert rc == 0, err
    assert "beam 2" in stdout
    again = json.loads(js.read_text())
    assert again["bleu"] == pytest.approx(rec["bleu"]) and again["chrf"] == pytest.approx(rec["chrf"])
    scores = tmp_path / "s.json"
    scores.write_text(json.dumps({"bleu": 1.0}))
    rc, _, err = attnlab("export", "translate", "--checkpoint", run_dir, "--out", tmp_path / "x",
                         "--evaluate", "2", "--scores", scores)
    assert rc != 0 and "--scores or --evaluate, not both" in err


def test_length_penalty_is_exported_read_back_and_overridable(run_dir, tmp_path, attnlab, monkeypatch):
    from attnlab.models import decoding

    seen = []
    beam_search = decoding.beam_search

    def spy(*args, **kwargs):
        seen.append(kwargs["length_penalty"])
        return beam_search(*args, **kwargs)

    monkeypatch.setattr(decoding, "beam_search", spy)
    out = tmp_path / "alpha"
    rc, stdout, err = attnlab("export", "translate", "--checkpoint", run_dir, "--out", out, "--evaluate", "2",
                              "--length-penalty", "1.5")
    assert rc == 0, err
    assert set(seen) == {1.5}  # the scores and the recorded examples were decoded with it
    exported = tr.read_run(out)["exported"]
    assert exported["length_penalty"] == 1.5 and exported["scores"]["length_penalty"] == 1.5
    assert "length penalty 1.5" in stdout
    assert tr.Translator.load(out).length_penalty == 1.5
    assert tr.Translator.load(run_dir).length_penalty == tr.DEFAULT_LENGTH_PENALTY  # not exported: the default

    seen.clear()
    js = tmp_path / "again.json"
    rc, stdout, err = attnlab("evaluate", "--checkpoint", out, "--json", js)  # beam and alpha from the record
    assert rc == 0, err
    assert "beam 2, length penalty 1.5" in stdout and set(seen) == {1.5}
    assert json.loads(js.read_text())["bleu"] == pytest.approx(exported["scores"]["bleu"])
    seen.clear()
    rc, _, err = attnlab("translate", "--checkpoint", out, SENTENCE, "--length-penalty", "0")
    assert rc == 0, err
    assert seen == [0.0]

    rc, _, err = attnlab("translate", "--checkpoint", out, SENTENCE, "--length-penalty", "-1")
    assert rc == 2 and "--length-penalty: expected a number >= 0, got -1" in err
    with pytest.raises(ValueError, match="length_penalty must be a float >= 0 \\(the GNMT alpha, finite"):
        tr.Translator(tr.Translator.load(out).model, tr.Translator.load(out).tokenizer, length_penalty=float("nan"))


def test_export_average_writes_the_mean_of_the_checkpoints(run_dir, tmp_path, attnlab):
    out = tmp_path / "averaged"
    rc, _, err = attnlab("export", "translate", "--checkpoint", run_dir, "--out", out, "--dtype", "float32",
                         "--average", run_dir / "last", run_dir / "best")
    assert rc == 0, err
    assert tr.read_run(out)["exported"]["averaged"] == [str(run_dir / "last"), str(run_dir / "best")]
    last, best = (load_file(str(run_dir / d / "weights.safetensors")) for d in ("last", "best"))
    got = load_file(str(out / "best" / "weights.safetensors"))
    for k, v in got.items():
        torch.testing.assert_close(v, (last[k].double() + best[k].double()).div(2).float())


def test_export_refuses_its_own_run_directory_and_bad_scores(run_dir, tmp_path, attnlab):
    rc, _, err = attnlab("export", "translate", "--checkpoint", run_dir, "--out", run_dir)
    assert rc == 1 and "is the run directory itself" in err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    rc, _, err = attnlab("export", "translate", "--checkpoint", run_dir, "--out", tmp_path / "x", "--scores", bad)
    assert rc == 1 and "--scores" in err


def test_translate_and_evaluate_default_to_the_shipped_model(run_dir, tmp_path, attnlab, monkeypatch):
    root = tmp_path / "pretrained"
    tr.export_translator(run_dir, root / tr.PRETRAINED["transformer"])
    monkeypatch.setattr(tr, "PRETRAINED_ROOT", root)
    rc, out_default, err = attnlab("translate", SENTENCE)
    assert rc == 0, err
    rc, out_named, err = attnlab("translate", "--checkpoint", "transformer", SENTENCE)
    assert rc == 0, err
    assert out_default == out_named
    # evaluate rebuilds only the held-out split of the shipped run's data settings.
    record = json.loads((root / tr.PRETRAINED["transformer"] / "run.json").read_text())
    assert record["data"]["path"] == str(FIXTURE)
    rc, out, err = attnlab("evaluate", "--split", "valid", "--json", tmp_path / "s.json")
    assert rc == 0, err
    assert json.loads((tmp_path / "s.json").read_text())["sentences"] == 3


def test_a_missing_shipped_model_is_a_clean_error(tmp_path, attnlab, monkeypatch):
    monkeypatch.setattr(tr, "PRETRAINED_ROOT", tmp_path / "nothing")
    rc, _, err = attnlab("translate", SENTENCE)
    assert rc == 1
    assert "shipped transformer model is missing" in err and "attnlab train translate" in err
    with pytest.raises(ValueError, match="unknown shipped model 'gpt'.*transformer, rnnsearch"):
        tr.pretrained_path("gpt")


# ----------------------------------------------------------------------------- sources


def test_data_settings_validate_and_normalize_sources():
    s = tr.DataSettings(sources=["ding-sentences", "gettext"])
    assert s.sources == ("ding-sentences", "gettext")
    assert tr.DataSettings(**json.loads(json.dumps(s.__dict__))) == s  # run.json round trip
    with pytest.raises(ValueError, match="sources must name training sources from .*gettext.*'wiki'"):
        tr.DataSettings(sources=("ding-sentences", "wiki"))
    with pytest.raises(ValueError, match="must include 'ding-sentences'"):
        tr.DataSettings(sources=("gettext",))
    with pytest.raises(ValueError, match="sentence_repeat must be a positive int"):
        tr.DataSettings(sentence_repeat=0)


def test_sources_argument():
    assert tr._sources_arg("all") == tr.CORPUS_SOURCES
    assert tr._sources_arg("gettext, ding-words") == ("ding-sentences", "gettext", "ding-words")
    with pytest.raises(argparse.ArgumentTypeError, match="unknown source.*wiki.*valid: all"):
        tr._sources_arg("gettext,wiki")


def test_held_out_only_and_sentence_repeat():
    base = tr.DataSettings(path=str(FIXTURE), valid=3, test=3)
    full = tr.load_splits(base)
    held = tr.load_splits(base, held_out_only=True)
    assert held["train"] == [] and held["valid"] == full["valid"] and held["test"] == full["test"]
    twice = tr.load_splits(tr.DataSettings(path=str(FIXTURE), valid=3, test=3, sentence_repeat=2))
    assert twice["train"] == list(full["train"]) * 2


def test_combined_sources_take_train_from_the_corpus_and_check_its_held_out_split(monkeypatch):
    base = tr.DataSettings(path=str(FIXTURE), valid=3, test=3)
    everyday = tr.load_splits(base)
    Pair = types.SimpleNamespace
    corpus = types.SimpleNamespace(
        train=(Pair(de="Haus", en="house", source="ding-words"),
               Pair(de=everyday["train"][0][0], en=everyday["train"][0][1], source="ding-sentences")),
        valid=tuple(everyday["valid"]), test=tuple(everyday["test"]),
    )
    calls = []

    def fake_load_corpus(sources, **kwargs):
        calls.append((sources, kwargs))
        return corpus

    import attnlab.data.corpus_de_en as corpus_module

    monkeypatch.setattr(corpus_module, "load_corpus", fake_load_corpus)
    settings = tr.DataSettings(path=str(FIXTURE), valid=3, test=3, sources=("ding-sentences", "ding-words"),
                               sentence_repeat=3)
    splits = tr.load_splits(settings)
    assert calls and calls[0][0] == ("ding-sentences", "ding-words")
    assert splits["train"] == [("Haus", "house")] + [everyday["train"][0]] * 3
    assert splits["test"] == everyday["test"]

    corpus.test = tuple(everyday["test"][:-1])
    with pytest.raises(ValueError, match="valid/test splits differ"):
        tr.load_splits(settings)


def test_viz_names_the_shipped_models(run_dir, tmp_path, monkeypatch):
    from attnlab import viz_cli

    root = tmp_path / "pretrained"
    tr.export_translator(run_dir, root / tr.PRETRAINED["transformer"])
    monkeypatch.setattr(tr, "PRETRAINED_ROOT", root)
    shipped = viz_cli.load_attention("transformer", SENTENCE)
    direct = viz_cli.load_attention(str(root / tr.PRETRAINED["transformer"]), SENTENCE)
    assert shipped.query_tokens == direct.query_tokens and shipped.key_tokens == direct.key_tokens
    torch.testing.assert_close(shipped.layers[0]["heads"], direct.layers[0]["heads"])
    with pytest.raises(FileNotFoundError, match="shipped rnnsearch model is missing"):
        viz_cli.load_attention("rnnsearch", SENTENCE)


def test_decoding_label_names_the_recorded_beam_and_length_penalty():
    assert tr._decoding_label({}) == "-"
    assert tr._decoding_label({"bleu": 1.0, "beam": 1}) == "greedy"
    assert tr._decoding_label({"bleu": 1.0, "beam": 4}) == "beam 4"  # exported before the alpha was recorded
    assert tr._decoding_label({"bleu": 1.0, "beam": 4, "length_penalty": 1.5}) == "beam 4, length penalty 1.5"
