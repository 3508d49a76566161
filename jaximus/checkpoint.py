"""Orbax checkpoints of everything the next step depends on, and resuming from the newest complete one.

A checkpoint holds the training state (islands and outer), the step, the data loaders' positions, the
ledger's totals, the evaluations so far and the resolved config. Orbax writes to a temporary directory
and renames it when complete, so a run killed mid-save leaves the previous checkpoint intact.
"""
import contextlib
import copy
import errno
import logging
import shutil
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaximus import UserError, first_line
from jaximus.files import FULL, free_bytes, io_error, read_json
from jaximus.schema import flatten

# Keys whose change alters the state's shapes or the data order: a resumed run must keep them.
FROZEN_PREFIXES = ("seed", "model.", "data.", "parallel.", "outer.name", "outer.optimizer", "outer.fragment",
                   "outer.overlap_steps", "outer.eager", "outer.compress.format", "outer.compress.error_feedback",
                   "run.start_from")
FREE_KEYS = ("data.prefetch", "data.cache_dir")
SCHEDULE_KEY = "optimizer.schedule_steps"


def changed_keys(a: dict, b: dict, prefixes: tuple[str, ...]) -> list[str]:
    """The flat keys under `prefixes` whose values differ between two flat configs (a tuple equals its list)."""
    keys = sorted(k for k in set(a) | set(b) if k.startswith(prefixes) and k not in FREE_KEYS)
    return [k for k in keys if _norm(a.get(k)) != _norm(b.get(k))]


def frozen_differences(saved: dict, current: dict) -> list[str]:
    a, b = flatten(saved), flatten(current)
    return [f"{k} ({a.get(k)!r} -> {b.get(k)!r})" for k in changed_keys(a, b, FROZEN_PREFIXES)]


def schedule_length(flat: dict) -> int:
    """The steps an experiment's learning-rate schedule spans (optimizer.schedule_steps, else max_steps)."""
    return flat.get(SCHEDULE_KEY, flat.get("max_steps"))


def check_schedule(saved: dict, current: dict, run_dir: Path) -> None:
    """Extending a run must not silently restart its schedule: one line that says how to go on."""
    a, b = flatten(saved), flatten(current)
    old, new = schedule_length(a), schedule_length(b)
    if old == new:
        return
    raise UserError(f"max_steps={b['max_steps']}: {run_dir}'s checkpoints follow a learning-rate schedule over {old} "
                    f"steps, which this would restart over {new}. To go on past its end at optimizer.final_lr_frac "
                    f"x the peak lr ({a.get('optimizer.final_lr_frac')} so far; warmup and warmdown are not repeated), "
                    f"add {SCHEDULE_KEY}={old}; to train {new} steps from the start, add run.resume=fresh")


def _norm(v):
    return list(v) if isinstance(v, tuple) else v


