"""Benchmark the inner training step: tokens/s, step time, compile time and MFU.

    python -m jaximus.bench [--config experiments/nanochat/config.py] [--meshes 1x1,4x2] [--steps 10]
                            [--peer /path/to/torch/venv/bin/python] [key=value ...]

Each mesh runs in its own process (the fake device count is fixed per process). With --peer, the
PyTorch peer (shared/bench/torch_gpt_peer.py) runs between them at the same shapes, fp32 and bf16,
so ratios come from one sitting.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

# the peer lives beside the repository in the team checkout (shared/bench); --peer-script overrides
PEER = Path(__file__).resolve().parents[2] / "shared" / "bench" / "torch_gpt_peer.py"


def measure(config_path: str, overrides: list[str], steps: int) -> dict:
    """Time `steps` inner steps on random tokens in this process (after one compile step)."""
    import jax
    import numpy as np

    from jaximus.accounting import mfu
    from jaximus.build import build, start

    cfg, exp = start(config_path, overrides)
    rng = np.random.default_rng(0)
    R, B, T = cfg.parallel.replica, cfg.data.batch_size, cfg.data.seq_len
    with build(cfg, exp, purpose="measure") as run:
        state = run.state
        batches = [run.batch(rng.integers(0, cfg.model.vocab_size, (R, B // R, T + 1), dtype=np.int32))
                   for _ in range(4)]
        events = run.scheme.step_events(1)  # the inner step the loop runs (sync DP: the gradient mean)
        t = time.perf_counter()
        state, loss = run.step(state, batches[0], events)
        jax.block_until_ready(loss)
        first = time.perf_counter() - t
        times = []
        for i in range(steps):
            t = time.perf_counter()
            state, loss = run.step(state, batches[i % 4], events)
            jax.block_until_ready(loss)
            times.append(time.perf_counter() - t)
    step_s = statistics.median(times)
    fpt = run.perf["flops_per_token"]
    return {"impl": "jaximus", "mesh": f"{R}x{cfg.parallel.fsdp}", "dtype": cfg.model.compute_dtype,
            "tokens_per_sec": B * T / step_s, "step_s": step_s, "compile_s": first - step_s,
            "mfu": mfu(fpt, B * T / step_s, run.perf["peak"]), "flops_per_token": fpt}


def _child(config_path, overrides, steps) -> dict:
    cmd = [sys.executable, "-m", "jaximus.bench", "--child", "--config", config_path, "--steps", str(steps), *overrides]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
        sys.exit(f"error: benchmark child failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _peer(python: str, script: str, cfg_overrides: list, amp: str, steps: int) -> dict:
    cmd = [python, script, "--compile", "--amp", amp, "--steps", str(steps), "--json", *cfg_overrides]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
        sys.exit(f"error: peer failed: {out.stderr.strip().splitlines()[-1:]}")
    stats = json.loads(out.stdout.strip().splitlines()[-2])
    return {"impl": "torch peer (compiled)", "mesh": "1 process", "dtype": amp, "tokens_per_sec": stats["tokens_per_sec"],
            "step_s": stats["step_s"], "compile_s": stats["compile_overhead_s"], "mfu": None}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="experiments/nanochat/config.py")
    ap.add_argument("--meshes", default="1x1,4x2", help="comma-separated replica x fsdp meshes")
    ap.add_argument("--dtypes", default="float32,bfloat16", help="model.compute_dtype values to time")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=1, help="alternate jaximus and peer this many times")
    ap.add_argument("--peer", help="python of a venv with torch: also time the PyTorch peer")
    ap.add_argument("--peer-script", default=str(PEER), help="path of torch_gpt_peer.py")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args, overrides = ap.parse_known_args(argv)
    if args.child:
        print(json.dumps(measure(args.config, overrides, args.steps)))
        return
    os.environ.setdefault("WANDB_MODE", "disabled")
    rows = []
    for _ in range(args.rounds):
        for dtype in args.dtypes.split(","):
            for mesh in args.meshes.split(","):
                r, f = mesh.split("x")
                rows.append(_child(args.config, [f"parallel.replica={r}", f"parallel.fsdp={f}",
                                                 f"model.compute_dtype={dtype}", *overrides], args.steps))
                print(json.dumps(rows[-1]), flush=True)
            if args.peer:
                peer_args = ["--depth", "4", "--seq", "256", "--batch", "16", "--vocab", "8192"]
                rows.append(_peer(args.peer, args.peer_script, peer_args, "none" if dtype == "float32" else "bf16", args.steps))
                print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'impl':24} {'mesh':10} {'dtype':9} {'tokens/s':>9} {'step ms':>8} {'compile s':>9} {'MFU':>6}")
    for r in rows:
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") else "-"
        print(f"{r['impl']:24} {r['mesh']:10} {r['dtype']:9} {r['tokens_per_sec']:9,.0f} {1e3 * r['step_s']:8.0f} "
              f"{r['compile_s']:9.1f} {mfu:>6}")


if __name__ == "__main__":
    main()
