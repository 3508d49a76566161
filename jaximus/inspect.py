"""Compile a config's inner and sync steps without training and report, per outer scheme: parameters,
state bytes per device, FLOPs per token, and cross-island bytes (payload and wire) from the ledger next to
the HLO's, with the element types the cross-island collectives carry.

    python -m jaximus.inspect --config experiments/diloco_nanochat/config.py [--schemes a,b] [key=value ...]
    python -m jaximus.inspect --config experiments/llama/config.py --params [key=value ...]

    python -m jaximus.inspect --config experiments/diloco_nanochat/config.py --timeline [--gantt F.png] [key=value ...]

--params prints the parameter tree instead: path, shape, dtype, partition spec in the island, bytes per
device and count. In a notebook, `show_params(config_path, *overrides)` renders it with treescope
when that is installed. --timeline is a dry run of the schedule on the simulated clock (islands.*),
without training: one JSON line per thing an island does (compute, wait, comm, apply) with its island,
local step, simulated start and end, outer version and staleness, then the clock's summary;
--gantt FILE.png draws each island's first steps.
"""
import json
import math
import sys
from pathlib import Path

import jax
import numpy as np

from jaximus import UserError
from jaximus.build import SCHEMES, build, load_config, start
from jaximus.cli import ArgumentParser
from jaximus.distributed import is_primary
from jaximus.hlo import cross_island, cross_island_bytes, processes_spanned
from jaximus.ledger import plan_bytes
from jaximus.mesh import batch_sharding
from jaximus.plan import Clock, names
from jaximus.state import Progress


def cycle_plans(scheme, cfg, islands: int, horizon: int = 10_000) -> list:
    """The plans of one full cycle of a lockstep run in the steady state (the second cycle, so events that
    wrap around from the previous one are counted); for a scheme with its own clock (an asynchronous one)
    the plans of the run's max_steps on that clock, as the run would make them."""
    if scheme.asynchronous:
        clock = scheme.make_clock(cfg, Progress())
        return [_advanced(clock, scheme.plan(clock.clock(step))) for step in range(1, min(cfg.max_steps, horizon) + 1)]
    periods = [getattr(scheme, "every", None)] + list(getattr(scheme, "periods", {}).values())
    cycle = min(math.lcm(*[p for p in periods if p]) if any(periods) else 1, horizon)
    return [scheme.plan(Clock.everyone(step, 3 * cycle, islands)) for step in range(cycle + 1, 2 * cycle + 1)]


def _advanced(clock, plan):
    clock.advance(plan)
    return plan


def occurrences(plans, what) -> dict:
    """Each distinct value of what(plan) and how often it occurs per inner step."""
    counts: dict = {}
    for plan in plans:
        counts[what(plan)] = counts.get(what(plan), 0) + 1
    return {v: n / len(plans) for v, n in counts.items()}


def sync_events(plans) -> dict[frozenset, float]:
    """Each distinct set of synced groups and how often a sync of it runs per inner step."""
    counts: dict = {}
    for sync in (s for plan in plans for s in plan.syncs):
        counts[sync.groups] = counts.get(sync.groups, 0) + 1
    return {g: n / len(plans) for g, n in counts.items()}