class Checkpointer:
    def __init__(self, directory: Path, keep: int):
        self.dir, self.writing = directory, None
        self.manager = ocp.CheckpointManager(directory.absolute(), options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=True, cleanup_tmp_directories=True))
        logging.getLogger("absl").setLevel(logging.CRITICAL)  # orbax's writer threads log each failure; we say it once

    def save(self, step: int, state, meta: dict) -> None:
        """Asynchronous: returns once the arrays are copied off the device; written in the background.

        The previous save is finished first, so its failure and its bytes are known; a state that cannot fit
        in what is left is refused before anything is written."""
        self.wait()
        needed = sum(x.nbytes for x in jax.tree.leaves(state)) // jax.process_count()  # this process's islands
        if free_bytes(self.dir) < needed:
            raise io_error(OSError(errno.ENOSPC, "No space left on device"), self.dir, needed)
        self.writing = needed  # what a failure in the writer threads (seen by wait) reports
        with self._failing_cleanly(needed):
            # the metadata is written in the background too: snapshot it, or the run's next steps (which go on
            # updating progress's lists in place) leak into this checkpoint
            snapshot = copy.deepcopy(meta)
            self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                            meta=ocp.args.JsonSave(snapshot)), force=True)

    @contextlib.contextmanager
    def _failing_cleanly(self, needed: int | None = None):
        """A failed write leaves no temporary directory and ends in one line."""
        try:
            yield
        except Exception as e:
            for tmp in self.dir.glob("*.orbax-checkpoint-tmp*"):
                shutil.rmtree(tmp, ignore_errors=True)
            if "No space left" in str(e) or getattr(e, "errno", None) in FULL:
                raise io_error(OSError(errno.ENOSPC, "No space left on device"), self.dir, needed) from None
            raise UserError(f"{self.dir}: writing a checkpoint failed ({first_line(e)}); the earlier checkpoints "
                            "are intact, rerun to resume from the newest") from None

    def restore(self, abstract_state, step: int | None = None):
        """(state, meta) from `step`, or from the newest checkpoint that reads back; None if none does."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        if step is not None:
            if step not in steps:
                raise UserError(f"run.resume={step}: no checkpoint at that step; saved steps: {sorted(steps)}")
            steps = [step]
        for s in steps:
            try:
                out = self.manager.restore(s, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
                for newer in (n for n in self.manager.all_steps() if n > s):
                    self.manager.delete(newer)  # a rewind: later checkpoints belong to a future we replay
                return out["state"], out["meta"]
            except Exception as e:  # a corrupt checkpoint: fall back to the one before it
                print(f"warning: checkpoint {self.dir / str(s)} is unreadable ({first_line(e)}); trying an older one",
                      file=sys.stderr)
        return None

    def discard_from(self, step: int) -> tuple[int | None, list[int]]:
        """Delete the checkpoints at `step` and later: (the newest one left or None, the steps deleted)."""
        self.wait()
        removed = sorted(s for s in self.manager.all_steps() if s >= step)
        for s in removed:
            self.manager.delete(s)
        return max(self.manager.all_steps(), default=None), removed

    def wait(self) -> None:
        with self._failing_cleanly(self.writing):
            self.manager.wait_until_finished()

    def close(self) -> None:
        self.wait()
        self.manager.close()


def saved_step(run_dir: Path, step: int | None, asked: str) -> tuple[int, list[int]]:
    """(the checkpoint to read, every saved step) of a finished or running run: `step`, or the newest; one line
    starting with `asked` (the key or flag that named it) when there is none."""
    steps = sorted(int(p.name) for p in (run_dir / "checkpoints").glob("*") if p.name.isdigit())
    if not steps or (step is not None and step not in steps):
        raise UserError(f"{asked}: no checkpoint{'' if step is None else f' at step {step}'} in "
                        f"{run_dir / 'checkpoints'} (have {steps or 'none'})")
    return steps[-1] if step is None else step, steps


def global_params(state: dict) -> dict:
    """One island's copy of the model evaluation scores: the outer parameters, or the islands' own."""
    params = state.get("outer", {}).get("params") or state["islands"]["params"]
    return jax.tree.map(lambda x: np.asarray(x)[0], params)


def restore_numpy(path: Path) -> dict:
    """A saved TrainState as host numpy arrays, whatever devices wrote it."""
    import absl.logging
    absl.logging.set_verbosity(absl.logging.ERROR)  # our checkpoints have no orbax _CHECKPOINT_METADATA file
    checkpointer = ocp.PyTreeCheckpointer()
    metadata = checkpointer.metadata(path.resolve()).item_metadata
    tree = getattr(metadata, "tree", metadata)
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return checkpointer.restore(path.resolve(), args=ocp.args.PyTreeRestore(restore_args=args))


def clear(directory: Path) -> None:
    """run.resume=fresh: forget earlier checkpoints of this run."""
    if directory.exists():
        shutil.rmtree(directory)


def has_checkpoints(run_dir: Path) -> bool:
    directory = run_dir / "checkpoints"
    return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


def check_resume(cfg, run_dir: Path) -> bool:
    """Whether to restore; fails, before anything is written, on a frozen key changed since the checkpoints."""
    if cfg.run.resume == "fresh":
        return False
    saved = run_dir / "config.json"
    if not saved.exists() or not has_checkpoints(run_dir):
        return False  # nothing to resume from: a run that stopped before its first save starts over
    saved = read_json(saved, f"restore it, or use run.resume=fresh to start {run_dir} over")
    changed = frozen_differences(saved, cfg.to_dict())
    if changed:
        raise UserError(f"{run_dir}: its checkpoints come from another config; changed: {'; '.join(changed)}. "
                        "Use another run.name, or run.resume=fresh to start over")
    check_schedule(saved, cfg.to_dict(), run_dir)
    return True
