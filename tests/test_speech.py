"""``attnlab train speech`` and ``attnlab transcribe`` on tiny fixtures in the real file
formats (stdlib-``wave`` WAVs, a gzip transcript), with a stand-in synthesiser instead of
espeak-ng: a few steps, a resume, the test report, transcription and its plot, bad input."""

from __future__ import annotations

import argparse
import gzip
import json
import wave

import numpy as np
import pytest

from attnlab import speech
from attnlab.data import speech as sp

WORDS = {"digits/1": ("one", 300), "digits/2": ("two", 500), "goodbye": ("goodbye", 700), "letters/b": ("b", 900)}


def _write_wav(path, x, rate):
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.round(np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())


def _fake_synth():
    def speak(text, voice, rate):
        t = np.arange(int(rate * (0.15 + 0.03 * len(text)))) / rate
        f = 100 + 40 * (ord(text[0]) - 96) + voice.pitch
        return (0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32)

    return sp.Synthesizer(speak, lambda: "fake", lambda: ["m1", "m2", "m3", "f1", "f2"])


@pytest.fixture()
def data(tmp_path, monkeypatch):
    sounds = tmp_path / "sounds" / "en"
    for key, (word, freq) in WORDS.items():
        t = np.arange(2400) / 8000
        _write_wav(sounds / f"{key}.wav", 0.4 * np.sin(2 * np.pi * freq * t), 8000)
    transcripts = tmp_path / "core-sounds-en.txt.gz"
    with gzip.open(transcripts, "wt") as f:
        f.write("; Core Asterisk Sounds in English\n\n" + "".join(f"{k}: {w}\n" for k, (w, _) in WORDS.items())
                + "agent-loginok: Agent logged in.\n")
    monkeypatch.setattr(sp, "ESPEAK", _fake_synth())
    return sounds, transcripts, tmp_path / "cache"


def _run(argv):
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers()
    speech.register(sub)
    args = ap.parse_args(argv)
    return args.func(args)


def _train_args(data, out, model, steps, *extra):
    sounds, transcripts, cache = data
    return ["train", "speech", "--model", model, "--out", str(out), "--steps", str(steps), "--eval-every", "2",
            "--batch-size", "4", "--sounds", str(sounds), "--transcripts", str(transcripts), "--train-voices", "2",
            "--valid-voices", "1", "--cache", str(cache), "--valid-max", "4", "--threads", "1", "--quiet", *extra]


def test_train_transformer_resume_and_report(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(_train_args(data, out, "transformer", 2, "--set", "d_model=12", "--set", "num_heads=3",
                            "--set", "ffn_dim=8", "--set", "num_layers=1", "--precision", "bfloat16")) == 0
    assert (out / "last" / "state.json").is_file() and (out / "best").is_dir()
    record = json.loads((out / "run.json").read_text())
    assert record["train"]["precision"] == "bfloat16"
    assert record["words"] == ["b", "goodbye", "one", "two"] and record["train_clips"] == 8
    assert record["config"]["d_model"] == 12
    test = json.loads((out / "test.json").read_text())
    assert test["test_recordings"] == 4 and 0.0 <= test["test_accuracy"] <= 1.0
    assert test["step"] == 2 and {r["reference"] for r in test["recordings"]} == set(record["words"])
    assert "real recordings" in capsys.readouterr().out
    # resume: two more steps in the same run, model and data taken from run.json
    assert _run(_train_args(data, out, "transformer", 4, "--resume")) == 0
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if json.loads(line).get("kind") == "valid"]
    assert steps[-1] == 4
    assert json.loads((out / "test.json").read_text())["step"] == 4
    with pytest.raises(FileExistsError, match="already holds a run; add --resume"):
        _run(_train_args(data, out, "transformer", 2))
    with pytest.raises(ValueError, match="--model las: the run in .* trains transformer"):
        _run(_train_args(data, out, "las", 6, "--resume"))
    with pytest.raises(ValueError, match="--plot draws the speller's alignment: only a las run"):
        _run(["transcribe", "--checkpoint", str(out), str(data[0] / "digits/1.wav"), "--plot", str(tmp_path / "a.png")])


def test_train_las_transcribe_and_plot(data, tmp_path, capsys):
    out = tmp_path / "las"
    assert _run(_train_args(data, out, "las", 2, "--beam", "2", "--set", "listener_hidden=4",
                            "--set", "speller_hidden=6", "--set", "attn_hidden=5")) == 0
    test = json.loads((out / "test.json").read_text())
    assert test["model"] == "las" and test["beam"] == 2 and "test_accuracy_beam" in test
    capsys.readouterr()
    png = tmp_path / "align.png"
    wav = data[0] / "digits/2.wav"
    assert _run(["transcribe", "--checkpoint", str(out), str(wav), "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    line = capsys.readouterr().out.strip().split("\t")
    assert line[0] == str(wav) and len(line) == 3


def test_bad_input(data, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        _run(["transcribe", "--checkpoint", str(tmp_path / "none"), str(data[0] / "digits/1.wav")])
    with pytest.raises(ValueError, match="--set width: unknown for model 'las'"):
        _run(_train_args(data, tmp_path / "x", "las", 2, "--set", "width=3"))
    with pytest.raises(ValueError, match="--set .oops.: expected FIELD=VALUE"):
        _run(_train_args(data, tmp_path / "y", "las", 2, "--set", "oops"))
    with pytest.raises(FileNotFoundError, match="run.json is missing"):
        _run(_train_args(data, tmp_path / "z", "las", 2, "--resume"))
    sounds, transcripts, cache = data
    with pytest.raises(ValueError, match="give --sounds and --transcripts together"):
        speech.load_speech_data(speech.SpeechDataSettings(sounds=str(sounds)), cache_dir=cache)
    with pytest.raises(SystemExit):
        _run(["train", "speech", "--model", "rnn", "--out", str(tmp_path / "w")])
