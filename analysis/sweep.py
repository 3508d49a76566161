"""Run a grid of overrides for one config, one train.py run per point, into one sweep directory.

    python -m analysis.sweep --config experiments/diloco_nanochat/config.py --out runs/sweep \\
        outer.name=sync,diloco outer.sync_every=10,20 [--grid "outer.name=desloc"] [--parallel 2]

Positional `key=v1,v2` arguments multiply into a grid; each `--grid "k=v1,v2 k2=v3"` adds another grid,
multiplied by the positional ones. `sweep.json` records the points and their outcome. Finished runs
(those with a summary.json) are skipped, and unfinished ones resume from their checkpoints, so an
interrupted sweep is continued by running the same command again.
"""
import argparse
import contextlib
import functools
import importlib.util
import itertools
import json
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from jaximus import UserError
from jaximus.build import load_config
from jaximus.cli import ArgumentParser
from jaximus.files import atomic_write, read_json

TRAIN = Path(__file__).resolve().parents[1] / "train.py"
RESERVED = ("run.out_dir", "run.name")  # the sweep decides where each point's run lives
MANIFEST_FIX = "delete it and rerun: finished points are found by their summary.json, the others resume"


def split_values(text: str) -> list[str]:
    """Split on commas outside brackets and quotes, so `k=[1,2]` stays one value."""
    values, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            values.append(text[start:i])
            start = i + 1
    return values + [text[start:]]


def parse_axes(tokens: list[str]) -> list[tuple[str, list[str]]]:
    axes = []
    for token in tokens:
        key, eq, value = token.partition("=")
        if not eq or not key:
            raise UserError(f"sweep argument {token!r}: expected key=value or key=v1,v2,...")
        if key in RESERVED:
            raise UserError(f"{key}: set by the sweep (each point runs in <out>/<point name>); leave it out")
        values = split_values(value)
        if any(v == "" for v in values):
            raise UserError(f"sweep argument {token!r}: empty value in the list")
        axes.append((key, values))
    return axes


def expand(positional: list[str], grids: list[str]) -> list[list[str]]:
    """Every point as its list of overrides, in order, without duplicates."""
    common = parse_axes(positional)
    points = []
    for grid in grids or [""]:
        axes = parse_axes(grid.split()) + common
        for values in itertools.product(*(v for _, v in axes)):
            point = [f"{k}={v}" for (k, _), v in zip(axes, values)]
            if point not in points:
                points.append(point)
    return points


def _effective(overrides: list[str]) -> dict[str, str]:
    """Key -> value as sws applies them: a later override of a key wins."""
    return {k: v for k, _, v in (o.partition("=") for o in overrides)}


def point_name(overrides: list[str], varying: set[str]) -> str:
    """A directory name from the overrides that vary across the sweep, e.g. `diloco_sync_every-10`."""
    parts = [v if k.endswith(".name") else f"{k.split('.')[-1]}-{v}"
             for k, v in _effective(overrides).items() if k in varying]
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "_".join(parts)) or "point"


def plan(config: str, positional: list[str], grids: list[str]) -> list[dict]:
    points = expand(positional, grids)
    effective = [_effective(p) for p in points]
    keys = {k for e in effective for k in e}
    varying = {k for k in keys if len({e.get(k) for e in effective}) > 1}
    return check_points(config, [{"name": point_name(o, varying), "overrides": o} for o in points])


def check_points(config: str, points: list[dict]) -> list[dict]:
    """Every point's config checked as train.py checks it (types, ranges, relations), and distinct names."""
    for point in points:
        try:
            load_config(config, point["overrides"])
        except UserError as e:
            raise UserError(f"point {' '.join(point['overrides'])}: {e}") from None
    names = [p["name"] for p in points]
    if len(set(names)) != len(names):
        raise UserError("two points got the same name; give each grid value a distinct spelling")
    return points


class Manifest:
    """sweep.json: the config, the points, and each point's last outcome; rewritten atomically."""

    def __init__(self, out: Path, config: str, points: list[dict]):
        self.path = out / "sweep.json"
        self.lock = threading.Lock()
        old = read_json(self.path, MANIFEST_FIX) if self.path.is_file() else None
        if old and old["config"] != config:
            raise UserError(f"{self.path} belongs to a sweep of {old['config']}, not {config}; choose another --out")
        known = {p["name"]: p for p in (old or {}).get("points", [])}
        for p in points:
            if p["name"] in known and known[p["name"]]["overrides"] != p["overrides"]:
                raise UserError(f"{self.path}: point {p['name']} was {' '.join(known[p['name']]['overrides'])}; "
                                "choose another --out")
        self.data = {"config": config, "points": [*known.values(), *(p for p in points if p["name"] not in known)],
                     "status": (old or {}).get("status", {})}

    def done(self, name: str) -> bool:
        return self.data["status"].get(name, {}).get("state") == "done"

    def record(self, name: str, **status):
        with self.lock:
            self.data["status"][name] = status
            self.write()

    def write(self):
        atomic_write(self.path, json.dumps(self.data, indent=2))


