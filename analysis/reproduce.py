"""Reproduce a published finding of the DiLoCo family at laptop scale: one sweep, one table, one figure, one verdict.

    python -m analysis.reproduce --list
    python -m analysis.reproduce scaling_m [--out DIR] [--runs DIR] [--seeds N] [key=value ...]
    python -m analysis.reproduce all

Each point is a train.py run of experiments/diloco_nanochat in <runs>/ (finished ones are skipped,
unfinished ones resume: rerun the same command after an interruption); every point's config is
checked before the first one starts. <out>/<name>/ gets results.md (the verdict line, the finding, a
table of mean and spread over seeds, and analysis.compare's table of every run), <name>.png and
verdict.json; <out>/README.md indexes the verdicts. The seed spread is the largest gap between two
seeds of one point; a difference within it is "inconclusive (within seed noise)".
"""
import argparse
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from analysis.compare import Cluster, table
from analysis.network import Link
from analysis.plots import legend_outside, save_png, style
from analysis.reproductions import REPRODUCTIONS, SEEDS, SIZE, Point, Reproduction
from analysis.runs import load_run
from analysis.sweep import MANIFEST_FIX, check_points, run_sweep
from jaximus import UserError
from jaximus.cli import ArgumentParser
from jaximus.files import atomic_write, read_json

CONFIG = "experiments/diloco_nanochat/config.py"
MiB = 2**20


def seeds_of(point: Point, seeds: int | None) -> tuple[int, ...]:
    return SEEDS[:seeds or point.seeds]


def run_name(label: str, seed: int) -> str:
    return label if seed == SEEDS[0] else f"{label}_seed-{seed}"


def points_of(rep: Reproduction, overrides: list[str], seeds: int | None, runs_dir: Path) -> list[dict]:
    """Sweep points: SIZE, then the user's overrides, then the point's own keys and seed (and the run it starts
    from, in runs_dir); `stage` 1 for a point that starts from another's run, so it runs after them."""
    varied = {o.partition("=")[0] for o in overrides} & set(rep.keys)
    if varied:
        raise UserError(f"{', '.join(sorted(varied))}: {rep.name} varies this key across its points; leave it out")

    def start(p: Point, s: int) -> list[str]:
        return [f"run.start_from={(runs_dir / run_name(p.start_from, s)).resolve()}"] if p.start_from else []

    # the point's keys before the user's: a user's max_steps (say) sizes every point alike
    return [{"name": run_name(p.label, s), "overrides": [*SIZE, *p.overrides, *overrides, f"seed={s}", *start(p, s)],
             "stage": int(bool(p.start_from))} for p in rep.points for s in seeds_of(p, seeds)]


def run_stages(runs_dir: Path, points: list[dict], inline: bool) -> int:
    """The points that start from no other run, then (checked once those exist) the ones that start from them."""
    for stage in (0, 1):
        chosen = [{k: v for k, v in p.items() if k != "stage"} for p in points if p["stage"] == stage]
        if not chosen:
            continue
        if stage:
            try:
                check_points(CONFIG, chosen)
            except UserError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
        code = run_sweep(runs_dir, CONFIG, chosen, inline=inline)
        if code:
            return code
    return 0


@dataclass
class Results:
    """Final val bpb and bytes of every point, over its seeds; `noise` is the largest seed-to-seed gap."""
    runs: dict  # label -> [Run per seed]
    noise: float

    @property
    def labels(self) -> list[str]:
        return list(self.runs)

    def bpbs(self, label: str) -> list[float]:
        return [run.evals[-1]["val/bpb"] for run in self.runs[label]]

    def bpb(self, label: str) -> float:
        return float(np.mean(self.bpbs(label)))

    def diff(self, a: str, b: str) -> float:
        """a's bpb minus b's over the seeds both ran: the same initializations, so only the method differs."""
        n = min(len(self.runs[a]), len(self.runs[b]))
        return float(np.mean(self.bpbs(a)[:n]) - np.mean(self.bpbs(b)[:n]))

    def bytes(self, label: str) -> float:
        return self.runs[label][0].bytes

    def wire(self, label: str) -> float:
        return self.runs[label][0].wire_bytes or self.runs[label][0].bytes

    def syncs(self, label: str) -> int:
        return self.runs[label][0].syncs


def collect(rep: Reproduction, runs_dir: Path, seeds: int | None) -> Results:
    runs = {p.label: [load_run(runs_dir / run_name(p.label, s)) for s in seeds_of(p, seeds)] for p in rep.points}
    starts = {p.start_from for p in rep.points}  # a run others start from is not compared: its spread is theirs
    spreads = [max(b) - min(b) for b in ([r.evals[-1]["val/bpb"] for r in rs] for label, rs in runs.items()
                                         if label not in starts) if len(b) > 1]
    return Results(runs, max(spreads, default=0.0))


