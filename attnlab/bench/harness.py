"""Benchmark harness: each implementation timed and measured in a process of its own.

A benchmark *scenario* (see :mod:`attnlab.bench.scenarios`) is a list of named
*cases*. A case is a builder ``module:function`` that takes the scenario's shape as
keyword arguments, builds its inputs, and returns a ``step()`` callable doing one
forward + backward pass (or, for decoding, one whole generation).

Each case runs in a fresh ``python -m attnlab.bench.harness`` subprocess so that peak
memory is that implementation's alone: the child warms up (one call: JIT compilation,
allocator warm-up), resets the kernel's peak-RSS counter (``/proc/self/clear_refs``),
times ``repeats`` calls with :func:`time.perf_counter` and reports the median and the
peak resident set size (``VmHWM``) of the timed calls, plus the child's whole-life
``ru_maxrss`` (:func:`resource.getrusage`, which also counts the import of torch and any
JIT compilation in the warm-up).

Both raw figures contain the ~200-300 MiB that importing torch costs. The harness
measures that once per run in an idle subprocess that only imports torch, and reports
``peak_mib = peak RSS of the timed calls - idle baseline``: the memory the
implementation itself needs (its inputs, workspace, saved activations and gradients).

The child speaks one line of JSON on stdout, prefixed with :data:`RESULT_TAG`.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

__all__ = [
    "Case",
    "Target",
    "Scenario",
    "CaseResult",
    "ScenarioReport",
    "ModuleMissing",
    "BenchError",
    "run_case",
    "run_sweep",
    "run_inprocess",
    "run_scenario",
    "idle_baseline",
    "idle_baseline_mib",
    "evaluate_target",
    "time_ratio",
    "mem_ratio",
    "report_json",
    "write_json",
    "render_report",
    "missing_modules",
    "make_console",
    "load_builder",
]

RESULT_TAG = "ATTNLAB_BENCH_RESULT "
SHAPES = ("full", "quick", "tiny")


# --------------------------------------------------------------------------- errors


class BenchError(RuntimeError):
    """A case could not be measured (it raised, timed out or was killed)."""


class ModuleMissing(BenchError):
    """An attnlab module a scenario needs does not exist (yet)."""

    def __init__(self, module: str, detail: str = "") -> None:
        self.module = module
        self.detail = detail
        path = module.replace(".", "/") + ".py"
        msg = f"not available yet: {module} missing ({path})"
        if detail:
            msg += f": {detail}"
        super().__init__(msg)


# --------------------------------------------------------------------------- descriptions


@dataclass(frozen=True)
class Case:
    """One implementation in a scenario.

    Args:
        impl: the row name; the attnlab implementation the targets are about is ``"attnlab"``.
        builder: ``"module:function"``; ``function(**params) -> step`` where ``step()``
            runs one measured call (forward + backward).
        needs: attnlab modules the case imports; a missing one makes the whole scenario
            fail with "not available yet: <module> missing" (never a faked row).
        optional: third-party modules; when one is not installed the row is skipped
            with a note instead.
        ref: the row this row's ratios are taken against.
        params: overrides merged into the scenario's shape for this case only.
        shape_params: further overrides for one shape only (``{"tiny": {...}}``).
        note: printed under the table.
    """

    impl: str
    builder: str
    needs: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    ref: str = "attnlab"
    params: Mapping[str, Any] = field(default_factory=dict)
    shape_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    note: str = ""


@dataclass(frozen=True)
class Target:
    """A claim checked against the measurements of one run.

    ``measured = row[num].metric / row[den].metric`` (or ``row[num].metric`` when
    ``den`` is None), compared with ``threshold`` by ``op``. A speed-up of attnlab over
    a baseline is ``num=baseline, den="attnlab"`` on ``"seconds"``.
    """

    label: str
    metric: str  # "seconds" or "peak_mib"
    num: str
    den: str | None
    op: str  # ">=", "<=", "<"
    threshold: float
    unit: str = "x"


@dataclass(frozen=True)
class Scenario:
    """A named benchmark: shapes (``full``/``quick``/``tiny``), cases and targets."""

    name: str
    title: str
    shapes: Mapping[str, Mapping[str, Any]]
    cases: tuple[Case, ...]
    targets: tuple[Target, ...] = ()
    notes: tuple[str, ...] = ()
    repeats: Mapping[str, int] = field(default_factory=lambda: {"full": 5, "quick": 3, "tiny": 1})
    budget_s: Mapping[str, float] = field(default_factory=lambda: {"full": 120.0, "quick": 6.0, "tiny": 1.0})

    def params(self, shape: str, case: Case | None = None) -> dict[str, Any]:
        if shape not in self.shapes:
            raise ValueError(f"shape must be one of {', '.join(self.shapes)}, got {shape!r}")
        p = dict(self.shapes[shape])
        if case is not None:
            p.update(case.params)
            p.update(case.shape_params.get(shape, {}))
        return p


@dataclass
class CaseResult:
    """What one child reported (figures in seconds and MiB)."""

    impl: str
    seconds: float | None = None  # median of the timed calls
    times: list[float] = field(default_factory=list)
    warmup_s: float | None = None
    peak_mib: float | None = None  # peak RSS of the timed calls - idle baseline
    hwm_mib: float | None = None  # raw VmHWM of the timed calls (None if it could not be reset)
    maxrss_mib: float | None = None  # raw ru_maxrss of the whole child
    rss_before_mib: float | None = None  # RSS after imports, before the inputs were built
    call_mib: float | None = None  # peak of the timed calls above the RSS just before them
    threads: int | None = None
    ref: str = "attnlab"
    error: str | None = None
    skipped: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.skipped is None and self.seconds is not None


@dataclass
class ScenarioReport:
    scenario: Scenario
    shape: str
    baseline_mib: float
    rows: list[CaseResult]
    notes: list[str] = field(default_factory=list)
    idle_maxrss_mib: float | None = None

    def row(self, impl: str) -> CaseResult | None:
        return next((r for r in self.rows if r.impl == impl and r.ok), None)


# --------------------------------------------------------------------------- memory probes


def _proc_status_kib(key: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def _rss_mib() -> float | None:
    kib = _proc_status_kib("VmRSS")
    return None if kib is None else kib / 1024.0


def _hwm_mib() -> float | None:
    kib = _proc_status_kib("VmHWM")
    return None if kib is None else kib / 1024.0


def _reset_hwm() -> bool:
    """Reset the peak-RSS counter to the current RSS (Linux >= 4.0, ``clear_refs`` 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    hwm, rss = _hwm_mib(), _rss_mib()
    return hwm is not None and rss is not None and hwm <= rss + 1.0


def _trim() -> None:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``), so that the RSS
    read next is what is in use, not what an earlier, freed allocation left behind."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _maxrss_mib() -> float:
    # ru_maxrss is in KiB on Linux, in bytes on macOS.
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024.0 * 1024.0) if sys.platform == "darwin" else r / 1024.0


