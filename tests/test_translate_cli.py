"""``attnlab train translate`` / ``translate`` / ``evaluate`` / ``demo translate`` end to end on
the real-format fixture corpus (23 pairs), with tiny models trained for a few steps; and
the HTML report builder they use."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from attnlab import cli
from attnlab import translate as tr

FIXTURE = Path(__file__).parent / "data" / "fixtures" / "de-en-excerpt.txt"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# 23 pairs -> 3 valid, 3 test, 17 train; a tiny vocabulary and model keep every run to seconds.
DATA = ["--data", str(FIXTURE), "--valid-size", "3", "--test-size", "3", "--vocab-size", "300"]
TINY = ["--width", "8", "--batch-tokens", "80", "--eval-every", "2", "--valid-sentences", "3", "--quiet"]


def _with_our_commands() -> tuple[str, ...]:
    modules = tuple(cli.COMMAND_MODULES)
    for name in ("attnlab.translate", "attnlab.experiments.bahdanau_length"):
        if name not in modules:
            modules += (name,)
    return modules


@pytest.fixture
def attnlab(monkeypatch, capsys):
    """Run the real ``attnlab`` entry point with this module's commands registered."""
    monkeypatch.setattr(cli, "COMMAND_MODULES", _with_our_commands())

    def run(*argv):
        capsys.readouterr()
        try:
            rc = cli.main([str(a) for a in argv])
        except SystemExit as exc:  # argparse errors
            rc = exc.code
        out, err = capsys.readouterr()
        return rc, out, err

    return run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny RNNsearch run, 4 steps (shared by the read-only tests)."""
    out = tmp_path_factory.mktemp("runs") / "rnnsearch"
    mp = pytest.MonkeyPatch()
    mp.setattr(cli, "COMMAND_MODULES", _with_our_commands())
    try:
        rc = cli.main(["train", "translate", "--model", "rnnsearch", "--out", str(out), "--steps", "4", *TINY, *DATA])
    finally:
        mp.undo()
    assert rc == 0
    return out


def _state(ckpt: Path) -> dict:
    return json.loads((ckpt / "state.json").read_text())


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got {err!r}"
    assert "Traceback" not in err
    return lines[0]


# ----------------------------------------------------------------------------- train


def test_train_writes_everything_translate_needs(trained):
    assert {"run.json", "tokenizer.json", "last", "best", "metrics.jsonl"} <= {p.name for p in trained.iterdir()}
    for ckpt in ("last", "best"):
        assert (trained / ckpt / "weights.safetensors").is_file()
        assert (trained / ckpt / "state.json").is_file()
    record = tr.read_run(trained)
    assert record["model"] == "rnnsearch"
    assert record["config"]["emb_size"] == 8 and record["config"]["enc_hidden"] == 8
    assert record["config"]["src_vocab"] == record["vocab_size"] == record["config"]["tgt_vocab"]
    assert record["data"]["valid"] == 3 and record["data"]["test"] == 3
    assert record["train_pairs"] == 23 - 6
    assert _state(trained / "last")["state"]["progress"]["step"] == 4
    # the checkpoint carries the model config, so translate needs nothing else
    assert _state(trained / "last")["config"]["name"] == "rnnsearch"
    log = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in log if r["kind"] == "valid"]
    assert [r["step"] for r in valid] == [2, 4]
    assert all({"bleu", "chrf", "nll"} <= set(r) for r in valid)


def test_resume_continues_from_the_saved_step(trained, tmp_path, attnlab):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    rc, out, err = attnlab("train", "translate", "--out", run, "--resume", "--steps", "6", "--quiet")
    assert rc == 0, err
    assert "6 steps" in out
    assert _state(run / "last")["state"]["progress"]["step"] == 6
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    resumed = [e for e in events if e.get("event") == "resume"]
    assert len(resumed) == 1 and resumed[0]["step"] == 4
    # the log reads as one run: each step trained once
    valid_steps = [e["step"] for e in events if e["kind"] == "valid"]
    assert valid_steps == [2, 4, 6]
    assert tr.read_run(run)["train"]["steps"] == 6


def test_bfloat16_transformer_without_ffn_dropout_trains_and_records_its_settings(tmp_path, attnlab):
    run = tmp_path / "bf16"
    rc, _, err = attnlab("train", "translate", "--model", "transformer", "--out", run, "--steps", "2", "--width", "16",
                         "--heads", "2", "--layers", "1", "--precision", "bfloat16", "--set", "ffn_dropout=0",
                         "--eval-every", "2", "--valid-sentences", "2", *DATA)
    assert rc == 0, err
    record = tr.read_run(run)
    assert record["train"]["precision"] == "bfloat16" and record["config"]["ffn_dropout"] == 0.0
    assert _state(run / "last")["state"]["progress"]["step"] == 2
    net = tr.Translator.load(run).model
    assert net.encoder_layers[0].ffn.dropout.p == 0.0 and net.encoder_layers[0].dropout.p == 0.1
    assert all(p.dtype == torch.float32 for p in net.parameters())
    rc, _, err = attnlab("train", "translate", "--model", "transformer", "--out", tmp_path / "x", "--steps", "1",
                         "--set", "ffn_dropout=lots", *DATA)
    assert rc == 1 and "expected a float (or none) like the default None" in _one_line(err)
    rc, _, err = attnlab("train", "translate", "--model", "rnnsearch", "--out", tmp_path / "y", "--steps", "1",
                         "--precision", "float16", *DATA)
    assert rc == 2 and "--precision: invalid choice: 'float16'" in err


def test_init_from_warm_starts_a_new_run_with_the_source_tokenizer_and_weights(trained, tmp_path, attnlab):
    from attnlab.train.checkpoint import load_checkpoint

    run = tmp_path / "warm"
    rc, _, err = attnlab("train", "translate", "--init-from", trained, "--out", run, "--steps", "1", "--lr", "1e-9",
                         "--dropout", "0.3", "--eval-every", "1", "--valid-sentences", "2", "--quiet", *DATA)
    assert rc == 0, err
    record, source = tr.read_run(run), tr.read_run(trained)
    assert record["model"] == "rnnsearch" and record["init_from"] == str(trained / "best")
    assert record["config"] == {**source["config"], "dropout": 0.3}
    assert (run / "tokenizer.json").read_text() == (trained / "tokenizer.json").read_text()
    warm, ref = tr.Translator.load(run).model, tr.Translator.load(trained / "best").model
    for (n, p), q in zip(warm.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0, msg=n)  # one step at lr 1e-9 from the source
    assert _state(run / "last")["state"]["progress"]["step"] == 1  # the step count starts afresh
    # resuming keeps the record of where it started
    rc, _, err = attnlab("train", "translate", "--out", run, "--resume", "--steps", "2", "--quiet")
    assert rc == 0, err
    assert tr.read_run(run)["init_from"] == str(trained / "best")
    load_checkpoint(run / "last", warm)

    # a shipped float16 model is a valid start too
    rc, _, err = attnlab("train", "translate", "--init-from", "transformer", "--out", tmp_path / "ship", "--steps", "1",
                         "--set", "ffn_dropout=0", "--eval-every", "1", "--valid-sentences", "1", "--quiet", *DATA)
    assert rc == 0, err
    assert tr.read_run(tmp_path / "ship")["config"]["ffn_dropout"] == 0.0
    # recorded the same on every installation, not as this checkout's absolute path
    assert tr.read_run(tmp_path / "ship")["init_from"] == "attnlab/pretrained/de_en_transformer/best"

    for argv, message in [
        (["--width", "16"], "--init-from: --width come from the checkpoint"),
        (["--model", "transformer"], "--init-from .* holds a rnnsearch; leave --model out"),
        (["--resume"], "--init-from: a resumed run keeps its own start"),
        (["--set", "emb_size=4"], "does not fit|size mismatch|shape"),
    ]:
        rc, _, err = attnlab("train", "translate", "--init-from", trained, "--out", tmp_path / "bad", "--steps", "1",
                             *argv, *DATA)
        assert rc == 1 and re.search(message, _one_line(err)), (argv, err)
    rc, _, err = attnlab("train", "translate", "--init-from", tmp_path / "nowhere", "--out", tmp_path / "bad2",
                         "--steps", "1", *DATA)
    assert rc == 1 and "--init-from" in _one_line(err) and "no such directory" in err


def test_train_refuses_to_overwrite_and_to_resume_nothing(trained, tmp_path, attnlab):
    rc, _, err = attnlab("train", "translate", "--out", trained, "--steps", "1", *DATA)
    assert rc == 1 and "already holds a training run; add --resume" in _one_line(err)
    rc, _, err = attnlab("train", "translate", "--out", tmp_path / "empty", "--resume", "--steps", "1")
    assert rc == 1 and "run.json missing" in _one_line(err)
    rc, _, err = attnlab("train", "translate", "--out", trained, "--resume", "--model", "transformer", "--steps", "9")
    assert rc == 1 and "trains rnnsearch" in _one_line(err)
    rc, _, err = attnlab("train", "translate", "--out", trained, "--resume", "--width", "16", "--steps", "9")
    assert rc == 1 and "--width" in _one_line(err)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "rnnsearch", "--heads", "2"], "--heads applies to the transformer only"),
        (["--model", "rnnsearch", "--layers", "2"], "--layers does not apply to rnnsearch"),
        (["--model", "rnnsearch", "--set", "colour=blue"], "valid fields: attn_hidden"),
        (["--model", "rnnsearch", "--set", "emb_size=big"], "expected a int like the default 256"),
        (["--model", "rnnsearch", "--set", "readout=fancy"], "unknown readout 'fancy'; valid readouts: linear, maxout"),
        (["--model", "transformer", "--width", "10", "--heads", "3"], "d_model (10) must be divisible by num_heads (3)"),
        (["--model", "rnnenc", "--width", "8", "--params", "1000"], "give --width or --params, not both"),
        (["--data", "/no/such/ding-file"], "--data /no/such/ding-file: no such file"),
    ],
)
def test_bad_training_options_give_one_clean_line(attnlab, tmp_path, argv, message):
    rc, _, err = attnlab("train", "translate", "--out", tmp_path / "run", "--steps", "1", *argv)
    assert rc == 1
    line = _one_line(err)
    assert line.startswith("attnlab train: error: ") and message in line
    assert not (tmp_path / "run").exists()  # nothing written before the check


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--minutes", "0"], "argument --minutes: expected a positive number, got 0"),
        (["--model", "gpt"], "argument --model: invalid choice: 'gpt'"),
        ([], "the following arguments are required: --out"),
    ],
)
def test_argument_errors(attnlab, argv, message):
    rc, _, err = attnlab("train", "translate", *argv)
    assert rc == 2 and message in _one_line(err)


def test_train_needs_a_task(attnlab):
    rc, _, err = attnlab("train")
    assert rc == 2 and "required: TASK" in _one_line(err)


# ----------------------------------------------------------------------------- translate


def test_translate_prints_and_writes_the_alignment_heatmap(trained, tmp_path, attnlab):
    png = tmp_path / "align.png"
    rc, out, err = attnlab("translate", "--checkpoint", trained, "Ich möchte dir helfen.", "--heatmap", png,
                           "--max-len", "5")
    assert rc == 0, err
    assert len(out.splitlines()) == 1 and out.strip()
    assert png.read_bytes().startswith(PNG_MAGIC)
    assert f"saved to {png}" in err


def test_translator_attention_rows_are_target_tokens_and_columns_source_tokens(trained):
    translator = tr.Translator.load(trained)
    assert translator.name == "rnnsearch" and not translator.model.training
    [t] = translator.translate(["Wir haben Besuch."], max_len=7)
    assert 1 <= len(t.target_tokens) <= 7
    assert t.source_tokens[-1] == "</s>"
    assert t.attention.shape == (len(t.target_tokens), len(t.source_tokens))
    torch.testing.assert_close(t.attention.sum(-1), torch.ones(len(t.target_tokens)))
    assert t.text == translator.tokenizer.decode(translator.tokenizer.encode(t.text, add_eos=False))
    # a checkpoint directory inside the run works too; beam search returns its alignment as well
    [u] = tr.Translator.load(trained / "last").translate(["Wir haben Besuch."], beam=3, max_len=7)
    assert u.attention.shape == (len(u.target_tokens), len(u.source_tokens))


def test_translate_several_sentences_numbers_the_heatmaps(trained, tmp_path, attnlab):
    rc, out, err = attnlab("translate", "--checkpoint", trained, "Wir haben Besuch.", "Er lernt rasch.",
                           "--heatmap", tmp_path / "a.png", "--beam", "2", "--max-len", "4")
    assert rc == 0, err
    assert len(out.splitlines()) == 2
    assert (tmp_path / "a-1.png").is_file() and (tmp_path / "a-2.png").is_file()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--checkpoint", "{tmp}/missing", "Hallo."], "--checkpoint {tmp}/missing: no such directory"),
        (["--checkpoint", "{tmp}", "Hallo."], "--checkpoint {tmp}: no checkpoint inside (expected best/ or last/"),
        (["--checkpoint", "{run}", "   "], "sentence is empty"),
        (["--checkpoint", "{run}", "Hallo.", "", "--heatmap", "{tmp}/x.png"], "sentence 2 is empty"),
        (["--checkpoint", "{run}", "Hallo.", "--heatmap", "{tmp}/no/dir/x.png"], "folder '{tmp}/no/dir' does not exist"),
    ],
)
def test_translate_bad_input_gives_one_clean_line(trained, tmp_path, attnlab, argv, message):
    argv = [a.format(tmp=tmp_path, run=trained) for a in argv]
    rc, out, err = attnlab("translate", *argv)
    assert rc == 1 and out == ""
    line = _one_line(err)
    assert line.startswith("attnlab translate: error: ") and message.format(tmp=tmp_path) in line


def test_heatmap_of_a_model_without_attention_is_a_clean_error(tmp_path, attnlab):
    run = tmp_path / "rnnenc"
    rc, _, err = attnlab("train", "translate", "--model", "rnnenc", "--out", run, "--steps", "1", *TINY, *DATA)
    assert rc == 0, err
    rc, out, err = attnlab("translate", "--checkpoint", run, "Wir haben Besuch.", "--heatmap", tmp_path / "x.png",
                           "--max-len", "3")
    assert rc == 1 and out.strip()  # the translation is still printed
    assert "the rnnenc model has no attention weights to draw" in _one_line(err)
    assert not (tmp_path / "x.png").exists()


# ----------------------------------------------------------------------------- evaluate


def test_evaluate_writes_exactly_the_json_schema_with_sacrebleu_scores(trained, tmp_path, attnlab):
    import sacrebleu

    js, hyp = tmp_path / "scores.json", tmp_path / "hyp.txt"
    rc, out, err = attnlab("evaluate", "--checkpoint", trained, "--json", js, "--hypotheses", hyp)
    assert rc == 0, err
    scores = json.loads(js.read_text())
    assert set(scores) == {"bleu", "chrf", "sentences"}
    assert type(scores["bleu"]) is float and type(scores["chrf"]) is float and type(scores["sentences"]) is int
    assert scores["sentences"] == 3
    # independent check: sacrebleu on the written hypotheses against the test references
    test = tr.load_splits(tr.DataSettings(path=str(FIXTURE), valid=3, test=3))["test"]
    hyps = hyp.read_text().splitlines()
    assert len(hyps) == 3
    refs = [[en for _, en in test]]
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, refs).score)
    assert scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, refs).score)
    assert f"BLEU {scores['bleu']:.2f}" in out and "nrefs:1" in out


def test_evaluate_valid_split_and_missing_checkpoint(trained, tmp_path, attnlab):
    js = tmp_path / "v.json"
    rc, _, err = attnlab("evaluate", "--checkpoint", trained, "--split", "valid", "--json", js)
    assert rc == 0, err and json.loads(js.read_text())["sentences"] == 3
    rc, out, err = attnlab("evaluate", "--checkpoint", tmp_path / "nothing")
    assert rc == 1 and out == ""
    assert "--checkpoint" in _one_line(err) and "no such directory" in err


# ----------------------------------------------------------------------------- helpers


def test_display_tokens():
    pieces = ["\u2581Ich", "\u2581hel", "fen", ".", "\u2581", "X", "</s>", "<unk>"]
    assert tr.display_tokens(pieces) == ["Ich", "hel", "-fen", ".", "\u2581", "-X", "</s>", "<unk>"]


def test_model_sizes():
    assert tr.model_sizes("transformer", 100, width=16, heads=2)["d_model"] == 16
    assert tr.model_sizes("transformer", 100, width=16, layers=3)["num_decoder_layers"] == 3
    rnn = tr.model_sizes("rnnenc", 100, width=12, layers=2, dropout=0.0, overrides=["emb_size=5"])
    assert (rnn["hidden_size"], rnn["emb_size"], rnn["num_layers"], rnn["dropout"]) == (12, 5, 2, 0.0)
    from attnlab.models.registry import build_model, count_parameters

    budget = tr.model_sizes("rnnsearch", 300, params=50_000)
    assert abs(count_parameters(build_model("rnnsearch", **budget)) - 50_000) < 5_000
    with pytest.raises(ValueError, match="unknown model 'gpt'; valid models"):
        tr.model_sizes("gpt", 100)


# ----------------------------------------------------------------------------- demo and report


def test_demo_trains_both_models_prints_bleu_side_by_side_and_writes_a_self_contained_report(tmp_path):
    lines: list[str] = []
    result = tr.run_demo(
        tmp_path / "demo", minutes=0.01, params=20_000, vocab_size=300, examples=1, max_len=5,
        data=tr.DataSettings(path=str(FIXTURE), valid=3, test=3),
        options=tr.TrainOptions(batch_tokens=80, quiet=True, valid_sentences=3), print_fn=lines.append,
    )
    text = "\n".join(lines)
    table = [line for line in lines if re.match(r"(rnnsearch|rnnenc) +[\d.]+M +\d+ ", line)]
    assert len(table) == 2  # one score row per model
    for name in ("rnnsearch", "rnnenc"):
        assert f"{result.scores[name]['bleu']:.2f}" in text
        assert (tmp_path / "demo" / name / "best").is_dir()
    assert re.search(r"^German +Ich möchte dir helfen\.$", text, re.M)
    assert re.search(r"^reference +\S", text, re.M)
    html = result.report.read_text()
    assert html.startswith("<!DOCTYPE html>")
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert images and all(base64.b64decode(i).startswith(PNG_MAGIC) for i in images)
    assert "src=\"http" not in html and "<script" not in html  # nothing to fetch, nothing to run
    assert "RNNsearch" in html and "Alignments" in html
    # the shipped Transformer translates the same sentences beside the live-trained models
    assert re.search(r"^transformer \(shipped\) +\S", text, re.M)
    assert "transformer" in result.shipped and "The shipped models" in html
    assert html.count("transformer (shipped):") >= 1  # its alignment figure


def test_report_blocks_escape_text_and_embed_png(tmp_path):
    from matplotlib.figure import Figure

    from attnlab.viz.report import Report

    fig = Figure(figsize=(1, 1))
    fig.subplots().plot([0, 1])
    rep = Report("A <b> & C", subtitle="sub")
    rep.heading("H").paragraph("x < y").table(["model", "BLEU"], [["<i>", 1.5]]).code("a && b").figure(fig, "cap")
    html = rep.to_html()
    assert "<title>A &lt;b&gt; &amp; C</title>" in html and "<p>x &lt; y</p>" in html
    assert "<td>&lt;i&gt;</td>" in html and '<td class="num">1.5</td>' in html and "<pre>a &amp;&amp; b</pre>" in html
    assert "<figcaption>cap</figcaption>" in html
    path = rep.save(tmp_path / "r.html")
    assert path.read_text() == html
    with pytest.raises(ValueError, match=r"rows\[0\] has 1 cells but header has 2 columns"):
        rep.table(["a", "b"], [["x"]])
    with pytest.raises(ValueError, match="image is not a PNG"):
        rep.figure(b"GIF89a")
    with pytest.raises(TypeError, match="image must be a matplotlib Figure"):
        rep.figure(42)
    with pytest.raises(FileNotFoundError, match="folder"):
        rep.save(tmp_path / "no" / "r.html")
    with pytest.raises(ValueError, match="level must be 2, 3 or 4"):
        rep.heading("x", level=1)
