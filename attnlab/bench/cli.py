"""``attnlab bench SCENARIO``: run one benchmark scenario and print its table.

    attnlab bench list
    attnlab bench window [--quick] [--json PATH] [--repeats N]
    attnlab bench complexity [--quick] [--plot PATH] [--json PATH]
    attnlab bench ring [--quick] [--json PATH] [--repeats N]

Wired into ``attnlab`` through :func:`register`; ``python -m attnlab.bench.cli`` runs
it on its own. Exit status: 0 when every row was measured (targets are reported as
PASS/MISS, and fail the run only with ``--strict``, status 3), 4 when an attnlab module
a scenario needs is missing ("not available yet: <module> missing"), 1 when a row
failed, 2 for bad arguments (argparse).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from .._argtypes import positive_int
from .scenarios import SCENARIOS

__all__ = ["register", "run", "main", "CHOICES"]

CHOICES: tuple[str, ...] = (*SCENARIOS, "complexity", "ring", "list")

EXIT_FAILED = 1  # a row could not be measured (and ValueError from bad arguments)
EXIT_MISS = 3  # --strict and a target was missed
EXIT_MISSING = 4  # an attnlab module the scenario needs does not exist (yet)


def _add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("scenario", choices=CHOICES, metavar="SCENARIO",
                   help=f"one of: {', '.join(CHOICES)} ('list' describes them)")
    p.add_argument("--quick", action="store_true", help="a smaller shape of the same scenario (under a minute)")
    p.add_argument("--json", metavar="PATH", help='also write {"scenario", "rows": [{"impl", "seconds", "peak_mib"}]}')
    p.add_argument("--repeats", type=positive_int, metavar="N", help="timed calls per row (median reported)")
    p.add_argument("--plot", metavar="PATH", help="complexity only: save the log-log plot (PNG, PDF, SVG)")
    p.add_argument("--strict", action="store_true", help="exit with status 3 when a target is missed")
    p.set_defaults(func=run)
    return p


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``bench`` subcommand to an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "bench",
        help="benchmarks: ratios against baselines measured in the same run, and peak memory",
        description="Run one benchmark scenario: each implementation in its own subprocess (fp32, all cores), "
        "median fwd+bwd time, peak memory, the ratio against attnlab and the target. "
        "'attnlab bench list' describes the scenarios.",
    )
    return _add_arguments(p)


def _list(console) -> int:
    from rich.table import Table

    from .complexity import SHAPES as CSHAPES
    from .ring import SHAPES as RSHAPES

    t = Table(title="attnlab bench scenarios")
    for col in ("scenario", "what", "full shape", "targets"):
        t.add_column(col)
    for sc in SCENARIOS.values():
        shape = ", ".join(f"{k}={v}" for k, v in sc.shapes["full"].items())
        t.add_row(sc.name, sc.title, shape, "\n".join(tg.label for tg in sc.targets))
    cs = CSHAPES["full"]
    t.add_row("complexity", "time and memory against n per layer type (Vaswani et al. 2017, Table 1)",
              f"n={list(cs['ns'])}, d={cs['d']}, r={cs['r']}, k={cs['k']}", "fitted log-log exponents (--plot PATH)")
    rs = RSHAPES["full"]
    t.add_row("ring", "causal ring attention on 1, 2, 4 processes: time and per-rank peak memory against L",
              f"L={list(rs['Ls'])}, B={rs['B']}, H={rs['H']}, D={rs['D']}", "per-rank memory falls as ranks grow")
    console.print(t)
    return 0


def _progress(console):
    """A rich progress line while the subprocesses run; returns (context, callback)."""
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    prog = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TimeElapsedColumn(), console=console, transient=True)
    task = prog.add_task("starting", total=1)

    def update(name: str, i: int, total: int) -> None:
        prog.update(task, description=f"running {name}", completed=i, total=total)

    return prog, update


def run(args: argparse.Namespace) -> int:
    """Run the scenario named by ``args``; returns the exit status."""
    from . import harness

    console = harness.make_console()
    if args.scenario == "list":
        return _list(console)
    if args.plot and args.scenario != "complexity":
        raise ValueError(f"--plot applies to 'complexity' only, not to {args.scenario!r}")
    shape = "quick" if args.quick else "full"
    load, cores = os.getloadavg(), os.cpu_count() or 1
    console.print(f"[dim]load average {' '.join(f'{x:.2f}' for x in load)} on {cores} cores[/]")
    if load[0] > 0.5 * cores:
        console.print(
            "[yellow]warning: the machine is busy (1-minute load average above half the cores); every row runs "
            "on all cores, and small-op workloads (decode) can be several times slower than on an idle machine. "
            "Ratios are less affected than seconds, but noisier.[/]"
        )
    prog, update = _progress(console)
    try:
        if args.scenario == "complexity":
            from .complexity import complexity_json, plot_complexity, render_complexity, run_complexity

            with prog:
                report = run_complexity(shape, repeats=args.repeats, progress=update)
            render_complexity(report, console)
            if args.plot:
                plot_complexity(report, args.plot)
                console.print(f"plot written to {args.plot}")
            if args.json:
                harness.write_json(complexity_json(report), args.json)
                console.print(f"figures written to {args.json}")
            return EXIT_FAILED if report.errors else 0

        if args.scenario == "ring":
            from .ring import render_ring, ring_json, run_ring

            with prog:
                ring_report = run_ring(shape, repeats=args.repeats, progress=update)
            render_ring(ring_report, console)
            if args.json:
                harness.write_json(ring_json(ring_report), args.json)
                console.print(f"figures written to {args.json}")
            return EXIT_FAILED if ring_report.errors else 0

        scenario = SCENARIOS[args.scenario]
        with prog:
            report = harness.run_scenario(scenario, shape, repeats=args.repeats, progress=update)
    except harness.ModuleMissing as e:
        print(f"attnlab bench {args.scenario}: {e}", file=sys.stderr)
        return EXIT_MISSING
    harness.render_report(report, console)
    if args.json:
        harness.write_json(harness.report_json(report), args.json)
        console.print(f"figures written to {args.json}")
    if any(r.error for r in report.rows):
        return EXIT_FAILED
    if args.strict and any(harness.evaluate_target(t, report)[1] == "MISS" for t in scenario.targets):
        return EXIT_MISS
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m attnlab.bench.cli SCENARIO ...`` (the same as ``attnlab bench``)."""
    p = argparse.ArgumentParser(prog="attnlab bench", description="attnlab benchmarks (see 'list')")
    args = _add_arguments(p).parse_args(argv)
    try:
        return run(args)
    except ValueError as e:
        print(f"attnlab bench: error: {e}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