# --------------------------------------------------------------------------- builders


def missing_modules(modules: Iterable[str]) -> list[str]:
    """The modules of ``modules`` that cannot be found (without importing them)."""
    out = []
    for m in modules:
        try:
            found = importlib.util.find_spec(m) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            out.append(m)
    return out


def load_builder(spec: str) -> Callable[..., Callable[[], Any]]:
    """Import ``"module:function"``; a missing attnlab module raises :class:`ModuleMissing`."""
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise ValueError(f"builder must be 'module:function', got {spec!r}")
    mod_name, fn_name = spec.split(":")
    try:
        mod = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("attnlab"):
            raise ModuleMissing(e.name) from e
        raise
    except ImportError as e:  # e.g. `from attnlab.kernels.window import window_attention` not written yet
        if e.name and e.name.startswith("attnlab"):
            raise ModuleMissing(e.name, str(e)) from e
        raise
    try:
        return getattr(mod, fn_name)
    except AttributeError:
        raise ValueError(f"builder {spec!r}: module {mod_name} has no function {fn_name!r}") from None


def run_inprocess(case: Case, params: Mapping[str, Any]) -> Any:
    """Build ``case`` at ``params`` and call its step once in this process (for tests)."""
    step = _checked_builder(load_builder(case.builder))(**{**params, **case.params})
    return step()


