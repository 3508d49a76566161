"""Compare runs at equal tokens: a markdown table and figures of val bpb against tokens, bytes and projected time.

    python -m analysis.compare runs/sweep [more runs or sweeps] --out results/ [--gbps 1 --latency-ms 10]
"""
import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from analysis.network import ALGORITHMS, Link, Projection, compute_seconds, project, utilization_curve
from analysis.plots import legend_outside, readable_log_ticks, save_png, style
from analysis.runs import Run, config_differences, find_runs
from jaximus import UserError
from jaximus.accounting import PEAK_FLOPS
from jaximus.cli import ArgumentParser
from jaximus.files import atomic_write

MiB = 2**20
TINY_STEP_S = 1e-3  # below this a model is far too small for the accelerator it is projected onto


@dataclass(frozen=True)
class Cluster:
    """What the runs are projected onto: the link between islands and how long an inner step computes."""
    link: Link
    accelerator: str = "H100"
    mfu: float = 0.4
    step_s: float | str | None = None  # seconds per inner step, "measured", or None for FLOPs / (peak x MFU)

    def compute(self) -> str:
        if self.step_s == "measured":
            return "the step time measured in each run"
        if self.step_s is not None:
            return f"{self.step_s:g} s of compute per inner step"
        return f"{self.accelerator} at {self.mfu:.0%} MFU per device"

    def describe(self) -> str:
        return (f"{self.link.gbps:g} Gbit/s and {self.link.latency_s * 1e3:g} ms between islands, "
                f"{self.link.algorithm} all-reduce, {self.compute()}")


def compute_s(run: Run, cluster: Cluster) -> float:
    if cluster.step_s == "measured":
        if run.summary:
            return run.summary["perf/step_s"]
        return float(np.median([run.tokens_per_step / r["perf/tokens_per_sec"] for r in run.train_rows[1:]
                                or run.train_rows]))
    if cluster.step_s is not None:
        return float(cluster.step_s)
    flops = run.config["resolved"]["flops_per_token"] * run.tokens_per_step / run.islands
    peak = PEAK_FLOPS[cluster.accelerator] * run.config["parallel"]["fsdp"]
    return compute_seconds(flops, peak, cluster.mfu)


def overlap_s(run: Run, step_s: float) -> float:
    """The scheme's own overlap: sync DP's all-reduce behind the backward pass, a streaming fragment behind
    tau inner steps, a sync program behind nothing."""
    return run.overlap_steps * step_s


def projection(run: Run, cluster: Cluster, upto: int | None = None, link: Link | None = None) -> Projection:
    steps = run.steps if upto is None else upto
    events = [b for s, b in run.events() if s <= steps]
    t = compute_s(run, cluster)
    return project(events, steps, t, run.islands, link or cluster.link, overlap_s(run, t))


def reference_of(runs: list[Run]) -> tuple[Run | None, list[str]]:
    syncs = [r for r in runs if r.scheme == "sync"]
    if not syncs:
        return None, ["no `sync` run among these: differences and reductions are left blank"]
    notes = [f"{len(syncs)} sync runs; comparing against {syncs[0].name}"] if len(syncs) > 1 else []
    return syncs[0], notes


def flags(run: Run, reference: Run | None) -> list[str]:
    out = []
    if not run.finished:
        out.append(f"in progress (step {run.steps} of {run.config['max_steps']})")
    if reference is not None and run is not reference:
        if run.evals and reference.evals and run.evals[-1]["tokens"] != reference.evals[-1]["tokens"]:
            out.append(f"tokens differ ({run.evals[-1]['tokens']:,} vs {reference.evals[-1]['tokens']:,})")
        diff = config_differences(reference, run)
        if diff:
            out.append("config differs: " + ", ".join(f"{k} ({a} vs {b})" for k, (a, b) in diff.items()))
    return out


def _duration(seconds: float) -> str:
    for unit, size in (("h", 3600), ("min", 60), ("s", 1), ("ms", 1e-3)):
        if seconds >= size or unit == "ms":
            return f"{seconds / size:.3g} {unit}"


