"""Read run directories (config.json, metrics.jsonl, summary.json) and nothing else (DESIGN.md)."""
import json
from dataclasses import dataclass
from pathlib import Path

from jaximus import UserError
from jaximus.files import read_json
from jaximus.schema import flatten

# Keys that may differ between runs of one comparison: the scheme itself and where/how the run is kept.
COMPARABLE_EXCEPT = ("outer.", "run.", "faults.", "log.", "wandb.", "checkpoint.", "guard.", "resolved.", "git_",
                     "data.cache_dir", "data.prefetch", "eval.every")


def _largest(rows: list[dict], key: str):
    """The latest value of a cumulative metric: steps, tokens and the ledger only grow."""
    return max((r[key] for r in rows), default=0)


@dataclass
class Run:
    name: str
    path: Path
    config: dict
    rows: list[dict]
    summary: dict | None  # None while the run is in progress

    @property
    def finished(self) -> bool:
        return self.summary is not None

    @property
    def scheme(self) -> str:
        return self.config["outer"]["name"]

    @property
    def ledger(self) -> dict:
        """The scheme's bytes per event, as the run recorded them: {"step": {...}, "sync": {group: bytes}}."""
        return self.config.get("resolved", {}).get("ledger", {"step": {}, "sync": {}})

    @property
    def sync_every(self) -> int | None:
        """H for a scheme that has syncs; None for one that talks only inside the inner step."""
        return self.config["outer"]["sync_every"] if self.ledger["sync"] else None

    @property
    def islands(self) -> int:
        return self.config["parallel"]["replica"]

    @property
    def train_rows(self) -> list[dict]:
        return [r for r in self.rows if "comm/cross_island_bytes" in r]

    @property
    def evals(self) -> list[dict]:
        return [r for r in self.rows if "val/bpb" in r]

    @property
    def steps(self) -> int:
        return _largest(self.rows, "step")

    @property
    def tokens(self) -> int:
        return _largest(self.rows, "tokens")

    @property
    def tokens_per_step(self) -> int:
        row = self.train_rows[0]
        return row["tokens"] // row["step"]

    @property
    def bytes(self) -> int:
        """Cross-island bytes each island has sent so far."""
        return _largest(self.train_rows, "comm/cross_island_bytes")

    @property
    def wire_bytes(self) -> float | None:
        """Bytes each island has put on the link so far for the collectives compiled (None in older runs)."""
        rows = [r for r in self.train_rows if "comm/wire_bytes" in r]
        return _largest(rows, "comm/wire_bytes") if rows else None

    @property
    def peak_step_bytes(self) -> float:
        """The most bytes sent in one inner step (with log.every > 1, in one logged interval, per step), leaving
        out a finished run's last step: its final sync of everything pending is not the steady state."""
        rows = self.train_rows[:-1] if self.finished and len(self.train_rows) > 1 else self.train_rows
        peak, last = 0.0, {"step": 0, "comm/cross_island_bytes": 0}
        for row in rows:
            sent = row["comm/cross_island_bytes"] - last["comm/cross_island_bytes"]
            peak, last = max(peak, sent / max(1, row["step"] - last["step"])), row
        return peak

    @property
    def syncs(self) -> int:
        return _largest(self.train_rows, "comm/syncs")

    @property
    def blocking_every_step(self) -> bool:
        """True for schemes that communicate inside the inner step (sync data-parallel)."""
        return any(self.ledger["step"].values())

    @property
    def overlap_steps(self) -> float:
        """Inner steps of compute the scheme's communication hides behind, as the run recorded it; runs from
        before it was recorded: the gradient all-reduce behind the backward pass, a sync behind one step."""
        recorded = self.config.get("resolved", {}).get("overlap_steps")
        return recorded if recorded is not None else (2 / 3 if self.blocking_every_step else 1.0)

    def events(self) -> list[tuple[int, float]]:
        """(step, bytes) of every communication event so far, from the cumulative ledger, as the payload of a
        ring all-reduce that puts the same bytes on the wire (wire x M / 2(M - 1)): a compressed payload's
        all-gather or quantized all-reduce costs what it really sends.

        With `log.every` > 1 a logged interval's bytes are split evenly over the syncs it counted.
        """
        M = self.islands
        key = "comm/wire_bytes" if self.wire_bytes is not None and M > 1 else "comm/cross_island_bytes"
        scale = M / (2 * (M - 1)) if key == "comm/wire_bytes" else 1.0
        out, last = [], {"step": 0, key: 0, "comm/syncs": 0}
        for row in self.train_rows:
            syncs = row["comm/syncs"] - last["comm/syncs"]
            sent = (row[key] - last[key]) * scale
            if syncs:
                out += [(row["step"], sent / syncs)] * syncs
            last = row
        return out

    def eval_at(self, step: int) -> dict | None:
        return next((r for r in self.evals if r["step"] == step), None)


def config_differences(a: Run, b: Run) -> dict[str, tuple]:
    """Keys (other than the scheme's and the run's own) whose values differ: {key: (a's, b's)}."""
    fa, fb = flatten(a.config), flatten(b.config)
    keys = sorted(set(fa) | set(fb))
    return {k: (fa.get(k), fb.get(k)) for k in keys
            if not k.startswith(COMPARABLE_EXCEPT) and fa.get(k) != fb.get(k)}


def _read_rows(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a run still writing: its last line may be half there
    return rows


def load_run(path, name: str | None = None) -> Run:
    path = Path(path)
    if not (path / "config.json").is_file():
        raise UserError(f"{path} is not a run directory (no config.json); pass run directories or a sweep "
                        "directory that holds them")
    try:
        config = json.loads((path / "config.json").read_text())
        summary = json.loads((path / "summary.json").read_text()) if (path / "summary.json").is_file() else None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: unreadable JSON ({e}); the run directory is damaged") from None
    metrics = path / "metrics.jsonl"
    rows = _read_rows(metrics) if metrics.is_file() else []
    if not any("comm/cross_island_bytes" in r for r in rows):
        raise UserError(f"run {path} has no metrics yet ({metrics} is missing or empty); wait for its first "
                        "step or leave it out")
    return Run(name or path.name, path, config, rows, summary)


def _sweep_order(path: Path):
    """Runs of a sweep in the order of its manifest, then any others by name."""
    manifest = path / "sweep.json"
    names = [p["name"] for p in read_json(manifest, "delete it: the runs are listed by name without it")["points"]] \
        if manifest.is_file() else []
    return lambda run_dir: (names.index(run_dir.name) if run_dir.name in names else len(names), run_dir.name)


def find_runs(paths) -> tuple[list[Run], list[str]]:
    """Runs named directly, or every run inside a sweep directory; (runs, warnings about skipped ones)."""
    runs, warnings = [], []
    for path in map(Path, paths):
        if not path.is_dir():
            raise UserError(f"{path} does not exist or is not a directory")
        if (path / "config.json").is_file():
            runs.append(load_run(path))
            continue
        children = sorted((p for p in path.iterdir() if (p / "config.json").is_file()), key=_sweep_order(path))
        if not children:
            raise UserError(f"{path} is neither a run directory (no config.json) nor a directory of runs")
        for child in children:
            try:
                runs.append(load_run(child))
            except UserError as e:
                warnings.append(f"skipped: {e}")
    names = [r.name for r in runs]
    for run in runs:
        if names.count(run.name) > 1:
            run.name = str(run.path)
    return runs, warnings