class Runner:
    """Runs points one after another (or `parallel` at once), each a train.py process; `inline` runs each
    through train.main in this process instead, skipping JAX's start-up per point (tiny sizes, tests)."""

    def __init__(self, out: Path, config: str, manifest: Manifest, total: int, inline: bool = False):
        self.out, self.config, self.manifest, self.total, self.inline = out, config, manifest, total, inline
        self.children, self.stopping, self.lock = set(), 0, threading.Lock()

    def say(self, index: int, name: str, text: str):
        print(f"[{index}/{self.total}] {name}: {text}", flush=True)

    def _train(self, command: list[str], log: Path) -> int:
        with open(log, "a") as f:
            if self.inline:
                with contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
                    try:
                        code = _train_main()(command[2:])
                    except Exception:  # a crash fails this point, as a crashed process would
                        traceback.print_exc()
                        code = 1
                self.stopping = self.stopping or (code - 128 if code > 128 else 0)
                return code
            child = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
            with self.lock:
                self.children.add(child)
            code = child.wait()
            with self.lock:
                self.children.discard(child)
            return code

    def run(self, index: int, point: dict) -> int:
        name = point["name"]
        if (self.out / name / "summary.json").is_file() or (self.manifest.done(name) and (self.out / name).is_dir()):
            self.say(index, name, "finished earlier, skipped")
            self.manifest.record(name, state="done", skipped=True, **_seconds(self.manifest, name))
            return 0
        if self.stopping:
            return 128 + self.stopping
        log = self.out / "logs" / f"{name}.log"
        command = [sys.executable, str(TRAIN), "--config", self.config, *point["overrides"],
                   f"run.out_dir={self.out}", f"run.name={name}"]
        self.say(index, name, f"running, log in {log}")
        self.manifest.record(name, state="running", command=command)
        start = time.perf_counter()
        code = self._train(command, log)
        seconds = round(time.perf_counter() - start, 1)
        if code == 0:
            summary = self.out / name / "summary.json"
            bpb = json.loads(summary.read_text())["val/bpb"] if summary.is_file() else float("nan")
            self.say(index, name, f"done in {seconds:.0f} s, val bpb {bpb:.4f}")
            self.manifest.record(name, state="done", seconds=seconds)
        else:
            lines = log.read_text().strip().splitlines()
            state = "interrupted" if self.stopping else "failed"
            self.say(index, name, f"{state} (exit {code}): {lines[-1] if lines else 'no output'}")
            self.manifest.record(name, state=state, exit_code=code, seconds=seconds)
        return code

    def stop(self, signum, _frame):
        """Pass the signal on: each run saves a checkpoint at its step boundary and exits."""
        self.stopping = signum
        with self.lock:
            for child in self.children:
                child.send_signal(signum)


@functools.cache
def _train_main():
    """train.main, loaded once (train.py is a script, not a package module)."""
    spec = importlib.util.spec_from_file_location("jaximus_train", TRAIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _seconds(manifest: Manifest, name: str) -> dict:
    """A skipped point keeps the training time it was recorded with."""
    seconds = manifest.data["status"].get(name, {}).get("seconds")
    return {} if seconds is None else {"seconds": seconds}


def run_sweep(out: Path, config: str, points: list[dict], parallel: int = 1, inline: bool = False) -> int:
    """Run the checked points into `out` (skipping finished ones); 0, 1 when a point failed, 2 on bad input,
    128 + signal when interrupted."""
    try:
        manifest = Manifest(out, config, points)  # checked before anything is written
        (out / "logs").mkdir(parents=True, exist_ok=True)
        manifest.write()
    except (UserError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    runner = Runner(out, config, manifest, len(points), inline)
    previous = {signum: signal.signal(signum, runner.stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        if inline or parallel == 1:  # train.main installs signal handlers: only the main thread may
            codes = [runner.run(i, p) for i, p in enumerate(points, 1)]
        else:
            with ThreadPoolExecutor(parallel) as pool:
                codes = list(pool.map(runner.run, range(1, len(points) + 1), points))
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if runner.stopping:
        print("sweep interrupted; run the same command again to resume it", file=sys.stderr)
        return 128 + runner.stopping
    failed = [p["name"] for p, code in zip(points, codes) if code]
    if failed:
        print(f"error: {len(failed)} of {len(points)} points failed: {', '.join(failed)} (logs in {out / 'logs'})",
              file=sys.stderr)
        return 1
    print(f"sweep done: {len(points)} runs in {out}")
    return 0


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m analysis.sweep", description=__doc__.splitlines()[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--config", required=True, help="experiments/<exp>/config.py")
    parser.add_argument("--out", required=True, help="sweep directory: one run per point, sweep.json, logs/")
    parser.add_argument("--grid", action="append", default=[], help='another grid, e.g. "outer.name=sync"')
    parser.add_argument("--parallel", type=int, default=1, help="points run at once (default 1)")
    parser.add_argument("--inline", action="store_true", help="run the points in this process, one after another "
                        "(no JAX start-up per point: for tiny sizes)")
    parser.add_argument("overrides", nargs="*", help="key=value or key=v1,v2 (a grid axis)")
    args = parser.parse_args(argv)
    try:
        if args.parallel < 1:
            raise UserError(f"--parallel={args.parallel}: must be >= 1")
        points = plan(args.config, args.overrides, args.grid)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return run_sweep(Path(args.out), args.config, points, args.parallel, args.inline)


if __name__ == "__main__":
    sys.exit(main())