# --------------------------------------------------------------------------- child side


def _measure(step: Callable[[], Any], repeats: int, budget_s: float, warmup: int) -> dict:
    t0 = time.perf_counter()
    for _ in range(max(1, warmup)):
        step()
    warm = time.perf_counter() - t0
    _trim()
    reset_ok = _reset_hwm()
    rss_reset = _rss_mib()
    times = []
    t = time.perf_counter()
    step()
    times.append(time.perf_counter() - t)
    # The first timed call says how many more fit in the budget (at least one in all).
    n = max(1, min(repeats, int(budget_s / max(times[0], 1e-9))))
    for _ in range(n - 1):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return {
        "seconds": statistics.median(times),
        "times": times,
        "warmup_s": warm,
        "hwm_mib": _hwm_mib() if reset_ok else None,
        "rss_reset_mib": rss_reset,
    }


def _checked_builder(builder: Callable[..., Callable[[], Any]]) -> Callable[..., Callable[[], Any]]:
    """Builders import their attnlab module when called: turn a missing module (or a
    name it does not define yet) into :class:`ModuleMissing`."""

    def build(**params):
        try:
            return builder(**params)
        except ImportError as e:
            if e.name and e.name.startswith("attnlab"):
                raise ModuleMissing(e.name, "" if isinstance(e, ModuleNotFoundError) else str(e)) from e
            raise

    return build


def _child(spec: dict) -> int:
    for p in reversed(spec.get("sys_path", [])):
        sys.path.insert(0, p)
    import torch  # noqa: F401  (the baseline every case shares)

    out: dict[str, Any] = {"threads": torch.get_num_threads()}
    try:
        _run_child(spec, out)
    except ModuleMissing as e:
        out.update(status="missing", module=e.module, detail=e.detail)
        print(RESULT_TAG + json.dumps(out), flush=True)
        return 3
    print(RESULT_TAG + json.dumps(out), flush=True)
    return 0


def _run_child(spec: dict, out: dict) -> None:
    import torch

    builder = _checked_builder(load_builder(spec["builder"]))
    repeats, budget, warmup = int(spec.get("repeats", 3)), float(spec.get("budget_s", 60.0)), int(spec.get("warmup", 1))
    if "params_list" in spec:
        # A sweep (one implementation at several sizes): each point's memory is its
        # peak RSS minus the RSS just before its inputs were built.
        points = []
        if spec["params_list"]:
            # Warm the process (thread pools, allocator arenas, JIT) on the first size, so
            # that the first point's figures are not one-time start-up costs.
            s0 = builder(**spec["params_list"][0])
            s0()
            s0()
            del s0
        for params in spec["params_list"]:
            _trim()
            torch.manual_seed(0)
            before = _rss_mib()
            step = builder(**params)
            m = _measure(step, repeats, budget, warmup)
            del step
            m["rss_before_mib"] = before
            points.append(m)
        out["points"] = points
    else:
        torch.manual_seed(0)
        out["rss_before_mib"] = _rss_mib()
        step = builder(**spec.get("params", {}))
        out.update(_measure(step, repeats, budget, warmup))
        del step
    out["maxrss_mib"] = _maxrss_mib()
    out["status"] = "ok"


def _idle() -> int:
    import torch  # noqa: F401

    print(RESULT_TAG + json.dumps({"status": "ok", "maxrss_mib": _maxrss_mib(), "rss_mib": _rss_mib()}), flush=True)
    return 0


# --------------------------------------------------------------------------- parent side


def _spawn(args: Sequence[str], timeout: float | None, sys_path: Sequence[str] = ()) -> dict:
    env = dict(os.environ)
    if sys_path:
        env["PYTHONPATH"] = os.pathsep.join([*map(str, sys_path), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "attnlab.bench.harness", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"timed out after {timeout:.0f} s") from None
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-2:]  # the raising line and the exception
    how = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
    if proc.returncode == -9:
        how += " (out of memory?)"
    raise BenchError(f"child failed ({how}): " + (" | ".join(tail) if tail else "no output"))


_IDLE_CACHE: dict[tuple, dict] = {}


