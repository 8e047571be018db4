"""``attnlab bench ring``: ring attention on 1, 2 and 4 processes of this machine.

For each number of processes ``W`` one subprocess is started; it forks ``W`` ranks that
form a gloo group, and every rank runs causal ring attention
(:func:`attnlab.distributed.ring.ring_attention`, zig-zag split) forward + backward on
its ``L / W`` positions of a ``(B, H, L, D)`` sequence, for each ``L`` in turn
(ascending). Per rank and per ``L``: the median wall time of the timed calls (each call
starts at a barrier; a call takes as long as its slowest rank) and the peak RSS of the
timed calls above the rank's RSS before it built its inputs (``VmHWM`` reset after the
warm-up call, as :mod:`attnlab.bench.harness` measures it). The table shows the largest
per-rank peak: what one machine of a cluster would need.

A single-process row of torch's fused SDPA (flash attention on CPU, O(L) memory) is the
baseline: ring attention's per-block math is explicit (``(L/2W)^2`` scores per block),
so its win is memory per rank as ``W`` grows, not speed on one machine. All ``W`` ranks
share this machine's cores (each gets ``cores / W`` threads), so the times show the
communication and per-block overhead, not the speed-up of ``W`` machines.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

__all__ = ["SHAPES", "WORLDS", "RingReport", "run_ring", "render_ring", "ring_json", "ring_point"]

RESULT_TAG = "ATTNLAB_RING_RESULT "
WORLDS = (1, 2, 4)

#: Sequence lengths and fixed sizes per shape; every L is a multiple of 2 * max(WORLDS).
SHAPES: dict[str, dict[str, Any]] = {
    "full": dict(Ls=(1024, 2048, 4096), B=1, H=2, D=64, repeats=3),
    "quick": dict(Ls=(1024, 2048), B=1, H=2, D=64, repeats=2),
    "tiny": dict(Ls=(16, 32), B=1, H=2, D=4, repeats=1),
}


# --------------------------------------------------------------------------- one rank


def _step_fn(impl: str, rank: int, world: int, L: int, B: int, H: int, D: int) -> Callable[[], None]:
    """One forward + backward of this rank's part (inputs built here, seeded)."""
    import torch
    import torch.nn.functional as F

    from ..distributed.ring import ring_attention, zigzag_shard

    g = torch.Generator().manual_seed(0)
    full = [torch.randn(B, H, L, D, generator=g) for _ in range(3)]  # (B, H, L, D)
    if impl == "sdpa":
        q, k, v = (x.requires_grad_() for x in full)

        def run():
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:
        q, k, v = (zigzag_shard(x, rank, world).contiguous().requires_grad_() for x in full)  # (B, H, L/W, D)

        def run():
            return ring_attention(q, k, v, causal=True)

    del full
    grad = torch.randn(q.shape[:-1] + (D,), generator=g)

    def step():
        for x in (q, k, v):
            x.grad = None
        run().backward(grad)

    return step


def ring_point(impl: str, rank: int, world: int, L: int, B: int, H: int, D: int, repeats: int) -> dict:
    """Measure one (impl, W, L) point on this rank: ``{"seconds": [...], "net_mib"}``."""
    import torch.distributed as dist

    from .harness import _hwm_mib, _reset_hwm, _rss_mib, _trim

    distributed = dist.is_available() and dist.is_initialized()
    _trim()
    before = _rss_mib()
    step = _step_fn(impl, rank, world, L, B, H, D)
    step()  # warm-up: allocator, first-call costs
    _trim()
    reset = _reset_hwm()
    times = []
    for _ in range(repeats):
        if distributed:
            dist.barrier()
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    hwm = _hwm_mib() if reset else None
    del step
    return {"times": times, "net_mib": None if hwm is None or before is None else max(0.0, hwm - before)}


def _rank_main(rank: int, spec: dict, store: str, out_path: str) -> None:
    import torch
    import torch.distributed as dist

    world = spec["world"]
    torch.set_num_threads(spec["threads"])
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    points = []
    for impl in spec["impls"]:
        # A throwaway point first: what the first call loads for good (autograd engine,
        # kernels, gloo buffers) is not the memory of the first L.
        ring_point(impl, rank, world, spec["Ls"][0], spec["B"], spec["H"], spec["D"], 1)
        for L in spec["Ls"]:
            p = ring_point(impl, rank, world, L, spec["B"], spec["H"], spec["D"], spec["repeats"])
            points.append({"impl": impl, "L": L, **p})
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, points)
        dist.destroy_process_group()
    else:
        gathered = [points]
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(gathered, f)