def point_table(rep: Reproduction, r: Results) -> str:
    lines = [f"| point | what | val bpb (mean over seeds) | seeds | spread | vs {rep.reference} at equal seeds "
             "| MiB sent per island | MiB on the wire | syncs |", "|" + "---|" * 9]
    for p in rep.points:
        b = r.bpbs(p.label)
        spread = f"{max(b) - min(b):.4f}" if len(b) > 1 else "—"
        lines.append(f"| {p.label} | {p.what} | {r.bpb(p.label):.4f} | {len(b)} | "
                     f"{spread} | {r.diff(p.label, rep.reference):+.4f} | {r.bytes(p.label) / MiB:.2f} | "
                     f"{r.wire(p.label) / MiB:.2f} | {r.syncs(p.label)} |")
    return "\n".join(lines) + "\n"


def figure(rep: Reproduction, r: Results, path: Path, verdict: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.4))
    labels = r.labels
    means = [r.bpb(lab) for lab in labels]
    lo = [r.bpb(lab) - min(r.bpbs(lab)) for lab in labels]
    hi = [max(r.bpbs(lab)) - r.bpb(lab) for lab in labels]
    best = int(np.argmin(means))  # lower bpb is better
    colors = ["tab:green" if i == best else "tab:blue" for i in range(len(labels))]
    left.bar(range(len(labels)), means, yerr=[lo, hi], capsize=3, color=colors, alpha=0.8)
    left.axhline(r.bpb(rep.reference), color="k", lw=0.8, ls="--", label=f"{rep.reference} (the reference)")
    left.annotate(f"best: {means[best]:.4f}", (best, means[best]), xytext=(0, 6), textcoords="offset points",
                  ha="center", fontsize=7, color="tab:green")
    left.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=7)
    span = max(means) - min(means) or 0.01
    left.set_ylim(min(means) - span - r.noise, max(means) + span + r.noise)
    left.set(ylabel="final validation bits per byte")
    left.set_title("final bpb per point (seed range as error bars; best in green)", fontsize=8)
    left.legend(fontsize=7)
    starts = {p.label: p.start_from for p in rep.points}
    for i, (label, runs) in enumerate(r.runs.items()):
        evals = runs[0].evals
        look = {**style(i), "linewidth": 2.5 if label == labels[best] else 1.2}
        # a point that starts from another's run continues its curve: its tokens follow that run's
        offset = r.runs[starts[label]][0].evals[-1]["tokens"] if starts[label] and rep.curve == "tokens" else 0
        right.plot([offset + e[rep.curve] for e in evals][1:], [e["val/bpb"] for e in evals][1:], label=label, **look)
    right.set(xlabel="simulated seconds" if rep.curve == "time/sim_s" else rep.curve, ylabel="validation bits per byte")
    right.set_title("validation bpb during training (first seed)", fontsize=8)
    right.grid(True, alpha=0.3)
    legend_outside(right)
    fig.suptitle(f"{rep.name}: {verdict}", fontsize=9)
    fig.tight_layout()
    save_png(fig, path)
    plt.close(fig)


def cpu_minutes(runs_dir: Path, names: list[str]) -> float | None:
    """Training time of these points as the sweep recorded it, when every one was."""
    manifest = runs_dir / "sweep.json"
    status = read_json(manifest, MANIFEST_FIX)["status"] if manifest.is_file() else {}
    seconds = [status.get(n, {}).get("seconds") for n in names]
    return None if None in seconds else sum(seconds) / 60


