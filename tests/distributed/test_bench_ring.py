"""``attnlab bench ring``: the sweep runs end to end at a tiny shape; figures combine right.

No timing or memory assertions beyond "measured": speed is what the benchmark reports.
"""

from __future__ import annotations

import argparse
import json

import pytest

from attnlab.bench import cli, ring
from attnlab.bench.ring import SHAPES, WORLDS, RingReport, _combine, render_ring, ring_json, run_ring


def _child_rows(world, capsys):
    """What one ``python -m attnlab.bench.ring --child`` would print, run in this process
    (its ranks are forked from here: no new torch import, which costs seconds)."""
    sz = SHAPES["tiny"]
    spec = {"world": world, "threads": 1, "Ls": list(sz["Ls"][:1]), "B": sz["B"], "H": sz["H"], "D": sz["D"],
            "repeats": 1, "impls": ["sdpa", "ring"] if world == 1 else ["ring"]}
    capsys.readouterr()
    assert ring._child(spec) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(ring.RESULT_TAG)
    return _combine("ring", world, 1, json.loads(line[len(ring.RESULT_TAG):])["per_rank"])


def test_tiny_sweep_on_one_and_two_processes(tmp_path, capsys, monkeypatch):
    from attnlab.bench import harness

    # malloc_trim walks this (pytest) process's whole heap, about a second a call on a busy
    # machine; the figures of a tiny shape are not what this test checks, the plumbing is.
    monkeypatch.setattr(harness, "_trim", lambda: None)
    # First-call costs (lazy imports, autograd engine) paid here once, not in each forked rank.
    assert ring.ring_point("ring", 0, 1, 16, 1, 2, 4, 1)["times"][0] > 0
    rows = _child_rows(1, capsys) + _child_rows(2, capsys)
    got = {(r["kind"], r["world"], r["L"]) for r in rows}
    Ls = SHAPES["tiny"]["Ls"][:1]
    assert got == {("sdpa", 1, L) for L in Ls} | {("ring", w, L) for w in (1, 2) for L in Ls}
    for r in rows:
        assert r["seconds"] > 0 and r["peak_mib"] >= 0 and len(r["rank_peak_mib"]) == r["world"]
    record = ring_json(RingReport("tiny", dict(SHAPES["tiny"]), rows))
    path = tmp_path / "ring.json"
    path.write_text(json.dumps(record))
    back = json.loads(path.read_text())
    assert back["scenario"] == "ring"
    assert all({"impl", "seconds", "peak_mib"} <= set(r) for r in back["rows"])


def test_combine_takes_the_slowest_rank_per_call_and_the_largest_peak():
    per_rank = [
        [{"impl": "ring", "L": 8, "times": [1.0, 5.0, 2.0], "net_mib": 3.0}],
        [{"impl": "ring", "L": 8, "times": [4.0, 1.0, 1.0], "net_mib": 7.0}],
    ]
    (row,) = _combine("ring", 2, 1, per_rank)
    assert row["seconds"] == 4.0  # median of (4, 5, 2)
    assert (row["peak_mib"], row["rank_peak_mib"], row["impl"]) == (7.0, [3.0, 7.0], "ring W=2 L=8")


def test_render_lists_every_group_and_errors(capsys):
    from rich.console import Console

    rows = _combine("ring", 1, 2, [[{"impl": "sdpa", "L": 16, "times": [0.5], "net_mib": 1.5}]])
    report = RingReport("tiny", dict(SHAPES["tiny"]), rows, {"W=4": "exit code 1: boom"}, cores=2)
    console = Console(width=200)
    render_ring(report, console)
    out = capsys.readouterr().out
    assert "sdpa, 1 process" in out and "0.500" in out and "failed W=4" in out and "boom" in out


def test_bad_shape_and_lengths():
    with pytest.raises(ValueError, match="shape must be one of full, quick, tiny"):
        run_ring("huge")
    assert all(L % (2 * max(WORLDS)) == 0 for sz in SHAPES.values() for L in sz["Ls"])


def test_cli_knows_ring(capsys):
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "ring", "--quick", "--json", "r.json"])
    assert (args.scenario, args.quick, args.json) == ("ring", True, "r.json")
    assert cli.main(["ring", "--plot", "x.png"]) == cli.EXIT_FAILED
    assert cli.main(["list"]) == 0
    assert "ring" in capsys.readouterr().out