def _num(x: float) -> str:
    """Three significant figures without exponents: 0.198, 37.2, 2,240."""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def table(runs: list[Run], cluster: Cluster) -> tuple[str, list[str]]:
    """The markdown table and the warnings to print beside it."""
    reference, warnings = reference_of(runs)
    lines = ["| run | scheme | H | steps | tokens | val bpb | vs sync | MiB sent per island | wire MiB "
             "| peak MiB in a step | reduction | syncs | projected time, blocking | CU | CU, overlapped | flags |",
             "|" + "---|" * 16]
    for run in runs:
        p = projection(run, cluster)
        bpb = run.evals[-1]["val/bpb"] if run.evals else None
        ref_bpb = reference.evals[-1]["val/bpb"] if reference and reference.evals else None
        delta = f"{bpb - ref_bpb:+.4f}" if bpb is not None and ref_bpb is not None and run is not reference else "—"
        on_wire = reference is not None and reference.wire_bytes and run.wire_bytes
        reduction = (f"{_num(reference.wire_bytes / run.wire_bytes)}x" if on_wire else
                     f"{_num(reference.bytes / run.bytes)}x" if reference and run.bytes else "—")
        wire = "—" if run.wire_bytes is None else _num(run.wire_bytes / MiB)
        run_flags = flags(run, reference)
        warnings += [f"{run.name}: {f}" for f in run_flags]
        lines.append(
            f"| {run.name} | {run.scheme} | {run.sync_every or '—'} | {run.steps} | {run.tokens:,} "
            f"| {'—' if bpb is None else f'{bpb:.4f}'} | {delta} | {_num(run.bytes / MiB)} | {wire} "
            f"| {_num(run.peak_step_bytes / MiB)} | {reduction} | {run.syncs} "
            f"| {_duration(p.wall_s)} | {p.utilization:.1%} | {p.utilization_overlap:.1%} | {'; '.join(run_flags)} |")
    if cluster.step_s is None and all(compute_s(run, cluster) < TINY_STEP_S for run in runs):
        warnings.append(f"on {cluster.compute()} every run computes for under {TINY_STEP_S * 1e3:g} ms per inner step, so "
                        "communication is all its projected time and its CU is about 0; add --step-time measured to "
                        "project each run's own measured step time (or --step-time S for a step of S seconds)")
    return "\n".join(lines) + "\n", warnings


