"""``attnlab bench complexity``: Table 1 of "Attention Is All You Need", measured.

Vaswani et al. (2017), Table 1, compares layer types that map ``n`` vectors of size
``d`` to ``n`` vectors of size ``d``:

=============================  ====================  ===========  ===============
layer                          complexity per layer  sequential   max path length
=============================  ====================  ===========  ===============
self-attention                 O(n^2 d)              O(1)         O(1)
recurrent                      O(n d^2)              O(n)         O(n)
convolutional                  O(k n d^2)            O(1)         O(log_k n)
self-attention (restricted)    O(r n d)              O(1)         O(n / r)
=============================  ====================  ===========  ===============

This benchmark times forward + backward of one such layer of each kind at growing
``n`` (fixed ``d``), measures its peak memory, and fits the log-log slope: time
``~ n^a`` should give ``a ~ 2`` for self-attention and ``a ~ 1`` for the others once
``n`` is large enough that fixed overheads stop dominating. Additive (Bahdanau)
attention, ``O(n^2 h)``, is added for comparison. Two dense self-attention rows show
that the ``n^2`` memory of the score matrix is a property of the implementation, not
the layer: torch's fused SDPA (flash) keeps O(n d), the readable reference
:func:`attnlab.functional.attend` keeps the ``(n, n)`` weights for backward.

Each layer runs in its own subprocess over all ``n`` (ascending); the memory of a
point is its peak RSS minus the RSS just before its inputs were built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

__all__ = ["LAYERS", "Layer", "ComplexityReport", "SHAPES", "run_complexity", "fit_exponent", "build_layer", "render_complexity", "plot_complexity", "complexity_json"]

_MOD = "attnlab.bench.complexity"


@dataclass(frozen=True)
class Layer:
    name: str
    paper: str  # complexity per layer as Table 1 writes it
    sequential: str
    path: str
    expected_n_exponent: float
    needs: tuple[str, ...] = ()
    max_n: int | None = None  # larger n are skipped (memory on a shared 24 GiB machine)


LAYERS: dict[str, Layer] = {
    layer.name: layer
    for layer in (
        Layer("self-attention (SDPA)", "O(n^2 d)", "O(1)", "O(1)", 2.0),
        Layer("self-attention (explicit n x n)", "O(n^2 d)", "O(1)", "O(1)", 2.0, ("attnlab.functional.attend",), 4096),
        Layer("restricted self-attention (window r)", "O(r n d)", "O(1)", "O(n/r)", 1.0, ("attnlab.kernels.window",)),
        Layer("additive attention (hidden h = d)", "O(n^2 h)", "O(1)", "O(1)", 2.0, ("attnlab.kernels.additive",)),
        Layer("recurrent (nn.GRU)", "O(n d^2)", "O(n)", "O(n)", 1.0),
        Layer("convolutional (nn.Conv1d, k)", "O(k n d^2)", "O(1)", "O(log_k n)", 1.0),
    )
}

#: n sweeps and fixed sizes per shape. d: model width; r: window half-width; k: kernel size.
SHAPES: dict[str, dict[str, Any]] = {
    "full": dict(ns=(256, 512, 1024, 2048, 4096, 8192), B=4, d=128, r=128, k=3),
    "quick": dict(ns=(256, 512, 1024, 2048), B=4, d=64, r=64, k=3),
    "tiny": dict(ns=(8, 16), B=1, d=4, r=2, k=3),
}
REPEATS = {"full": 3, "quick": 2, "tiny": 1}
BUDGET_S = {"full": 20.0, "quick": 1.0, "tiny": 1.0}


# --------------------------------------------------------------------------- builders


def build_layer(layer: str, n: int, B: int, d: int, r: int, k: int) -> Callable:
    """``step()`` = forward + backward of one ``layer`` on ``(B, n, d)`` inputs."""
    import torch
    import torch.nn.functional as F

    from .cases import fwd_bwd

    if layer not in LAYERS:
        raise ValueError(f"unknown layer {layer!r}; valid layers: {', '.join(LAYERS)}")

    def qkv():
        return [torch.randn(B, 1, n, d, requires_grad=True) for _ in range(3)]  # (B, 1, n, d) one head

    if layer == "self-attention (SDPA)":
        q, kk, v = qkv()
        return fwd_bwd(lambda: F.scaled_dot_product_attention(q, kk, v), [q, kk, v])
    if layer == "self-attention (explicit n x n)":
        from attnlab.functional.attend import attend

        q, kk, v = qkv()
        return fwd_bwd(lambda: attend(q, kk, v).output, [q, kk, v])
    if layer == "restricted self-attention (window r)":
        from attnlab.kernels.window import window_attention

        q, kk, v = qkv()
        return fwd_bwd(lambda: window_attention(q, kk, v, r), [q, kk, v])
    if layer == "additive attention (hidden h = d)":
        from attnlab.kernels.additive import additive_attention

        q, kk, v = [torch.randn(B, n, d, requires_grad=True) for _ in range(3)]  # (B, n, d)
        w_q = (torch.randn(d, d) / math.sqrt(d)).requires_grad_()  # (h, d)
        w_k = (torch.randn(d, d) / math.sqrt(d)).requires_grad_()  # (h, d)
        v_att = (torch.randn(d) / math.sqrt(d)).requires_grad_()  # (h,)
        return fwd_bwd(lambda: additive_attention(q, kk, v, w_q, w_k, v_att).output, [q, kk, v, w_q, w_k, v_att])
    if layer == "recurrent (nn.GRU)":
        gru = torch.nn.GRU(d, d, batch_first=True)
        x = torch.randn(B, n, d, requires_grad=True)  # (B, n, d)
        return fwd_bwd(lambda: gru(x)[0], [x, *gru.parameters()])
    conv = torch.nn.Conv1d(d, d, k, padding=k // 2)
    x = torch.randn(B, d, n, requires_grad=True)  # (B, d, n): Conv1d wants channels first
    return fwd_bwd(lambda: conv(x), [x, *conv.parameters()])


# --------------------------------------------------------------------------- fitting


def fit_exponent(ns: Sequence[float], ys: Sequence[float | None], *, floor: float = 0.0) -> float | None:
    """Least-squares slope of ``log y`` against ``log n`` over the points with ``y > floor``
    (None if fewer than two such points)."""
    pts = [(math.log(n), math.log(y)) for n, y in zip(ns, ys) if y is not None and y > floor and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    if sxx == 0:
        return None
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx


@dataclass
class ComplexityReport:
    shape: str
    sizes: Mapping[str, Any]
    points: dict[str, list[dict]]  # layer -> one dict per n: n, seconds, net_mib, ...
    errors: dict[str, str]

    @property
    def ns(self) -> tuple[int, ...]:
        return tuple(self.sizes["ns"])

    def fit_range(self) -> tuple[int, ...]:
        """The upper half of the sweep (at least 2 points): the asymptotic regime."""
        ns = self.ns
        return ns[max(0, min(len(ns) - 2, len(ns) // 2 - 1)) :]

    def exponents(self, layer: str) -> tuple[float | None, float | None]:
        pts = self.points.get(layer)
        if not pts:
            return None, None
        keep = set(self.fit_range())
        sel = [p for p in pts if p["n"] in keep]
        t = fit_exponent([p["n"] for p in sel], [p["seconds"] for p in sel])
        # Below a few MiB the RSS counts allocator noise, not the layer.
        m = fit_exponent([p["n"] for p in sel], [p["net_mib"] for p in sel], floor=4.0)
        return t, m


def run_complexity(
    shape: str = "full",
    *,
    layers: Sequence[str] | None = None,
    repeats: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    timeout: float | None = 3600.0,
) -> ComplexityReport:
    """Sweep ``n`` for each layer (one subprocess per layer). Raises
    :class:`attnlab.bench.harness.ModuleMissing` if an attnlab kernel is absent."""
    from .harness import BenchError, ModuleMissing, missing_modules, run_sweep

    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {', '.join(SHAPES)}, got {shape!r}")
    names = list(LAYERS) if layers is None else list(layers)
    for name in names:
        if name not in LAYERS:
            raise ValueError(f"unknown layer {name!r}; valid layers: {', '.join(LAYERS)}")
        for m in missing_modules(LAYERS[name].needs):
            raise ModuleMissing(m)
    sizes = SHAPES[shape]
    fixed = {k: v for k, v in sizes.items() if k != "ns"}
    points: dict[str, list[dict]] = {}
    errors: dict[str, str] = {}
    for i, name in enumerate(names):
        if progress:
            progress(name, i, len(names))
        max_n = LAYERS[name].max_n
        ns = [n for n in sizes["ns"] if max_n is None or n <= max_n]
        try:
            pts = run_sweep(
                f"{_MOD}:build_layer",
                [dict(layer=name, n=n, **fixed) for n in ns],
                repeats=REPEATS[shape] if repeats is None else repeats,
                budget_s=BUDGET_S[shape],
                timeout=timeout,
            )
        except ModuleMissing:
            raise
        except BenchError as e:
            errors[name] = str(e)
            continue
        points[name] = [{"n": n, **p} for n, p in zip(ns, pts)]
    return ComplexityReport(shape, sizes, points, errors)


# --------------------------------------------------------------------------- output


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def render_complexity(report: ComplexityReport, console=None) -> None:
    from rich.table import Table

    from .harness import make_console

    console = console or make_console()
    sz = report.sizes
    fr = report.fit_range()
    t = Table(
        title='attnlab bench complexity — Table 1 of "Attention Is All You Need", measured',
        caption=f"fwd+bwd, fp32, B={sz['B']}, d={sz['d']}, r={sz['r']}, k={sz['k']}; a = slope of log(cost) against "
        f"log(n), least squares on n = {', '.join(map(str, fr))} (memory: points >= 4 MiB only)",
    )
    left = ("layer", "Table 1: per layer", "sequential", "max path")
    for col in (*left, "a expected", "a time", "a memory", f"s at n={report.ns[-1]}", f"MiB at n={report.ns[-1]}"):
        t.add_column(col, justify="left" if col in left else "right", no_wrap=True)
    for name, layer in LAYERS.items():
        if name not in report.points and name not in report.errors:
            continue
        if name in report.errors:
            t.add_row(name, layer.paper, layer.sequential, layer.path, _fmt(layer.expected_n_exponent, ".0f"),
                      "[red]failed[/]", "", "", "")
            continue
        ta, ma = report.exponents(name)
        last = report.points[name][-1]
        at_last = last["n"] == report.ns[-1]
        t.add_row(name, layer.paper, layer.sequential, layer.path, _fmt(layer.expected_n_exponent, ".0f"),
                  _fmt(ta), _fmt(ma), _fmt(last["seconds"] if at_last else None, ".4f"),
                  _fmt(last["net_mib"] if at_last else None, ",.1f"))
    console.print(t)

    d = Table(title="per n: seconds (median fwd+bwd) / peak MiB (above the RSS before the inputs)")
    d.add_column("layer", no_wrap=True)
    for n in report.ns:
        d.add_column(f"n={n}", justify="right")
    for name, pts in report.points.items():
        by_n = {p["n"]: p for p in pts}
        d.add_row(name, *(f"{by_n[n]['seconds']:.4f} / {by_n[n]['net_mib']:,.1f}" if n in by_n else "skipped" for n in report.ns))
    console.print(d)
    for name, err in report.errors.items():
        console.print(f"[red]failed {name}[/]: {err}")
    for name, layer in LAYERS.items():
        if name in report.points and layer.max_n is not None and layer.max_n < report.ns[-1]:
            console.print(f"note: {name} is run up to n={layer.max_n} only (its (n, n) tensors at larger n "
                          "would take GiBs of a shared machine).")
    console.print(
        "The paper's memory column is not in Table 1; here the score-matrix layers differ by implementation: "
        "SDPA (flash) keeps O(n d) for backward, the explicit reference keeps the (n, n) weights."
    )


def complexity_json(report: ComplexityReport) -> dict:
    """Same schema as the scenarios: one row per (layer, n), ``impl`` = ``"<layer> n=<n>"``."""
    rows = []
    for name, pts in report.points.items():
        for p in pts:
            rows.append({"impl": f"{name} n={p['n']}", "seconds": float(p["seconds"]), "peak_mib": float(p["net_mib"])})
    return {"scenario": "complexity", "rows": rows}


def plot_complexity(report: ComplexityReport, path) -> None:
    """Log-log time and memory against ``n``, one line per layer, fitted slopes in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(13, 5.2))
    for name, pts in report.points.items():
        ta, ma = report.exponents(name)
        ns = [p["n"] for p in pts]
        secs = [p["seconds"] for p in pts]
        mibs = [p["net_mib"] for p in pts]
        (line,) = ax_t.loglog(ns, secs, "o-", label=f"{name}: a={_fmt(ta)} ({LAYERS[name].paper})")
        kept = [(n, m) for n, m in zip(ns, mibs) if m > 0]
        if kept:
            ax_m.loglog([n for n, _ in kept], [m for _, m in kept], "o-", color=line.get_color(),
                        label=f"{name}: a={_fmt(ma)}")
    for ax, what in ((ax_t, "seconds (fwd+bwd, median)"), (ax_m, "peak MiB above the inputs' baseline")):
        ax.set_xlabel("sequence length n")
        ax.set_ylabel(what)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    sz = report.sizes
    fig.suptitle(f"Per-layer cost against n (d={sz['d']}, r={sz['r']}, k={sz['k']}, B={sz['B']}, fp32, fwd+bwd): "
                 "Vaswani et al. 2017, Table 1", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