def idle_baseline(*, refresh: bool = False) -> dict:
    """``{"rss_mib", "maxrss_mib"}`` of an idle subprocess that only imported torch,
    measured once per run (per interpreter)."""
    key = (sys.executable,)
    if refresh or key not in _IDLE_CACHE:
        out = _spawn(["--idle"], timeout=300)
        _IDLE_CACHE[key] = {"rss_mib": float(out["rss_mib"]), "maxrss_mib": float(out["maxrss_mib"])}
    return dict(_IDLE_CACHE[key])


def idle_baseline_mib(*, refresh: bool = False) -> float:
    """The RSS (MiB) of an idle subprocess right after it imported torch: what every
    child holds before its case builds anything. (Its ru_maxrss is a little higher:
    the import itself peaks above where it settles.)"""
    return idle_baseline(refresh=refresh)["rss_mib"]


def run_case(
    case: Case,
    params: Mapping[str, Any],
    *,
    repeats: int = 3,
    budget_s: float = 60.0,
    warmup: int = 1,
    timeout: float | None = 1800.0,
    baseline_mib: float | None = None,
    sys_path: Sequence[str] = (),
) -> CaseResult:
    """Run one case in a fresh subprocess and return its figures.

    ``repeats`` timed calls at most, fewer when the first timed call shows they would
    take more than ``budget_s`` (never fewer than one). Raises :class:`ModuleMissing`
    when the case's attnlab module does not exist; other failures give a row with
    ``error`` set.
    """
    res = CaseResult(impl=case.impl, ref=case.ref)
    absent = missing_modules(case.optional)
    if absent:
        res.skipped = f"{', '.join(absent)} not installed (pip install {' '.join(a.replace('_', '-') for a in absent)} to add this row)"
        return res
    for m in missing_modules(case.needs):
        raise ModuleMissing(m)
    spec = {
        "builder": case.builder,
        "params": {**params, **case.params},
        "repeats": repeats,
        "budget_s": budget_s,
        "warmup": warmup,
        "sys_path": [str(p) for p in sys_path],
    }
    try:
        out = _spawn(["--child", json.dumps(spec)], timeout=timeout, sys_path=sys_path)
    except BenchError as e:
        res.error = str(e)
        return res
    if out.get("status") == "missing":
        raise ModuleMissing(out["module"], out.get("detail", ""))
    base = idle_baseline_mib() if baseline_mib is None else baseline_mib
    res.seconds = out["seconds"]
    res.times = out["times"]
    res.warmup_s = out["warmup_s"]
    res.hwm_mib = out["hwm_mib"]
    res.maxrss_mib = out["maxrss_mib"]
    res.rss_before_mib = out.get("rss_before_mib")
    if res.hwm_mib is not None and out.get("rss_reset_mib") is not None:
        res.call_mib = max(0.0, res.hwm_mib - out["rss_reset_mib"])
    res.threads = out.get("threads")
    raw = res.hwm_mib if res.hwm_mib is not None else res.maxrss_mib
    res.peak_mib = max(0.0, raw - base)
    return res


def run_sweep(
    builder: str,
    params_list: Sequence[Mapping[str, Any]],
    *,
    repeats: int = 3,
    budget_s: float = 30.0,
    warmup: int = 1,
    timeout: float | None = 3600.0,
    sys_path: Sequence[str] = (),
) -> list[dict]:
    """Run one implementation at several sizes in one fresh subprocess.

    Returns one dict per point: ``seconds`` (median), ``times``, ``hwm_mib`` (peak RSS of
    the timed calls) and ``rss_before_mib`` (RSS before the point's inputs were built);
    ``net_mib = hwm_mib - rss_before_mib`` is added. Raises :class:`BenchError` on failure.
    """
    spec = {
        "builder": builder,
        "params_list": [dict(p) for p in params_list],
        "repeats": repeats,
        "budget_s": budget_s,
        "warmup": warmup,
        "sys_path": [str(p) for p in sys_path],
    }
    out = _spawn(["--child", json.dumps(spec)], timeout=timeout, sys_path=sys_path)
    if out.get("status") == "missing":
        raise ModuleMissing(out["module"], out.get("detail", ""))
    points = out["points"]
    for p in points:
        hwm = p["hwm_mib"] if p["hwm_mib"] is not None else out["maxrss_mib"]
        p["net_mib"] = max(0.0, hwm - (p["rss_before_mib"] or 0.0))
    return points


