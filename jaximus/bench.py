"""Benchmark the inner training step: tokens/s, step time, compile time and MFU.

    python -m jaximus.bench [--config experiments/diloco_nanochat/config.py] [--meshes 1x1,4x2,8x1]
                            [--depths 2,4,6,8] [--dtypes float32,bfloat16] [--steps 10] [--rounds 3]
                            [--peer /path/to/torch/venv/bin/python [--ns-dtype fp32]] [key=value ...]

Each row also times the run's data loader alone against the step. Each mesh runs in its own process
(the fake device count is fixed per process). With --peer, the PyTorch peer
(bench/torch_gpt_peer.py) runs between them at the same shapes, fp32 and bf16, and for every mesh of R > 1
islands the island-simulating peer (bench/torch_islands_peer.py: R processes, each its own model copy and
optimizers, averaged every H, as exo gym simulates nodes), so ratios come from one sitting.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from jaximus import UserError
from jaximus.cli import ArgumentParser

PEER = Path(__file__).resolve().parents[1] / "bench" / "torch_gpt_peer.py"  # --peer-script overrides
ISLANDS_PEER = PEER.with_name("torch_islands_peer.py")


def _timed(fn, steps: int) -> tuple[float, float]:
    """(first call, median of the next `steps` calls) in seconds; fn blocks on its own result."""
    t = time.perf_counter()
    fn()
    first = time.perf_counter() - t
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return first, statistics.median(times)


def newton_schulz_flops(cfg, exp) -> int:
    """FLOPs of one island's Muon Newton-Schulz per step: per matrix (m <= n) and iteration, X X^T (2 m^2 n),
    the quintic's A A (2 m^3) and B X (2 m^2 n); 0 for an optimizer without Muon groups."""
    import jax
    import numpy as np
    labels_of = getattr(exp["optimizer"], "param_labels", None)
    if labels_of is None or not getattr(cfg.optimizer, "ns_steps", 0):
        return 0
    shapes = jax.eval_shape(lambda k: exp["model"].init_model_weights(cfg, k), jax.random.key(0))
    total = 0
    for leaf, label in zip(jax.tree.leaves(shapes), jax.tree.leaves(labels_of(shapes))):
        if label == "muon" and leaf.ndim >= 2:
            m, n = sorted(leaf.shape[-2:])
            total += int(np.prod(leaf.shape[:-2])) * (4 * m * m * n + 2 * m ** 3)
    return total * cfg.optimizer.ns_steps


