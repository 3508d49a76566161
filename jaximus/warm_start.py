"""run.start_from: start a fresh run from another run's trained weights.

DiLoCo's own protocol (arXiv 2311.08105 section 3) pretrains one model on ordinary data-parallel training and
then starts every island from that checkpoint; so does any continued pretraining of a jaximus run under
another scheme, island count or data split. `run.start_from` names a run directory (its newest checkpoint)
or one of its checkpoints (`<run>/checkpoints/<step>`). Every island and the outer copy start from that
run's global model (what its evaluation scored); optimizer states, buffers, the step, the data position
and the learning-rate schedule start fresh. The two runs must agree on every model.* key; anything
else (scheme, islands, data, optimizer) may differ. A run that has checkpoints of its own resumes from
them, and run.start_from is kept with its checkpoints (changing it is refused, as for model.*).
"""
from pathlib import Path

import jax
import numpy as np

from jaximus import UserError, first_line
from jaximus.checkpoint import changed_keys, global_params, has_checkpoints, restore_numpy, saved_step
from jaximus.files import read_json
from jaximus.schema import flatten
from jaximus.state import IslandState, OuterState


def start_point(start_from: str) -> tuple[Path, int]:
    """(run directory, checkpoint step) that run.start_from names; one line when it names nothing usable."""
    path = Path(start_from)
    run_dir, step = (path.parents[1], int(path.name)) if path.name.isdigit() and path.parent.name == "checkpoints" \
        else (path, None)
    if not (run_dir / "config.json").is_file():
        raise UserError(f"run.start_from={start_from}: no config.json in {run_dir}; give a run directory that "
                        "train.py wrote, or one of its checkpoints (<run>/checkpoints/<step>)")
    return run_dir, saved_step(run_dir, step, f"run.start_from={start_from}")[0]


def check_start_from(cfg) -> None:
    """Before JAX starts: the run named exists, has the checkpoint, and has this run's model."""
    start_from, here = cfg.run.start_from, Path(cfg.run.out_dir) / cfg.run.name
    if not start_from or (cfg.run.resume != "fresh" and has_checkpoints(here)):
        return  # a run with checkpoints of its own resumes from them
    if getattr(cfg.model, "init_from", None):
        raise UserError("run.start_from and model.init_from both give the starting weights; set one of them")
    run_dir, _ = start_point(start_from)
    if run_dir.resolve() == here.resolve():
        raise UserError(f"run.start_from={start_from} is this run's own directory; a rerun resumes it without "
                        "run.start_from")
    saved = flatten(read_json(run_dir / "config.json", "restore it, or start from another run"))
    ours = flatten(cfg.to_dict())
    differ = [f"{k} ({saved.get(k)!r} there, {ours.get(k)!r} here)" for k in changed_keys(saved, ours, ("model.",))]
    if differ:
        raise UserError(f"run.start_from={start_from}: its model differs from this run's: {'; '.join(differ)}; "
                        "start from a run of the same model")


def with_start(cfg, state, shardings):
    """A fresh TrainState whose weights, every island's and the outer copy, are run.start_from's global model."""
    if not cfg.run.start_from:
        return state
    run_dir, step = start_point(cfg.run.start_from)
    try:
        weights = global_params(restore_numpy(run_dir / "checkpoints" / str(step) / "state"))
    except Exception as e:  # orbax, tensorstore: whatever a damaged checkpoint raises
        raise UserError(f"run.start_from: {run_dir / 'checkpoints' / str(step)} is unreadable ({first_line(e)}); "
                        "start from another of its checkpoints") from None
    islands = IslandState(_placed(weights, state.islands.params, shardings.islands.params), state.islands.opt_state)
    outer = state.outer
    if outer.params is not None:
        outer = OuterState(_placed(weights, outer.params, shardings.outer.params), outer.opt_state, outer.buffers)
    return state.replace(islands=islands, outer=outer)


def _placed(weights, like_R, shardings_R):
    """One island's weights as every island's copy (leaves (R, ...)), each device taking only its own shard."""
    def leaf(w, x, sharding):
        copies = np.broadcast_to(np.asarray(w, x.dtype)[None], x.shape)  # no copy: a view repeated R times
        return jax.make_array_from_callback(x.shape, sharding, lambda index: copies[index])

    return jax.tree.map(leaf, weights, like_R, shardings_R)