def inspect_scheme(cfg, exp) -> dict:
    """Ledger and compiled-HLO cross-island bytes of the inner step and of every kind of sync."""
    run = build(cfg, exp, purpose="compile")
    mesh, scheme, state = run.mesh, run.scheme, run.state
    R, B, T = mesh.shape["replica"], cfg.data.batch_size, cfg.data.seq_len
    if hasattr(exp["model"], "make_objective"):  # an objective's rows, whatever their shape
        rows = exp["model"].make_objective(cfg).batch(0, 0)
        shape, dtype = (R, *rows.shape), rows.dtype
    else:
        shape, dtype = (R, B // R, T + 1), np.int32
    batch = jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding(mesh))
    weights = jax.ShapeDtypeStruct((R,), np.float32, sharding=jax.NamedSharding(mesh, jax.P("replica")))
    ledger, plans = scheme.ledger(), cycle_plans(scheme, cfg, R)

    def measure(hlo, kind, keys):
        count, payload, wire = cross_island_bytes(hlo, mesh)
        return {"per_step": 0.0, "hlo": payload, "hlo_wire": wire, "collectives": count,
                "ledger": sum(ledger[kind].get(k, 0) for k in keys),
                "ledger_wire": sum(ledger["wire"][kind].get(k, 0.0) for k in keys),
                "dtypes": sorted({d for c in cross_island(hlo, mesh) for d in c.dtypes}),
                "processes": processes_spanned(hlo, mesh)}

    with jax.set_mesh(mesh):
        inner = [{**measure(run.step.build(ev).lower(state, batch).compile().as_text(), "step", ev),
                  "events": names(ev), "per_step": rate}
                 for ev, rate in occurrences(plans, lambda plan: plan.events).items()]
        events = [{**measure(run.sync.build(g).lower(state, weights).compile().as_text(), "sync", g),
                   "groups": names(g), "per_step": rate} for g, rate in sync_events(plans).items()]
    per_device = sum(math.prod(s.shard_shape(x.shape)) * x.dtype.itemsize
                     for x, s in zip(jax.tree.leaves(state), jax.tree.leaves(run.shardings)))
    sent = occurrences(plans, lambda plan: plan_bytes(ledger, plan))
    per_step = sum(e["ledger"] * e["per_step"] for e in inner + events)
    return {"scheme": scheme.name, "params": run.info["params"], "state_bytes_per_device": per_device,
            "flops_per_token": run.info["flops_per_token"], "inner": inner, "syncs": events,
            "wire_per_step": sum(e["ledger_wire"] * e["per_step"] for e in inner + events), "bytes_per_step": per_step,
            "peak_step_bytes": max(sent), "window_bytes": per_step * cfg.outer.sync_every,
            "overlap_steps": scheme.overlap_steps()}


def param_rows(run) -> list[dict]:
    """One row per weight of one island of a run built to compile (nothing allocated or compiled)."""
    rows = []
    flat = jax.tree_util.tree_flatten_with_path(run.state.islands.params)[0]
    for (path, x), sharding in zip(flat, jax.tree.leaves(run.shardings.islands.params)):
        shard = sharding.shard_shape(x.shape)
        rows.append({"path": jax.tree_util.keystr(path, simple=True, separator="."), "shape": tuple(x.shape[1:]),
                     "dtype": str(x.dtype), "spec": str(jax.P(*tuple(sharding.spec)[1:])),
                     "bytes_per_device": math.prod(shard[1:]) * x.dtype.itemsize, "count": math.prod(x.shape[1:])})
    return rows


def print_params(rows: list[dict]) -> None:
    width = max(len(r["path"]) for r in rows)
    print(f"{'path':{width}} {'shape':>18} {'dtype':>8} {'spec':>22} {'bytes/device':>13} {'count':>12}")
    for r in rows:
        print(f"{r['path']:{width}} {str(r['shape']):>18} {r['dtype']:>8} {r['spec']:>22} "
              f"{r['bytes_per_device']:>13,} {r['count']:>12,}")
    print(f"{'total':{width}} {'':>18} {'':>8} {'':>22} {sum(r['bytes_per_device'] for r in rows):>13,} "
          f"{sum(r['count'] for r in rows):>12,}")


def show_params(config_path: str, *overrides: str):
    """In a notebook: the parameter tree as ShapeDtypeStructs with their shardings, rendered by treescope if
    it is installed (printed as the --params table otherwise)."""
    run = build(*load_config(config_path, list(overrides)), purpose="compile")
    try:
        import treescope
    except ImportError:
        print_params(param_rows(run))
        return None
    return treescope.show(run.state.islands.params)


def timeline(cfg, exp, steps: int | None = None):
    """The simulated schedule of a run (its scheme's plans on the island clock), as timeline events, with
    the clock's summary last; nothing is allocated, compiled or trained."""
    run = build(cfg, exp, purpose="compile")
    clock = run.scheme.make_clock(cfg, Progress())
    events = []
    for step in range(1, (steps or cfg.max_steps) + 1):
        events += clock.advance(run.scheme.plan(clock.clock(step)))
    return events, clock.summary()


def _mib(n: float) -> str:
    return f"{n / 2**20:,.2f} MiB"