def run_scenario(
    scenario: Scenario,
    shape: str = "full",
    *,
    repeats: int | None = None,
    timeout: float | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    sys_path: Sequence[str] = (),
) -> ScenarioReport:
    """Run every case of ``scenario`` at ``shape``, one subprocess each, in order.

    Raises :class:`ModuleMissing` before running anything when an attnlab module a
    case needs is absent, so no partial table is printed as if complete.
    """
    for case in scenario.cases:
        for m in missing_modules(case.needs):
            raise ModuleMissing(m)
    n_rep = scenario.repeats.get(shape, 3) if repeats is None else repeats
    budget = scenario.budget_s.get(shape, 60.0)
    if repeats is not None:
        budget = max(budget, budget * repeats / max(1, scenario.repeats.get(shape, 3)))
    if timeout is None:
        timeout = {"full": 3600.0, "quick": 300.0}.get(shape, 300.0)
    total = len(scenario.cases) + 1
    if progress:
        progress("idle baseline (import torch)", 0, total)
    idle = idle_baseline()
    base = idle["rss_mib"]
    rows = []
    for i, case in enumerate(scenario.cases, start=1):
        if progress:
            progress(case.impl, i, total)
        rows.append(
            run_case(
                case,
                scenario.params(shape, case),
                repeats=n_rep,
                budget_s=budget,
                timeout=timeout,
                baseline_mib=base,
                sys_path=sys_path,
            )
        )
    notes = [c.note for c in scenario.cases if c.note] + list(scenario.notes)
    return ScenarioReport(scenario, shape, base, rows, notes, idle_maxrss_mib=idle["maxrss_mib"])


# --------------------------------------------------------------------------- figures


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0 or not math.isfinite(a) or not math.isfinite(b):
        return None
    return a / b


def time_ratio(row: CaseResult, ref: CaseResult | None) -> float | None:
    """``row.seconds / ref.seconds``: how many times slower than the reference row."""
    return None if ref is None else _ratio(row.seconds, ref.seconds)


def mem_ratio(row: CaseResult, ref: CaseResult | None) -> float | None:
    """``row.peak_mib / ref.peak_mib``: how many times more memory than the reference row."""
    return None if ref is None else _ratio(row.peak_mib, ref.peak_mib)


_OPS = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, "<": lambda a, b: a < b, ">": lambda a, b: a > b}


def evaluate_target(target: Target, report: ScenarioReport) -> tuple[float | None, str]:
    """``(measured, "PASS" | "MISS" | "n/a")`` for one target."""
    num = report.row(target.num)
    val_num = None if num is None else getattr(num, target.metric)
    if target.den is None:
        measured = val_num
    else:
        den = report.row(target.den)
        measured = _ratio(val_num, None if den is None else getattr(den, target.metric))
    if measured is None:
        return None, "n/a"
    return measured, "PASS" if _OPS[target.op](measured, target.threshold) else "MISS"


def report_json(report: ScenarioReport) -> dict:
    """The tracking record: exactly ``{"scenario", "rows": [{"impl", "seconds", "peak_mib"}]}``."""
    return {
        "scenario": report.scenario.name,
        "rows": [
            {"impl": r.impl, "seconds": float(r.seconds), "peak_mib": float(r.peak_mib)}
            for r in report.rows
            if r.ok
        ],
    }


