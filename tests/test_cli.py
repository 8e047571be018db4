"""The ``attnlab`` command: help, version, clean one-line errors, the command registry,
and ``attnlab explain`` end to end (PNG and JSON written)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

import attnlab
from attnlab import cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DEMO = "The animal did not cross the street because it was too tired ."


def _attnlab(*args, timeout=60):
    """Run the CLI in a fresh interpreter (argument errors must not import torch, so this is quick)."""
    env = dict(os.environ, COLUMNS="80")
    return subprocess.run([sys.executable, "-m", "attnlab.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_help_lists_every_command_with_a_one_line_description():
    r = _attnlab("--help")
    assert r.returncode == 0, r.stderr
    assert "explain" in r.stdout and "walk through self-attention on a sentence, step by step" in r.stdout
    assert "--version" in r.stdout


def test_version():
    r = _attnlab("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"attnlab {attnlab.__version__}"


def test_console_script_is_installed_and_runs():
    script = Path(sys.executable).with_name("attnlab")
    if not script.exists():
        pytest.skip(f"no console script next to {sys.executable}; run `make install`")
    r = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == f"attnlab {attnlab.__version__}"


@pytest.mark.parametrize(
    "args, status, message",
    [
        (["explain", "The cat", "--form", "fancy"], 2, "argument --form: invalid choice: 'fancy'"),
        (["explain", "The cat", "--d-k", "0"], 2, "argument --d-k: expected a positive integer, got 0"),
        (["explain"], 2, "the following arguments are required: sentence"),
        (["frobnicate"], 2, "invalid choice: 'frobnicate'"),
        (["explain", "   "], 1, "attnlab explain: error: sentence is empty"),
        (["explain", "a b", "--dim", "5"], 1, "--dim only applies to --embeddings random"),
        (["explain", "a b", "--out", "/no/such/folder/x.png"], 1, "--out '/no/such/folder/x.png': folder"),
    ],
)
def test_user_mistakes_end_with_one_clean_line(args, status, message):
    r = _attnlab(*args)
    assert r.returncode == status
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert message in lines[0] and "Traceback" not in r.stderr


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 0
    assert "commands:" in capsys.readouterr().out


# ----------------------------------------------------------------------------- registry


@pytest.fixture
def fake_command(monkeypatch):
    """A command module registered the way other engineers add theirs."""
    mod = types.ModuleType("attnlab_test_fake_command")
    calls = []

    def run(args):
        calls.append(args.word)
        if args.word == "bad":
            raise ValueError("word must not be 'bad'")
        if args.word == "bug":
            raise RuntimeError("an internal bug")
        return 3

    def register(subparsers):
        p = subparsers.add_parser("echo", help="say a word back")
        p.add_argument("word")
        p.set_defaults(func=run)
        return p

    mod.register = register
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, mod.__name__))
    return calls


def test_a_new_command_module_plugs_in_through_register(fake_command, capsys):
    help_text = cli.build_parser().format_help()
    assert "echo" in help_text and "say a word back" in help_text and "explain" in help_text
    assert cli.main(["echo", "hi"]) == 3
    assert fake_command == ["hi"]


def test_value_errors_from_a_command_are_one_line_and_debug_shows_the_traceback(fake_command, capsys):
    assert cli.main(["echo", "bad"]) == 1
    assert capsys.readouterr().err == "attnlab echo: error: word must not be 'bad'\n"
    with pytest.raises(ValueError, match="must not be 'bad'"):
        cli.main(["--debug", "echo", "bad"])


def test_internal_bugs_are_not_disguised_as_user_errors(fake_command):
    with pytest.raises(RuntimeError, match="an internal bug"):
        cli.main(["echo", "bug"])


# ----------------------------------------------------------------------------- explain end to end


def test_explain_random_embeddings_writes_png_and_json(tmp_path, capsys):
    png, js = tmp_path / "explain.png", tmp_path / "explain.json"
    status = cli.main(["explain", "the cat saw the dog", "--embeddings", "random", "--dim", "6", "--d-k", "3",
                       "--seed", "7", "--out", str(png), "--json", str(js)])
    out = capsys.readouterr().out
    assert status == 0
    assert png.read_bytes().startswith(PNG_MAGIC)
    data = json.loads(js.read_text())
    assert data["embeddings"] == "random" and data["seed"] == 7 and data["d_k"] == 3
    assert set(data["forms"]) == {"simple", "projected"}
    for form in data["forms"].values():
        assert len(form["weights"]) == 5
        for row in form["weights"]:
            assert sum(row) == pytest.approx(1.0, abs=1e-12)
    assert len(data["forms"]["projected"]["q"][0]) == 3 and len(data["x"][0]) == 6
    assert "✓ Self-check" in out and f"Heatmap of A saved to {png}" in out


def test_explain_pretrained_demo_sentence(tmp_path, capsys):
    from attnlab.data import minilm

    try:
        minilm.minilm_dir()
    except minilm.MiniLMNotAvailable as exc:
        pytest.skip(f"pretrained MiniLM package not installed: {exc}")
    js = tmp_path / "demo.json"
    assert cli.main(["explain", DEMO, "--form", "projected", "--json", str(js)]) == 0
    out = capsys.readouterr().out
    data = json.loads(js.read_text())
    assert data["embeddings"] == "pretrained" and data["note"] is None
    assert data["tokens"][:3] == ["the", "animal", "did"] and len(data["x"][0]) == 384
    assert list(data["forms"]) == ["projected"]
    for row in data["forms"]["projected"]["weights"]:
        assert sum(row) == pytest.approx(1.0, abs=1e-12)
    assert "MiniLM's pretrained WordPiece embeddings" in out and "focus token: 'it'" in out


def test_explain_bad_focus_fails_before_printing_anything(capsys):
    assert cli.main(["explain", "a b c", "--embeddings", "random", "--dim", "4", "--focus", "zebra"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("attnlab explain: error: focus 'zebra' is not a token of the sentence")