def measure(config_path: str, overrides: list[str], steps: int) -> dict:
    """Time `steps` inner steps on random tokens in this process (after one compile step), then where a step's
    time goes (forward, forward + backward), one sync of every group (DiLoCo's by default), and one
    evaluation of eval.tokens; peak resident memory of the process at the end."""
    import jax
    import numpy as np

    from jaximus.accounting import mfu
    from jaximus.build import build, start
    from jaximus.evaluate import val_sharding
    from jaximus.islands import per_island
    from jaximus.plan import Clock, names
    from jaximus.step import make_eval_step, make_objective

    cfg, exp = start(config_path, overrides)
    rng = np.random.default_rng(0)
    R, B, T, V = cfg.parallel.replica, cfg.data.batch_size, cfg.data.seq_len, cfg.model.vocab_size
    with build(cfg, exp, purpose="measure") as run:
        batches = [run.batch(rng.integers(0, V, (R, B // R, T + 1), dtype=np.int32)) for _ in range(4)]
        events = run.scheme.plan(Clock.everyone(1, cfg.max_steps, R)).events  # the loop's step (sync DP: its mean)
        box = {"state": run.state, "i": 0}

        def step():
            box["state"], loss = run.step(box["state"], batches[box["i"] % 4], events)
            box["i"] += 1
            jax.block_until_ready(loss)

        first, step_s = _timed(step, steps)
        loss_fn, nats_fn = make_objective(exp["model"], cfg)
        params = box["state"].islands.params
        phases = {}
        for name, fn in (("forward", loss_fn), ("forward+backward", jax.grad(loss_fn))):
            program = jax.jit(per_island(lambda p, b, f=fn: f(p, b), run.mesh))
            phases[name] = _timed(lambda: jax.block_until_ready(program(params, batches[0])), steps)[1]
        sync_s = None
        every = getattr(run.scheme, "every", 1)
        groups = run.scheme.plan(Clock.everyone(every, every, R)).groups  # a last step syncs every group
        if groups:
            weights = np.full(R, 1 / R, np.float32)

            def sync():
                box["state"], metrics = run.sync(box["state"], groups, weights)
                jax.block_until_ready(metrics)

            sync_s = _timed(sync, 3)[1]
        n = max(1, -(-cfg.eval.tokens // (B * T)))
        rows = jax.device_put(rng.integers(0, V, (R, n, B // R, T + 1), dtype=np.int32), val_sharding(run.mesh))
        evaluate = make_eval_step(nats_fn, np.ones(V, np.int32), run.mesh)
        eval_s = _timed(lambda: jax.block_until_ready(evaluate(run.scheme.global_params(box["state"]), rows)), 2)[1]
        loader = loader_rate(cfg, max(steps, 2 * cfg.data.shuffle_rows))
    fpt = run.perf["flops_per_token"]
    ns = newton_schulz_flops(cfg, exp)
    return {"ns_flops_per_island": ns, "flops_rate_with_optimizer": (fpt * B * T + R * ns) / step_s,
            "impl": "jaximus", "mesh": f"{R}x{cfg.parallel.fsdp}", "dtype": cfg.model.compute_dtype,
            "depth": cfg.model.depth, "seq": T, "batch": B, "vocab": V, "sync_every": every,
            "tokens_per_sec": B * T / step_s, "step_s": step_s, "compile_s": first - step_s,
            "first_step_s": first, "mfu": mfu(fpt, B * T / step_s, run.perf["peak"]), "flops_per_token": fpt,
            "peak_flops": run.perf["peak"], "phases_s": phases, "sync_s": sync_s, "sync_groups": names(groups),
            "eval_s": eval_s, "eval_tokens": n * B * T,
            "eval_at_step_mfu_s": n * step_s / 3,  # its forward FLOPs (1/3 of a step's per token) at the step's rate
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, **loader}


def loader_rate(cfg, batches: int) -> dict:
    """The run's loader alone, every island's rows on one process: seconds to its first batch (data set-up
    included) and tokens/s over the next `batches` (the prefetch thread producing, nothing consuming; two
    shuffle windows, so a streamed source's refill is in the time)."""
    from jaximus.data.pipeline import open_data, train_loader

    t = time.perf_counter()
    loader = train_loader(cfg, open_data(cfg, say=lambda _: None), list(range(cfg.parallel.replica)))
    next(loader)
    first = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(batches):
        next(loader)
    loader.close()
    return {"loader_first_batch_s": first,
            "loader_tokens_per_sec": batches * cfg.data.batch_size * cfg.data.seq_len / (time.perf_counter() - t)}


def _child(config_path, overrides, steps) -> dict:
    cmd = [sys.executable, "-m", "jaximus.bench", "--child", "--config", config_path, "--steps", str(steps), *overrides]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
        raise UserError(f"the benchmark of {' '.join(overrides)} failed: {_last_line(out)}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _last_line(out: subprocess.CompletedProcess) -> str:
    """What a failed child said last (its own `error:` line, when it gave one)."""
    return (out.stderr.strip().splitlines() or [f"exit code {out.returncode}"])[-1].removeprefix("error: ")


def _peer(python: str, script: str, cfg_overrides: list, amp: str, steps: int) -> dict:
    cmd = [python, script, "--compile", "--amp", amp, "--steps", str(steps), "--json", *cfg_overrides]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
        raise UserError(f"--peer {python}: the PyTorch peer failed: {_last_line(out)}")
    stats = json.loads(out.stdout.strip().splitlines()[-2])
    return {"impl": "torch peer (compiled)", "mesh": "1 process", "dtype": amp, "tokens_per_sec": stats["tokens_per_sec"],
            "step_s": stats["step_s"], "compile_s": stats["compile_overhead_s"], "mfu": None}


def _islands_peer(python: str, r: dict, amp: str, ns_dtype: str | None) -> dict:
    """The island-simulating peer at a jaximus row's shapes: R processes, rounds of H steps and one sync."""
    R = int(r["mesh"].split("x")[0])
    cmd = [python, str(ISLANDS_PEER), "--islands", str(R), "--sync-every", str(r["sync_every"]), "--depth",
           str(r["depth"]), "--seq", str(r["seq"]), "--batch", str(r["batch"]), "--vocab", str(r["vocab"]),
           "--compile", "--amp", amp, "--json", *(["--ns-dtype", ns_dtype] if ns_dtype else [])]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
        raise UserError(f"--peer {python}: the island-simulating peer failed: {_last_line(out)}")
    stats = json.loads(out.stdout.strip().splitlines()[-2])
    return {"impl": "torch islands peer", "mesh": f"{R} procs", "dtype": amp, "depth": r["depth"],
            "tokens_per_sec": stats["island_tokens_per_sec"], "step_s": stats["step_s"], "sync_s": stats["sync_s"],
            "compile_s": 0.0, "mfu": None, "islands": R}


def with_syncs(r: dict) -> float:
    """Island-tokens/s over whole rounds: H inner steps and one sync program."""
    H = r.get("sync_every") or 1
    return r["tokens_per_sec"] * H * r["step_s"] / (H * r["step_s"] + (r.get("sync_s") or 0.0))


def _row(r: dict) -> str:
    mfu = f"{r['mfu']:.1%}" if r.get("mfu") else "-"
    phases = r.get("phases_s") or {}
    fwd, fb = phases.get("forward"), phases.get("forward+backward")
    split = f"{1e3 * fwd:6.0f} {1e3 * (fb - fwd):6.0f} {1e3 * (r['step_s'] - fb):6.0f}" if fwd else f"{'-':>6} " * 3
    sync = f"{r['sync_s'] / r['step_s']:5.2f}" if r.get("sync_s") else "    -"
    rounds = with_syncs(r) if r["impl"] == "jaximus" else r["tokens_per_sec"]
    evals = f"{r['eval_s'] / r['eval_at_step_mfu_s']:5.2f}" if r.get("eval_s") else "    -"
    rss = f"{r['peak_rss_bytes'] / 2**20:7,.0f}" if r.get("peak_rss_bytes") else "      -"
    data = f"{r['loader_tokens_per_sec'] / r['tokens_per_sec']:6.0f}x" if r.get("loader_tokens_per_sec") else "      -"
    rate = f"{r['flops_rate_with_optimizer'] / 1e9:8.0f}" if r.get("flops_rate_with_optimizer") else "       -"
    return (f"{r['impl']:22} {r['mesh']:6} {r.get('depth', '-'):>5} {r['dtype']:9} {r['tokens_per_sec']:9,.0f} {rounds:9,.0f} "
            f"{1e3 * r['step_s']:8.0f} {mfu:>6} {rate} {split} {r['compile_s']:8.1f} {sync} {evals} {rss} {data}")


def summary(rows: list[dict]) -> list[str]:
    """The ratios the targets are stated in, from rows of one sitting (medians over rounds)."""
    def tps(**match):
        values = [r["tokens_per_sec"] for r in rows if all(r.get(k) == v for k, v in match.items())]
        return statistics.median(values) if values else None

    lines = []
    for dtype in sorted({r["dtype"] for r in rows if r["impl"] == "jaximus"}):
        for depth in sorted({r["depth"] for r in rows if r["impl"] == "jaximus" and r["dtype"] == dtype}):
            one = tps(impl="jaximus", mesh="1x1", dtype=dtype, depth=depth)
            for mesh in sorted({r["mesh"] for r in rows if r["impl"] == "jaximus"} - {"1x1"}):
                other = tps(impl="jaximus", mesh=mesh, dtype=dtype, depth=depth)
                if one and other:
                    lines.append(f"{mesh} vs 1 device, {dtype}, depth {depth}: {other / one:.2f}x tokens/s")
            peer = tps(impl="torch peer (compiled)", dtype="none" if dtype == "float32" else "bf16", depth=depth)
            for mesh in sorted({r["mesh"] for r in rows if r["impl"] == "jaximus"}):  # the peer is one process
                ours = tps(impl="jaximus", mesh=mesh, dtype=dtype, depth=depth)
                if ours and peer:
                    lines.append(f"{mesh} vs the PyTorch peer, {dtype}, depth {depth}: {ours / peer:.2f}x tokens/s")
            amp = "none" if dtype == "float32" else "bf16"
            for mesh in sorted({r["mesh"] for r in rows if r["impl"] == "jaximus"} - {"1x1"}):
                ours = [with_syncs(r) for r in rows if r["impl"] == "jaximus" and (r["mesh"], r["dtype"], r["depth"]) ==
                        (mesh, dtype, depth)]
                theirs = [r["tokens_per_sec"] for r in rows if r["impl"] == "torch islands peer" and
                          (r["islands"], r["dtype"], r["depth"]) == (int(mesh.split("x")[0]), amp, depth)]
                if ours and theirs:
                    lines.append(f"{mesh} vs the island-simulating peer, {dtype}, depth {depth}: "
                                 f"{statistics.median(ours) / statistics.median(theirs):.2f}x island-tokens/s, syncs included")
    return lines


def main(argv=None):
    ap = ArgumentParser(prog="python -m jaximus.bench", description=__doc__.splitlines()[0],
                        usage="python -m jaximus.bench [--config CONFIG] [--meshes RxF,...] [--depths D,...] "
                              "[--dtypes T,...] [--steps N] [--rounds N] [--peer PYTHON] [--json FILE] [key=value ...]",
                        epilog="key=value: any config key, applied to every row (python train.py --help)")
    ap.add_argument("--config", default="experiments/diloco_nanochat/config.py", help="experiments/<exp>/config.py")
    ap.add_argument("--meshes", default="1x1,4x2,8x1", help="comma-separated replica x fsdp meshes")
    ap.add_argument("--dtypes", default="float32", help="model.compute_dtype values to time")
    ap.add_argument("--depths", default="4", help="model.depth values to time")
    ap.add_argument("--steps", type=int, default=10, help="timed inner steps per row, after one compile step")
    ap.add_argument("--rounds", type=int, default=1, help="alternate the implementations this many times")
    ap.add_argument("--peer", help="python of a venv with torch: also time the PyTorch peer")
    ap.add_argument("--peer-script", default=str(PEER), help="path of torch_gpt_peer.py")
    ap.add_argument("--ns-dtype", default=None, help="the peer's Newton-Schulz dtype (fp32 on CPUs without bf16)")
    ap.add_argument("--json", help="also write every row to this file")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args, overrides = ap.parse_known_args(argv)
    flags = [o for o in overrides if "=" not in o]
    if flags:
        ap.error(f"unrecognized arguments: {' '.join(flags)} (overrides are key=value)")
    try:
        if args.child:
            print(json.dumps(measure(args.config, overrides, args.steps)))
        else:
            run_benchmark(args, overrides)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def run_benchmark(args, overrides: list[str]) -> None:
    """Every mesh, dtype and depth in its own child, alternated over the rounds; then the table."""
    os.environ.setdefault("WANDB_MODE", "disabled")
    rows = []
    for _ in range(args.rounds):
        for dtype in args.dtypes.split(","):
            for depth in args.depths.split(","):
                for mesh in args.meshes.split(","):
                    r, f = mesh.split("x")
                    rows.append(_child(args.config, [f"parallel.replica={r}", f"parallel.fsdp={f}",
                                                     f"model.compute_dtype={dtype}", f"model.depth={depth}", *overrides],
                                       args.steps))
                    print(json.dumps(rows[-1]), flush=True)
                    if args.peer and rows[-1]["mesh"].split("x")[0] != "1":
                        rows.append(_islands_peer(args.peer, rows[-1], "none" if dtype == "float32" else "bf16",
                                                  args.ns_dtype))
                        print(json.dumps(rows[-1]), flush=True)
                if args.peer:
                    shapes = next(r for r in reversed(rows) if r["impl"] == "jaximus")
                    peer_args = ["--depth", depth, "--seq", str(shapes["seq"]), "--batch", str(shapes["batch"]),
                                 "--vocab", str(shapes["vocab"]),
                                 *(["--ns-dtype", args.ns_dtype] if args.ns_dtype else [])]
                    rows.append({**_peer(args.peer, args.peer_script, peer_args, "none" if dtype == "float32" else "bf16",
                                         args.steps), "depth": int(depth)})
                    print(json.dumps(rows[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    print(f"\n{'impl':22} {'mesh':6} {'depth':>5} {'dtype':9} {'tokens/s':>9} {'round t/s':>9} {'step ms':>8} {'MFU':>6} "
          f"{'GFLOP/s':>8} {'fwd ms':>6} {'bwd ms':>6} {'opt ms':>6} {'compile':>8} {'sync':>5} {'eval':>5} {'RSS MiB':>7} "
          f"{'loader':>7}")
    for r in rows:
        print(_row(r))
    print("(round t/s: tokens/s over whole rounds, H inner steps and one sync; the island-simulating peer's rows "
          "are its island-tokens/s over its timed rounds; MFU: model FLOPs over the matmul peak measured in the same "
          "process; GFLOP/s: model FLOPs plus every "
          "island's Newton-Schulz FLOPs per second; opt: the step minus forward and backward; sync: one sync program "
          "in inner steps; eval: an evaluation of eval.tokens over its forward FLOPs at the step's rate; loader: the "
          "run's data loader alone, its tokens/s over the step's)")
    for line in summary(rows):
        print(line)


if __name__ == "__main__":
    sys.exit(main())