def write_json(record: dict, path: str | os.PathLike) -> None:
    path = os.fspath(path)
    d = os.path.dirname(path)
    if d:
        os.makedirs(d, exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")


def _fmt_x(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.2f}x" if x < 100 else f"{x:.0f}x"


def _fmt_s(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.3f} s"


def make_console():
    """A rich console that does not squeeze the tables to 80 columns when piped."""
    from rich.console import Console

    c = Console()
    return c if c.is_terminal else Console(width=160)


def _fmt_mib(m: float | None) -> str:
    return "-" if m is None else f"{m:,.1f}"


def render_report(report: ScenarioReport, console=None) -> None:
    """Print the table, the memory explanation and the targets with rich."""
    from rich.table import Table

    console = console or make_console()
    sc = report.scenario
    threads = next((r.threads for r in report.rows if r.threads), None)
    shape = ", ".join(f"{k}={v}" for k, v in sc.params(report.shape).items())
    table = Table(
        title=f"attnlab bench {sc.name} — {sc.title}",
        caption=f"shape [{report.shape}]: {shape}; fp32, {threads or '?'} threads",
    )
    for col, just in (
        ("impl", "left"),
        ("median s", "right"),
        ("best s", "right"),
        ("runs", "right"),
        ("time / ref", "right"),
        ("peak MiB", "right"),
        ("mem / ref", "right"),
        ("in-call MiB", "right"),
        ("maxrss MiB", "right"),
        ("ref", "left"),
    ):
        table.add_column(col, justify=just, no_wrap=True)
    for r in report.rows:
        if r.skipped:
            table.add_row(r.impl, "[yellow]skipped[/]", "", "", "", "", "", "", "", r.ref)
            continue
        if r.error:
            table.add_row(r.impl, "[red]failed[/]", "", "", "", "", "", "", "", r.ref)
            continue
        ref = report.row(r.ref)
        table.add_row(
            f"[bold]{r.impl}[/]" if r.impl == "attnlab" else r.impl,
            _fmt_s(r.seconds),
            _fmt_s(min(r.times) if r.times else None),
            str(len(r.times)),
            "1 (ref)" if r.impl == r.ref else _fmt_x(time_ratio(r, ref)),
            _fmt_mib(r.peak_mib),
            "1 (ref)" if r.impl == r.ref else _fmt_x(mem_ratio(r, ref)),
            _fmt_mib(r.call_mib),
            _fmt_mib(r.maxrss_mib),
            r.ref,
        )
    console.print(table)
    idle_max = "" if report.idle_maxrss_mib is None else f" (its ru_maxrss: {report.idle_maxrss_mib:.1f} MiB)"
    console.print(
        f"peak MiB = peak RSS during the timed calls (VmHWM, reset after the warm-up call) minus "
        f"{report.baseline_mib:.1f} MiB, the RSS of an idle subprocess that only imported torch{idle_max}; "
        "it is everything the implementation holds: inputs, parameters, imported libraries and JIT-compiled "
        "code (numba, inductor), workspace, saved activations and gradients. in-call MiB is the part the "
        "fwd+bwd calls themselves add on top of what was resident before them. maxrss MiB is the "
        "child's raw whole-life ru_maxrss, including the torch import and warm-up (JIT compilation). "
        "time / ref > 1: the reference row (usually attnlab) is that many times faster; "
        "mem / ref > 1: it needs that many times less memory."
    )
    for r in report.rows:
        if r.skipped:
            console.print(f"[yellow]skipped {r.impl}[/]: {r.skipped}")
        if r.error:
            console.print(f"[red]failed {r.impl}[/]: {r.error}")
    for n in report.notes:
        console.print(f"note: {n}")
    if sc.targets:
        t = Table(title="targets" + (" (measured at the quick shape; the targets are for the full shape)" if report.shape != "full" else ""))
        t.add_column("target")
        t.add_column("measured", justify="right")
        t.add_column("needed", justify="right")
        t.add_column("result")
        for tg in sc.targets:
            measured, status = evaluate_target(tg, report)
            style = {"PASS": "green", "MISS": "red"}.get(status, "yellow")
            unit = tg.unit
            fmt = (lambda v: "-" if v is None else f"{v:,.1f} {unit}") if unit != "x" else _fmt_x
            t.add_row(tg.label, fmt(measured), f"{tg.op} {tg.threshold:g}{'x' if unit == 'x' else ' ' + unit}", f"[{style}]{status}[/]")
        console.print(t)


# --------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m attnlab.bench.harness", description="benchmark child process (internal)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--child", metavar="JSON", help="run one case: {builder, params, repeats, budget_s, warmup}")
    g.add_argument("--idle", action="store_true", help="import torch and report ru_maxrss")
    a = p.parse_args(argv)
    if a.idle:
        return _idle()
    return _child(json.loads(a.child))


if __name__ == "__main__":
    sys.exit(main())
