"""Tests of the benchmark harness, the scenario builders and the ``bench`` CLI.

No timing assertions: speed is what ``attnlab bench`` reports, never what a test checks.
The subprocess tests use a fake case module written to a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import textwrap

import pytest
import torch

from attnlab.bench import cli, harness
from attnlab.bench.complexity import (
    LAYERS,
    SHAPES as CSHAPES,
    ComplexityReport,
    build_layer,
    complexity_json,
    fit_exponent,
    plot_complexity,
    render_complexity,
)
from attnlab.bench.harness import (
    Case,
    CaseResult,
    ModuleMissing,
    Scenario,
    ScenarioReport,
    Target,
    evaluate_target,
    mem_ratio,
    report_json,
    time_ratio,
)
from attnlab.bench.scenarios import SCENARIOS

FAKE = textwrap.dedent(
    """
    import torch

    def build_alloc(keep_mib, transient_mib):
        keep = torch.ones(keep_mib * 262144)  # keep_mib MiB of fp32, touched

        def step():
            # Allocated and freed inside the timed call: only the peak counter sees it.
            tmp = torch.ones(transient_mib * 262144)
            return float(tmp.sum()) + float(keep.sum())

        return step

    def build_fail():
        raise ValueError("boom from the fake builder")

    def build_needs_missing():
        from attnlab.kernels.no_such_kernel import fast_thing  # noqa: F401

        return lambda: None

    def build_needs_missing_name():
        from attnlab.functional.attend import no_such_function  # noqa: F401

        return lambda: None
    """
)


def _fake_scenario(**extra) -> Scenario:
    return Scenario(
        name="fake",
        title="fake",
        shapes={"full": {}, "quick": {}, "tiny": {}},
        cases=(
            Case("attnlab", "fakebench:build_alloc", params={"keep_mib": 8, "transient_mib": 0}),
            Case("big", "fakebench:build_alloc", params={"keep_mib": 96, "transient_mib": 192}),
            Case("broken", "fakebench:build_fail"),
            Case("optional", "fakebench:build_alloc", optional=("no_such_package_xyz",)),
        ),
        targets=(Target("attnlab uses less memory than big", "peak_mib", "big", "attnlab", ">=", 2),),
        repeats={"quick": 2},
        budget_s={"quick": 5.0},
        **extra,
    )


@pytest.fixture(scope="module")
def fake_dir(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("fakebench")
    (d / "fakebench.py").write_text(FAKE)
    return str(d)


@pytest.fixture(scope="module")
def fake_report(fake_dir) -> ScenarioReport:
    return harness.run_scenario(_fake_scenario(), "quick", sys_path=[fake_dir])


# --------------------------------------------------------------------------- subprocesses


def test_idle_baseline_is_the_torch_import():
    idle = harness.idle_baseline()
    # Importing torch costs some hundreds of MiB; an idle child is not a GiB-sized process.
    assert 50.0 < idle["rss_mib"] <= idle["maxrss_mib"] < 2000.0
    assert harness.idle_baseline_mib() == idle["rss_mib"]


def test_each_case_is_measured_in_its_own_process(fake_report):
    small, big = fake_report.row("attnlab"), fake_report.row("big")
    assert small is not None and big is not None
    # big holds 96 MiB and allocates 192 MiB more inside each call.
    assert big.peak_mib >= 96 + 192 - 24
    # attnlab ran after nothing of big's: its peak does not contain big's memory.
    assert 4 < small.peak_mib < 64  # holds 8 MiB
    # What the calls add on top of what was resident: big's 192 MiB transient, not its 96 kept.
    assert 192 - 24 <= big.call_mib < big.peak_mib - 64 and small.call_mib < 16
    assert big.maxrss_mib >= big.peak_mib
    for r in (small, big):
        assert r.seconds > 0 and len(r.times) == 2 and r.seconds == pytest.approx(sorted(r.times)[0] / 2 + sorted(r.times)[1] / 2)
        # A fresh child uses torch's default (all cores), whatever this test process set.
        assert 1 <= r.threads <= os.cpu_count()


def test_sweep_measures_each_point_above_its_own_start(fake_dir):
    pts = harness.run_sweep(
        "fakebench:build_alloc",
        [{"keep_mib": 16, "transient_mib": 32}, {"keep_mib": 16, "transient_mib": 160}],
        repeats=1,
        sys_path=[fake_dir],
    )
    assert len(pts) == 2
    # Each point: its kept inputs + its transient, not the earlier point's memory.
    assert 16 + 32 - 12 <= pts[0]["net_mib"] < 16 + 32 + 40
    assert 16 + 160 - 12 <= pts[1]["net_mib"] < 16 + 160 + 40
    assert all(p["seconds"] > 0 and len(p["times"]) == 1 for p in pts)


def test_failed_and_skipped_rows(fake_report):
    broken = next(r for r in fake_report.rows if r.impl == "broken")
    assert not broken.ok and "boom from the fake builder" in broken.error
    skipped = next(r for r in fake_report.rows if r.impl == "optional")
    assert not skipped.ok and "no_such_package_xyz not installed" in skipped.skipped
    assert fake_report.row("broken") is None and fake_report.row("optional") is None


def test_json_schema_is_exact(fake_report, tmp_path):
    path = tmp_path / "sub" / "fake.json"
    harness.write_json(report_json(fake_report), path)
    rec = json.loads(path.read_text())
    assert set(rec) == {"scenario", "rows"} and rec["scenario"] == "fake"
    # Only measured rows: no failed or skipped row is written as if it had figures.
    assert [r["impl"] for r in rec["rows"]] == ["attnlab", "big"]
    for row in rec["rows"]:
        assert set(row) == {"impl", "seconds", "peak_mib"}
        assert isinstance(row["impl"], str) and isinstance(row["seconds"], float) and isinstance(row["peak_mib"], float)
    assert rec["rows"][1]["peak_mib"] == pytest.approx(fake_report.row("big").peak_mib)


def test_render_prints_rows_targets_and_baseline(fake_report):
    from rich.console import Console

    console = Console(record=True, width=200)
    harness.render_report(fake_report, console)
    text = console.export_text()
    assert "big" in text and "skipped" in text and "failed" in text
    assert f"{fake_report.baseline_mib:.1f} MiB" in text and f"{fake_report.idle_maxrss_mib:.1f} MiB" in text
    assert "attnlab uses less memory than big" in text and "PASS" in text
    assert "quick shape" in text


# --------------------------------------------------------------------------- missing modules


def test_missing_module_fails_before_running_anything():
    sc = Scenario(
        name="fake-missing",
        title="t",
        shapes={"full": {}, "quick": {}, "tiny": {}},
        cases=(Case("attnlab", "attnlab.kernels.no_such_kernel:build", needs=("attnlab.kernels.no_such_kernel",)),),
    )
    with pytest.raises(ModuleMissing, match=r"not available yet: attnlab\.kernels\.no_such_kernel missing"):
        harness.run_scenario(sc, "quick")


def test_missing_module_in_the_child_is_reported(capsys):
    spec = {"builder": "attnlab.kernels.no_such_kernel:build", "params": {}}
    assert harness.main(["--child", json.dumps(spec)]) == 3
    line = capsys.readouterr().out.strip().splitlines()[-1]
    out = json.loads(line[len(harness.RESULT_TAG) :])
    assert out["status"] == "missing" and out["module"] == "attnlab.kernels.no_such_kernel"


@pytest.mark.parametrize(
    "builder, module, detail",
    [
        ("build_needs_missing", "attnlab.kernels.no_such_kernel", ""),
        ("build_needs_missing_name", "attnlab.functional.attend", "no_such_function"),
    ],
)
def test_builder_importing_a_missing_module(builder, module, detail, tmp_path, monkeypatch, capsys):
    (tmp_path / "fakebench_missing.py").write_text(FAKE)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleMissing, match=f"not available yet: {module} missing.*{detail}"):
        harness.run_inprocess(Case("attnlab", f"fakebench_missing:{builder}"), {})
    # The child reports it the same way instead of a traceback.
    assert harness.main(["--child", json.dumps({"builder": f"fakebench_missing:{builder}"})]) == 3
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1][len(harness.RESULT_TAG) :])
    assert out["status"] == "missing" and out["module"] == module and detail in out["detail"]


def test_load_builder_messages():
    with pytest.raises(ModuleMissing, match="not available yet: attnlab.kernels.no_such_kernel missing"):
        harness.load_builder("attnlab.kernels.no_such_kernel:build")
    with pytest.raises(ValueError, match="builder must be 'module:function'"):
        harness.load_builder("attnlab.bench.cases.build_sdpa_direct")
    with pytest.raises(ValueError, match="has no function 'nope'"):
        harness.load_builder("attnlab.bench.cases:nope")


def test_cli_missing_module_exit_status(monkeypatch, capsys):
    sc = Scenario(
        name="window",
        title="t",
        shapes={"full": {}, "quick": {}, "tiny": {}},
        cases=(Case("attnlab", "attnlab.kernels.no_such_kernel:build", needs=("attnlab.kernels.no_such_kernel",)),),
    )
    monkeypatch.setitem(SCENARIOS, "window", sc)
    assert cli.main(["window", "--quick"]) == cli.EXIT_MISSING
    err = capsys.readouterr().err
    assert "not available yet: attnlab.kernels.no_such_kernel missing" in err


# --------------------------------------------------------------------------- ratio math


def _report(rows: list[CaseResult], targets=()) -> ScenarioReport:
    sc = Scenario("r", "r", {"full": {}}, (), tuple(targets))
    return ScenarioReport(sc, "full", 200.0, rows)


def test_ratios_against_the_reference_row():
    a = CaseResult("attnlab", seconds=0.25, peak_mib=10.0)
    b = CaseResult("base", seconds=5.5, peak_mib=130.0)
    assert time_ratio(b, a) == pytest.approx(22.0)
    assert mem_ratio(b, a) == pytest.approx(13.0)
    assert time_ratio(b, None) is None
    assert mem_ratio(b, CaseResult("z", seconds=1.0, peak_mib=0.0)) is None  # no division by zero


@pytest.mark.parametrize(
    "target, expect",
    [
        (Target("speed", "seconds", "base", "attnlab", ">=", 20), (22.0, "PASS")),
        (Target("speed", "seconds", "base", "attnlab", ">=", 23), (22.0, "MISS")),
        (Target("mem", "peak_mib", "base", "attnlab", ">=", 13), (13.0, "PASS")),
        (Target("cost", "seconds", "attnlab", "base", "<=", 1.3), (0.25 / 5.5, "PASS")),
        (Target("cost", "seconds", "base", "attnlab", "<=", 1.3), (22.0, "MISS")),
        (Target("abs", "peak_mib", "attnlab", None, "<", 4096, unit="MiB"), (10.0, "PASS")),
        (Target("abs", "peak_mib", "base", None, "<", 100, unit="MiB"), (130.0, "MISS")),
        (Target("absent", "seconds", "nobody", "attnlab", ">=", 1), (None, "n/a")),
    ],
)
def test_evaluate_target(target, expect):
    rep = _report([CaseResult("attnlab", seconds=0.25, peak_mib=10.0, times=[0.25]),
                   CaseResult("base", seconds=5.5, peak_mib=130.0, times=[5.5])])
    measured, status = evaluate_target(target, rep)
    assert status == expect[1]
    assert (measured is None) if expect[0] is None else measured == pytest.approx(expect[0])


def test_failed_row_makes_its_target_na():
    rep = _report([CaseResult("attnlab", seconds=0.25, peak_mib=10.0), CaseResult("base", error="killed")])
    assert evaluate_target(Target("s", "seconds", "base", "attnlab", ">=", 1), rep) == (None, "n/a")


# --------------------------------------------------------------------------- real scenarios, tiny


@pytest.fixture
def reference_additive(monkeypatch):
    """Stand in for the numba additive kernel (its first call compiles for ~10 s; it has
    its own tests in tests/kernels): the call must bind to the real signature, and is
    computed by the reference ``attend(score="additive")``, which checks the shapes."""
    import inspect

    if harness.missing_modules(("attnlab.kernels.additive",)):
        return
    import attnlab.kernels.additive as mod
    from attnlab.functional.attend import attend

    sig = inspect.signature(mod.additive_attention)

    def stand_in(*args, **kwargs):
        a = sig.bind(*args, **kwargs)
        a.apply_defaults()
        p = a.arguments
        kw = dict(w_q=p["w_q"], w_k=p["w_k"], v=p["v_att"], bias=p["bias"])
        return attend(p["q"], p["k"], p["v"], score="additive", score_kwargs=kw, mask=p["mask"])

    monkeypatch.setattr(mod, "additive_attention", stand_in)


def _scenario_cases():
    for sc in SCENARIOS.values():
        for case in sc.cases:
            yield pytest.param(sc, case, id=f"{sc.name}/{case.impl}")


def test_scenario_registry():
    assert list(SCENARIOS) == ["sdpa", "window", "bias", "additive", "additive-long", "weights", "decode", "normalizers"]
    for sc in SCENARIOS.values():
        assert set(sc.shapes) == {"full", "quick", "tiny"}
        impls = [c.impl for c in sc.cases]
        assert "attnlab" in impls and len(set(impls)) == len(impls)
        for c in sc.cases:
            assert c.ref in impls, (sc.name, c.impl)
        for t in sc.targets:
            assert t.num in impls and (t.den is None or t.den in impls)
            assert t.metric in ("seconds", "peak_mib") and t.op in (">=", "<=", "<")


@pytest.mark.parametrize("sc, case", list(_scenario_cases()))
def test_tiny_case_runs_in_process(sc, case, reference_additive):
    absent = harness.missing_modules(case.needs)
    if absent:
        pytest.skip(f"not available yet: {absent[0]} missing")
    if harness.missing_modules(case.optional):
        pytest.skip(f"{case.optional} not installed")
    params = sc.params("tiny", case)
    if sc.name != "decode":
        # Every scenario's quick shape has the keys its builders take; tiny only shrinks them.
        assert set(sc.shapes["quick"]) == set(sc.shapes["tiny"])
    out = harness.run_inprocess(case, params)
    assert isinstance(out, torch.Tensor)
    if sc.name == "decode":
        assert out.shape == (1, params["tokens"]) and out.dtype == torch.long
    else:
        assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_decode_cache_and_recompute_agree():
    if harness.missing_modules(("attnlab.nn.multihead", "attnlab.nn.kv_cache")):
        pytest.skip("not available yet: attnlab.nn.multihead missing")
    from attnlab.bench.decode import TinyDecoder, generate

    torch.manual_seed(3)
    model = TinyDecoder(vocab=11, d=16, heads=2, ff=32, layers=2, max_len=13).eval()
    prompt = torch.randint(0, 11, (2, 5))
    tok_c, log_c = generate(model, prompt, 7, cached=True)
    tok_r, log_r = generate(model, prompt, 7, cached=False)
    assert tok_c.shape == (2, 7) and log_c.shape == (2, 7, 11)
    torch.testing.assert_close(log_c, log_r, atol=1e-5, rtol=1e-5)
    assert torch.equal(tok_c, tok_r)
    # Teacher-forced check: one pass over prompt + generated tokens gives the same logits.
    full = model(torch.cat([prompt, tok_c], dim=1))[:, 4:-1]  # (2, 7, 11)
    torch.testing.assert_close(log_c, full, atol=1e-5, rtol=1e-5)


def test_additive_broadcast_matches_the_reference():
    from attnlab.bench.cases import additive_broadcast

    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 7, dtype=torch.float64), torch.randn(2, 5, 7, dtype=torch.float64), torch.randn(2, 5, 11, dtype=torch.float64)
    w_q, w_k = torch.randn(4, 7, dtype=torch.float64), torch.randn(4, 7, dtype=torch.float64)
    v_att, bias = torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    got = additive_broadcast(q, k, v, w_q, w_k, v_att, bias)
    # Hand-written loop over (b, i, j): e_ij = v^T tanh(W_q q_i + W_k k_j + b).
    want = torch.empty(2, 3, 11, dtype=torch.float64)
    for b in range(2):
        for i in range(3):
            e = torch.stack([v_att @ torch.tanh(w_q @ q[b, i] + w_k @ k[b, j] + bias) for j in range(5)])
            want[b, i] = torch.softmax(e, 0) @ v[b]
    torch.testing.assert_close(got, want)


# --------------------------------------------------------------------------- complexity


def test_fit_exponent():
    ns = [256, 512, 1024, 2048]
    assert fit_exponent(ns, [3e-9 * n**2 for n in ns]) == pytest.approx(2.0)
    assert fit_exponent(ns, [5e-4 * n for n in ns]) == pytest.approx(1.0)
    # Points at or below the floor are left out; fewer than two left -> None.
    assert fit_exponent(ns, [0.0, 1.0, 2.0, 4.0], floor=0.5) == pytest.approx(1.0)
    assert fit_exponent(ns, [0.1, 0.2, 0.3, 5.0], floor=4.0) is None


@pytest.mark.parametrize("layer", list(LAYERS))
def test_complexity_layers_build_tiny(layer, reference_additive):
    absent = harness.missing_modules(LAYERS[layer].needs)
    if absent:
        pytest.skip(f"not available yet: {absent[0]} missing")
    sz = CSHAPES["tiny"]
    out = build_layer(layer, n=sz["ns"][-1], B=sz["B"], d=sz["d"], r=sz["r"], k=sz["k"])()
    assert out.shape[-1] in (sz["d"], sz["ns"][-1]) and torch.isfinite(out).all()


def test_build_layer_rejects_unknown_layer():
    with pytest.raises(ValueError, match="unknown layer 'lstm'; valid layers: "):
        build_layer("lstm", n=8, B=1, d=4, r=2, k=3)


def test_complexity_report_json_and_plot(tmp_path):
    ns = (256, 512, 1024, 2048)
    pts = {
        "self-attention (SDPA)": [{"n": n, "seconds": 1e-9 * n**2, "net_mib": 1e-4 * n**2} for n in ns],
        "recurrent (nn.GRU)": [{"n": n, "seconds": 1e-5 * n, "net_mib": 0.01 * n} for n in ns],
        # A layer capped below the largest n (as the explicit n x n one is in the full sweep).
        "self-attention (explicit n x n)": [{"n": n, "seconds": 2e-9 * n**2, "net_mib": 1.0} for n in ns[:3]],
    }
    rep = ComplexityReport("quick", {**CSHAPES["quick"], "ns": ns}, pts, {})
    assert rep.fit_range() == (512, 1024, 2048)
    t, m = rep.exponents("self-attention (SDPA)")
    assert t == pytest.approx(2.0) and m == pytest.approx(2.0)
    t, m = rep.exponents("recurrent (nn.GRU)")
    assert t == pytest.approx(1.0) and m == pytest.approx(1.0)  # 5.1 .. 20.5 MiB are above the 4 MiB floor
    t, m = rep.exponents("self-attention (explicit n x n)")
    assert t == pytest.approx(2.0) and m is None  # 1 MiB is under the noise floor
    rec = complexity_json(rep)
    assert set(rec) == {"scenario", "rows"} and rec["scenario"] == "complexity" and len(rec["rows"]) == 11
    assert rec["rows"][-1]["impl"] == "self-attention (explicit n x n) n=1024"
    assert all(set(r) == {"impl", "seconds", "peak_mib"} for r in rec["rows"])
    assert rec["rows"][0]["impl"] == "self-attention (SDPA) n=256"
    from rich.console import Console

    console = Console(record=True, width=250)
    render_complexity(rep, console)
    text = console.export_text()
    assert "O(n^2 d)" in text and "O(n d^2)" in text and "skipped" in text and "2.00" in text and "1.00" in text
    png = tmp_path / "c.png"
    plot_complexity(rep, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- CLI


def test_register_adds_bench_subcommand():
    parser = argparse.ArgumentParser(prog="attnlab")
    sub = parser.add_subparsers(dest="command")
    assert cli.register(sub) is not None
    args = parser.parse_args(["bench", "window", "--quick", "--json", "x.json", "--repeats", "4"])
    assert (args.command, args.scenario, args.quick, args.json, args.repeats) == ("bench", "window", True, "x.json", 4)
    assert args.func is cli.run
    assert set(cli.CHOICES) == {*SCENARIOS, "complexity", "ring", "list"}


@pytest.mark.parametrize("argv", [["nope"], ["window", "--repeats", "0"], ["window", "--repeats", "x"]])
def test_cli_rejects_bad_arguments(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "scenario" in err.lower() or "--repeats" in err


def test_cli_plot_only_for_complexity(capsys):
    assert cli.main(["sdpa", "--plot", "x.png"]) == cli.EXIT_FAILED
    assert "--plot applies to 'complexity' only" in capsys.readouterr().err


def test_cli_list(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in (*SCENARIOS, "complexity"):
        assert name in out