def _child(spec: dict) -> int:
    """Fork ``spec["world"]`` ranks, gather their points, print one result line."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out_path = os.path.join(tmp, "points.json")
        mp.start_processes(_rank_main, args=(spec, os.path.join(tmp, "store"), out_path), nprocs=spec["world"],
                           join=True, start_method="fork")
        with open(out_path) as f:
            per_rank = json.load(f)
    print(RESULT_TAG + json.dumps({"status": "ok", "per_rank": per_rank}), flush=True)
    return 0


# --------------------------------------------------------------------------- parent side


@dataclass
class RingReport:
    shape: str
    sizes: dict
    rows: list[dict] = field(default_factory=list)  # impl, world, L, seconds, peak_mib, per-rank figures
    errors: dict[str, str] = field(default_factory=dict)
    cores: int = 1


def _combine(impl: str, world: int, threads: int, per_rank: list[list[dict]]) -> list[dict]:
    rows = []
    for i, p0 in enumerate(per_rank[0]):
        pts = [r[i] for r in per_rank]
        # A call is done when its slowest rank is: the max over ranks of each timed call.
        calls = [max(p["times"][j] for p in pts) for j in range(len(p0["times"]))]
        mibs = [p["net_mib"] for p in pts]
        known = [m for m in mibs if m is not None]
        rows.append({
            "impl": f"{'sdpa (1 process)' if p0['impl'] == 'sdpa' else f'ring W={world}'} L={p0['L']}",
            "kind": p0["impl"],
            "world": world,
            "L": p0["L"],
            "threads_per_rank": threads,
            "seconds": statistics.median(calls),
            "peak_mib": max(known) if known else float("nan"),
            "rank_peak_mib": mibs,
        })
    return rows


def run_ring(
    shape: str = "full",
    *,
    worlds: Sequence[int] = WORLDS,
    repeats: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    timeout: float = 1800.0,
) -> RingReport:
    """Run the sweep: one subprocess per number of processes (``worlds``)."""
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {', '.join(SHAPES)}, got {shape!r}")
    sizes = dict(SHAPES[shape])
    if repeats is not None:
        sizes["repeats"] = repeats
    for L in sizes["Ls"]:
        for w in worlds:
            if L % (2 * w):
                raise ValueError(f"L={L} is not a multiple of 2 * {w} (the zig-zag split)")
    cores = os.cpu_count() or 1
    report = RingReport(shape, sizes, cores=cores)
    for i, w in enumerate(worlds):
        if progress:
            progress(f"{w} process{'es' if w > 1 else ''}", i, len(worlds))
        threads = max(1, cores // w)
        spec = {"world": w, "threads": threads, "Ls": list(sizes["Ls"]), "B": sizes["B"], "H": sizes["H"],
                "D": sizes["D"], "repeats": sizes["repeats"], "impls": ["sdpa", "ring"] if w == 1 else ["ring"]}
        name = f"W={w}"
        try:
            proc = subprocess.run([sys.executable, "-m", "attnlab.bench.ring", "--child", json.dumps(spec)],
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            report.errors[name] = f"timed out after {timeout:.0f} s"
            continue
        line = next((ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith(RESULT_TAG)), None)
        if line is None:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-2:]
            report.errors[name] = f"exit code {proc.returncode}: " + " | ".join(tail)
            continue
        report.rows.extend(_combine("ring", w, threads, json.loads(line[len(RESULT_TAG):])["per_rank"]))
    return report


def ring_json(report: RingReport) -> dict:
    """``{"scenario": "ring", "rows": [{"impl", "seconds", "peak_mib", "world", "L", ...}]}``."""
    return {"scenario": "ring", "rows": [dict(r) for r in report.rows]}


def render_ring(report: RingReport, console=None) -> None:
    from rich.table import Table

    from .harness import make_console

    console = console or make_console()
    sz = report.sizes
    t = Table(
        title="attnlab bench ring — causal ring attention (zig-zag), fwd+bwd, per-rank peak memory",
        caption=f"B={sz['B']}, H={sz['H']}, D={sz['D']}, fp32; {report.cores} cores shared by all ranks "
        f"(threads per rank = cores / W); median of {sz['repeats']} calls, each as long as its slowest rank",
    )
    Ls = list(sz["Ls"])
    t.add_column("impl", no_wrap=True)
    for L in Ls:
        t.add_column(f"L={L}: s", justify="right")
        t.add_column("MiB/rank", justify="right")
    groups: dict[str, dict[int, dict]] = {}
    for r in report.rows:
        label = "sdpa, 1 process" if r["kind"] == "sdpa" else f"ring, {r['world']} process{'es' if r['world'] > 1 else ''}"
        groups.setdefault(label, {})[r["L"]] = r
    for label, by_L in groups.items():
        cells = []
        for L in Ls:
            r = by_L.get(L)
            cells += ["-", "-"] if r is None else [f"{r['seconds']:.3f}", f"{r['peak_mib']:,.1f}"]
        t.add_row(label, *cells)
    console.print(t)
    for name, err in report.errors.items():
        console.print(f"[red]failed {name}[/]: {err}")
    console.print(
        "MiB/rank = the largest over ranks of (peak RSS of the timed calls - RSS before the rank built its inputs): "
        "its shard of q, k, v and their gradients, the key/value blocks in flight and one block's scores. "
        "The ranks share this machine's cores, so seconds measure overhead, not a cluster's speed-up."
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m attnlab.bench.ring", description="ring benchmark child (internal)")
    p.add_argument("--child", metavar="JSON", required=True)
    return _child(json.loads(p.parse_args(argv).child))


if __name__ == "__main__":
    sys.exit(main())
