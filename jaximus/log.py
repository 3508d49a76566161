"""The run directory: config.json, metrics.jsonl, summary.json, a progress bar, and wandb mirroring them."""
import hashlib
import json
import os
import subprocess
from pathlib import Path

from tqdm import tqdm

from jaximus import UserError
from jaximus.distributed import is_primary
from jaximus.files import append_line, atomic_write

WANDB_MODES = ("auto", "online", "offline", "disabled")


def git_provenance(where: Path = Path(__file__).resolve().parent) -> dict:
    """The commit the code came from, whether the tree differed from it, and a hash of the difference (tracked
    changes and untracked files), so two runs from one dirty tree can be told apart from two different ones."""
    def git(*args) -> bytes:
        return subprocess.run(["git", *args], capture_output=True, timeout=10, cwd=where, check=True).stdout

    try:
        commit, top = git("rev-parse", "HEAD", "--show-toplevel").decode().split()
        dirty = bool(git("status", "--porcelain", "--untracked-files=all").strip())
        digest = hashlib.sha256(git("diff", "HEAD", "--binary"))
        for name in sorted(git("ls-files", "--others", "--exclude-standard", "--full-name", "-z", ":/").split(b"\0")):
            if name:
                digest.update(name + b"\0" + (Path(top) / name.decode()).read_bytes())
    except (OSError, ValueError, subprocess.SubprocessError):  # not a git checkout, or no git
        return {"git_commit": None, "git_dirty": None, "git_diff_sha256": None}
    return {"git_commit": commit, "git_dirty": dirty, "git_diff_sha256": digest.hexdigest() if dirty else None}


def resolve_wandb_mode(mode: str) -> str:
    """auto: online with an API key, else offline, so a run never waits on the network."""
    if mode not in WANDB_MODES:
        raise UserError(f"wandb.mode={mode!r}: choose one of {', '.join(WANDB_MODES)}")
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def _keep_metrics_until(path: Path, step: int) -> None:
    """A resumed run continues metrics.jsonl from its checkpoint: later lines (or all, on a fresh start) go."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if step and (row := _row(line)) and row["step"] <= step]
    atomic_write(path, "".join(line + "\n" for line in kept))


def _row(line: str) -> dict | None:
    """A metrics line, or None for a blank or cut one (a line an older jaximus left half-written)."""
    try:
        return json.loads(line)
    except ValueError:
        return None


class RunLogger:
    """Writes <run.out_dir>/<run.name>/ and mirrors every metric to wandb under the same keys."""

    def __init__(self, cfg, config_dict: dict, total_steps: int, resume_step: int = 0):
        self.dir = Path(cfg.run.out_dir) / cfg.run.name
        self.every = cfg.log.every
        self.dir.mkdir(parents=True, exist_ok=True)
        _keep_metrics_until(self.dir / "metrics.jsonl", resume_step)
        atomic_write(self.dir / "config.json", json.dumps({**config_dict, **git_provenance()}, indent=2))
        self.metrics = open(self.dir / "metrics.jsonl", "ab", buffering=0)  # see append_line
        mode = resolve_wandb_mode(cfg.wandb.mode)
        self.wandb = None
        if mode != "disabled":
            import wandb

            self.wandb = wandb.init(project=cfg.wandb.project, name=cfg.run.name, dir=str(self.dir),
                                    config=config_dict, mode=mode,
                                    settings=wandb.Settings(quiet=True))  # no sparkline summary at the end
        self.bar = tqdm(total=total_steps, desc=cfg.run.name, dynamic_ncols=True, mininterval=1.0)

    def log(self, metrics: dict) -> None:
        append_line(self.metrics, json.dumps(metrics))
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in metrics.items() if k != "step"}, step=metrics["step"])
        shown = {k.split("/")[-1]: v for k, v in metrics.items()
                 if k in ("train/loss", "val/bpb", "perf/tokens_per_sec")}
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()}, refresh=False)

    def advance(self, steps: int = 1) -> None:
        self.bar.update(steps)

    def write_summary(self, summary: dict) -> None:
        atomic_write(self.dir / "summary.json", json.dumps(summary, indent=2))
        if self.wandb is not None:
            self.wandb.summary.update(summary)

    def close(self) -> None:
        """Idempotent: the loop closes the logger when the run completes, the Run again on exit."""
        if self.metrics.closed:
            return
        self.bar.close()
        self.metrics.close()
        if self.wandb is not None:
            self.wandb.finish()


class QuietLogger:
    """The logger of every process but 0: the same calls, nothing written (the metrics are global already)."""

    def __init__(self, cfg):
        self.dir = Path(cfg.run.out_dir) / cfg.run.name
        self.every = cfg.log.every

    def log(self, metrics: dict) -> None:
        pass

    def advance(self, steps: int = 1) -> None:
        pass

    def write_summary(self, summary: dict) -> None:
        pass

    def close(self) -> None:
        pass


def make_logger(cfg, config_dict: dict, total_steps: int, resume_step: int = 0):
    """Process 0 writes the run directory, wandb and the progress bar; the others write nothing."""
    return RunLogger(cfg, config_dict, total_steps, resume_step) if is_primary() else QuietLogger(cfg)