def report(rep: Reproduction, runs_dir: Path, out: Path, seeds: int | None, overrides: list[str]) -> dict:
    r = collect(rep, runs_dir, seeds)
    measured, verdict = rep.judge(r)
    names = [p["name"] for p in points_of(rep, overrides, seeds, runs_dir)]
    minutes = cpu_minutes(runs_dir, names)
    out.mkdir(parents=True, exist_ok=True)
    every_run = [run for runs in r.runs.values() for run in runs]
    cluster = Cluster(Link(1.0, 0.01, "ring"))
    runs_table, _ = table(every_run, cluster)
    size = " ".join([*SIZE, *overrides])
    text = (f"# {rep.name}: {verdict}\n\n**Finding** ({rep.paper}): {rep.finding}\n\n**Measured**: {measured}. "
            f"Seed spread {r.noise:.4f} bpb.\n\n**Verdict**: {verdict}.\n\n"
            f"Size: `{size}` over experiments/diloco_nanochat; {len(names)} runs"
            + (f", {minutes:.1f} min of training on this machine" if minutes else "") + ". "
            + (rep.notes + "\n\n" if rep.notes else "\n\n")
            + f"Command: `python -m analysis.reproduce {rep.name}"
            + (f" {' '.join(overrides)}" if overrides else "") + (f" --seeds {seeds}" if seeds else "") + "`\n\n"
            + point_table(rep, r) + f"\n![{rep.name}]({rep.name}.png)\n\n## Every run\n\nProjected onto "
            + cluster.describe() + ".\n\n" + runs_table)
    figure(rep, r, out / f"{rep.name}.png", verdict)
    atomic_write(out / "results.md", text)
    result = {"name": rep.name, "paper": rep.paper, "finding": rep.finding, "measured": measured,
              "verdict": verdict, "noise": r.noise, "runs": len(names), "minutes": minutes,
              "bpb": {lab: r.bpbs(lab) for lab in r.labels}}
    atomic_write(out / "verdict.json", json.dumps(result, indent=2))
    return result


def write_index(out: Path) -> None:
    rows = [json.loads((out / rep / "verdict.json").read_text()) for rep in REPRODUCTIONS
            if (out / rep / "verdict.json").is_file()]
    lines = ["| reproduction | finding | paper | our result | verdict |", "|---|---|---|---|---|"]
    lines += [f"| [{v['name']}]({v['name']}/results.md) | {v['finding']} | {v['paper']} | {v['measured']} "
              f"| **{v['verdict']}** |" for v in rows]
    atomic_write(out / "README.md", "# Reproductions\n\nWritten by `python -m analysis.reproduce`.\n\n"
                 + "\n".join(lines) + "\n")


def list_text() -> str:
    lines = [f"{'name':<12} {'points':>6} {'CPU min':>8}  finding"]
    for rep in REPRODUCTIONS.values():
        runs = sum(p.seeds for p in rep.points)
        lines.append(f"{rep.name:<12} {runs:>6} {rep.minutes:>8g}  {rep.finding}")
    return "\n".join(lines) + ("\n\nCPU minutes: training time at the default size on 2 cores; points shared "
                               "between reproductions (dp, diloco) run once.")


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m analysis.reproduce", description=__doc__.splitlines()[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("name", nargs="?", help=f"one of {', '.join(REPRODUCTIONS)}, or all")
    parser.add_argument("overrides", nargs="*", help="key=value for every point, e.g. model.depth=6 max_steps=2000")
    parser.add_argument("--list", action="store_true", help="the reproductions and their CPU time")
    parser.add_argument("--out", help="results: <out>/<name>/ (default docs/reproductions at the default size, "
                        "else <runs>/results)")
    parser.add_argument("--runs", help="run directories (default runs/reproduce/<size>)")
    parser.add_argument("--seeds", type=int, help="seeds for every point (default: 2 for the noise twins, 1 else)")
    parser.add_argument("--inline", action="store_true", help="train each point in this process (tiny sizes)")
    args = parser.parse_intermixed_args(argv)
    if args.list:
        print(list_text())
        return 0
    try:
        if args.name not in (*REPRODUCTIONS, "all"):
            raise UserError(f"reproduction {args.name!r}: choose one of {', '.join(REPRODUCTIONS)} or all "
                            "(--list describes them)")
        if args.seeds is not None and not 1 <= args.seeds <= len(SEEDS):
            raise UserError(f"--seeds={args.seeds}: choose 1 to {len(SEEDS)}")
        chosen = list(REPRODUCTIONS.values()) if args.name == "all" else [REPRODUCTIONS[args.name]]
        tag = hashlib.sha1(" ".join(args.overrides).encode()).hexdigest()[:8] if args.overrides else "default"
        runs_dir = Path(args.runs or f"runs/reproduce/{tag}")
        out = Path(args.out or ("docs/reproductions" if tag == "default" else runs_dir / "results"))
        plans = [(rep, points_of(rep, args.overrides, args.seeds, runs_dir)) for rep in chosen]
        for _, points in plans:  # a point that starts from another's run is checked once that run exists
            check_points(CONFIG, [p for p in points if not p["stage"]])
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for rep, points in plans:
        print(f"== {rep.name}: {rep.finding}", flush=True)
        code = run_stages(runs_dir, points, args.inline)
        if code:
            return code
        try:
            result = report(rep, runs_dir, out / rep.name, args.seeds, args.overrides)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        write_index(out)
        print(f"{rep.name}: {result['verdict']}: {result['measured']}\nwrote {out / rep.name}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