def figures(runs: list[Run], cluster: Cluster, out: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from analysis.network import plot_utilization
    series = {}
    for run in runs:
        key = "comm/wire_bytes" if run.wire_bytes is not None else "comm/cross_island_bytes"
        sent = {r["step"]: r[key] / MiB for r in run.train_rows}
        points = [(e["tokens"], sent.get(e["step"]) or np.nan,  # nothing sent yet has no place on a log axis
                   projection(run, cluster, e["step"]).wall_overlap_s if e["step"] else 0.0, e["val/bpb"])
                  for e in run.evals if e["step"] in sent or e["step"] == 0]
        series[run.name] = np.array(points, dtype=np.float64).reshape(-1, 4)
    written = []
    for column, name, xlabel, log in ((0, "bpb_vs_tokens", "tokens", False),
                                      (1, "bpb_vs_bytes", "cross-island MiB on the wire per island", True),
                                      (2, "bpb_vs_wallclock", "projected wall-clock, overlapped (s)", False)):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for i, (label, pts) in enumerate(series.items()):
            ax.plot(pts[:, column], pts[:, 3], label=label, **style(i))
        ax.set(xlabel=xlabel, ylabel="validation bits per byte", xscale="log" if log else "linear")
        if log:
            readable_log_ticks(ax.xaxis)
        ax.set_title(f"validation bpb against {xlabel}" + (f"\n{cluster.describe()}" if column == 2 else ""), fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        legend_outside(ax)
        save_png(fig, out / f"{name}.png")
        plt.close(fig)
        written.append(out / f"{name}.png")
    simulated = {run.name: [(e["time/sim_s"], e["val/bpb"]) for e in run.evals if "time/sim_s" in e] for run in runs}
    if any(len(points) > 1 for points in simulated.values()):  # runs from before the simulated clock have none
        written.append(plot_simulated(simulated, out / "bpb_vs_simulated_time.png"))
    inputs = {run.name: (compute_s(run, cluster), [b for _, b in run.events()], run) for run in runs}
    # Span the bandwidths where each run goes from communication-bound to compute-bound.
    balance = [8 * sum(ev) / (run.steps * t) / 1e9 for t, ev, run in inputs.values() if sum(ev)]
    gbps = np.logspace(np.log10(min(balance or [1]) / 100), np.log10(max(balance or [1]) * 1000), 120)
    curves = {name: (gbps, utilization_curve(ev, run.steps, t, run.islands, cluster.link.latency_s,
                                             cluster.link.algorithm, overlap_s(run, t), gbps))
              for name, (t, ev, run) in inputs.items()}
    plot_utilization(curves, out / "utilization_vs_bandwidth.png",
                     f"overlapped; {cluster.link.latency_s * 1e3:g} ms latency; {cluster.compute()}")
    return written + [out / "utilization_vs_bandwidth.png"]


def plot_simulated(series: dict[str, list], path: Path) -> Path:
    """Validation bpb against each run's own simulated wall-clock (its islands.* speeds and link)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (label, points) in enumerate((k, v) for k, v in series.items() if len(v) > 1):
        ax.plot(*np.array(points).T, label=label, **style(i))
    ax.set(xlabel="simulated wall-clock (s)", ylabel="validation bits per byte")
    ax.set_title("validation bpb against simulated wall-clock\neach run's islands.* speeds, waits and link", fontsize=8)
    ax.grid(True, alpha=0.3)
    legend_outside(ax)
    save_png(fig, path)
    plt.close(fig)
    return path


def _step_time(text: str):
    if text == "measured":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("takes seconds per inner step or 'measured'") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be > 0 seconds per inner step")
    return value


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m analysis.compare", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories, or sweep directories holding them")
    parser.add_argument("--out", required=True, help="directory for results.md and the figures")
    parser.add_argument("--gbps", type=float, default=1.0, help="bandwidth between islands, Gbit/s (default 1)")
    parser.add_argument("--latency-ms", type=float, default=10.0, help="latency per message (default 10 ms)")
    parser.add_argument("--algorithm", choices=ALGORITHMS, default="ring", help="the all-reduce's pattern (default ring)")
    parser.add_argument("--accelerator", choices=sorted(PEAK_FLOPS), default="H100", metavar="NAME",
                        help=f"the compute each island's step is projected onto: {', '.join(sorted(PEAK_FLOPS))} "
                             "(default H100)")
    parser.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilization of the compute (0.4)")
    parser.add_argument("--step-time", type=_step_time, help="seconds per inner step, or 'measured'; "
                        "overrides --accelerator/--mfu")
    args = parser.parse_args(argv)
    try:
        cluster = Cluster(Link(args.gbps, args.latency_ms / 1e3, args.algorithm), args.accelerator, args.mfu,
                          args.step_time)
        if not 0 < args.mfu <= 1:
            raise ValueError(f"--mfu must be in (0, 1], got {args.mfu}")
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out}: a file is there; give a directory for results.md and the figures")
        runs, warnings = find_runs(args.runs)
        if not runs:
            raise UserError(f"{', '.join(args.runs)}: no run with metrics to compare ({'; '.join(warnings)})")
        text, more = table(runs, cluster)
        out.mkdir(parents=True, exist_ok=True)
        written = figures(runs, cluster, out)
        report = f"Projected onto {cluster.describe()}.\n\n{text}"
        atomic_write(out / "results.md", report)
    except (UserError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for warning in warnings + more:
        print(f"warning: {warning}", file=sys.stderr)
    print(report)
    print("wrote " + ", ".join(str(p) for p in [out / "results.md", *written]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