def main(argv=None) -> int:
    ap = ArgumentParser(prog="python -m jaximus.inspect", description=__doc__.splitlines()[0],
                        usage="python -m jaximus.inspect --config CONFIG [--schemes S,...] [--json FILE] [--params] "
                              "[--timeline [--gantt FILE.png]] [key=value ...]",
                        epilog="key=value: any config key, as for train.py (python train.py --help)")
    ap.add_argument("--config", required=True, help="experiments/<exp>/config.py")
    ap.add_argument("--schemes", help="comma-separated outer.name values to compile (default: every registered "
                    "scheme, the experiment's own included)")
    ap.add_argument("--json", help="also write the reports to this file")
    ap.add_argument("--params", action="store_true", help="print the parameter tree instead of the ledger")
    ap.add_argument("--timeline", action="store_true", help="print the run's simulated schedule as JSON lines "
                    "(max_steps steps, islands.* speeds), and its summary last, instead of the ledger")
    ap.add_argument("--gantt", metavar="FILE.png", help="with --timeline: also draw each island's first "
                    "--gantt-steps steps, waits and syncs")
    ap.add_argument("--gantt-steps", type=int, default=40, help="steps the Gantt chart shows (default 40)")
    args, overrides = ap.parse_known_args(argv)
    try:
        base, exp = start(args.config, overrides)
        if args.timeline:
            events, summary = timeline(base, exp)
            if is_primary():
                print("\n".join(json.dumps(e) for e in events) + "\n" + json.dumps({"summary": summary}))
                if args.gantt:
                    from analysis.timeline import plot_gantt
                    plot_gantt(events, args.gantt, args.gantt_steps, f"{base.outer.name}, islands.step_s="
                               f"{tuple(base.islands.step_s)}, jitter {base.islands.jitter:g}, stragglers "
                               f"{base.islands.straggler_prob:g} x {base.islands.straggler_slowdown:g}")
            return 0
        if args.params:
            rows = param_rows(build(base, exp, purpose="compile"))
            if is_primary():
                print_params(rows)
            return 0
        reports = [inspect_scheme(load_config(args.config, [*overrides, f"outer.name='{name}'"])[0], exp)
                   for name in (args.schemes or ",".join(SCHEMES)).split(",")]  # read after start: it registers
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not is_primary():
        return 0
    if args.json:
        Path(args.json).write_text(json.dumps(reports, indent=2))
    first = reports[0]
    flops = f"{first['flops_per_token']:,}" if first["flops_per_token"] else "unknown"  # a model may not say
    print(f"{first['params']:,} params | {flops} FLOPs/token | mesh {base.parallel.replica} islands "
          f"x {base.parallel.fsdp} devices ({base.parallel.strategy}) | bytes one island sends: payload into the "
          f"collectives, and on the wire for the pattern compiled | compression {base.outer.compress.format}")
    print(f"{'scheme':16} {'state/device':>13} {'event':26} {'per step':>8} {'ledger':>13} {'HLO':>13} "
          f"{'wire ledger':>13} {'wire HLO':>13} {'colls':>5} {'procs':>5} {'types':>9} {'amortized/step':>15}")
    for r in reports:
        inner = [("inner step " + "+".join(e["events"]), e["per_step"], e) for e in r["inner"]
                 if e["ledger"] or e["collectives"]]
        rows = inner + [("sync " + "+".join(e["groups"]), e["per_step"], e) for e in r["syncs"]]
        rows = rows or [("inner step", 1.0, r["inner"][0])]
        for i, (event, rate, e) in enumerate(rows):
            head = (f"{r['scheme']:16} {_mib(r['state_bytes_per_device']):>13}" if i == 0 else " " * 30)
            tail = f"{_mib(r['bytes_per_step']):>15}" if i == 0 else ""
            print(f"{head} {event:26} {rate:8.3f} {_mib(e['ledger']):>13} {_mib(e['hlo']):>13} "
                  f"{_mib(e['ledger_wire']):>13} {_mib(e['hlo_wire']):>13} {e['collectives']:5} {e['processes']:5} "
                  f"{','.join(e['dtypes']) or '-':>9} {tail}")
        print(f"{'':30} peak in one step {_mib(r['peak_step_bytes'])} | per H window {_mib(r['window_bytes'])} | "
              f"wire per step {_mib(r['wire_per_step'])} | "
              f"hidden behind {r['overlap_steps']:.2g} steps of compute")
        unaccounted = sum(e["collectives"] for e in r["inner"] if not e["ledger"])
        if unaccounted:
            print(f"{'':30} inner step has {unaccounted} cross-island collectives the ledger does not know!")
    return 0


if __name__ == "__main__":
    sys.exit(main())
