"""The one way to set a run up: `start` (config checked, then JAX started) and `build(cfg, exp) -> Run`.

train.py, `python -m jaximus.inspect`, `python -m jaximus.bench` and the tests all go through here.
This is the only module of jaximus that reaches the outer schemes, and only through their registry.
"""
import math
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import jax

from jaximus import UserError
from jaximus.accounting import peak_flops
from jaximus.checkpoint import Checkpointer, check_resume, clear
from jaximus.clock import ISLANDS_SCHEMA, IslandClock, check_islands
from jaximus.config import check_config, check_writable, finalize_config, load_experiment
from jaximus.data.loader import TrainLoader, validation_rows
from jaximus.data.pipeline import open_data, train_loader
from jaximus.data.split import island_of_topic, island_topics
from jaximus.distributed import (
    all_processes_agree,
    barrier,
    check_distributed,
    check_layout,
    global_batch,
    initialize,
    is_primary,
    local_cpu_devices,
    local_islands,
    replicated_input,
)
from jaximus.evaluate import evaluate as evaluate_rows
from jaximus.evaluate import split_val_rows, val_sharding
from jaximus.files import RunLock, atomic_write
from jaximus.ledger import Ledger, as_json
from jaximus.log import make_logger, resolve_wandb_mode
from jaximus.mesh import batch_sharding, enable_compile_cache, force_cpu_devices, make_mesh
from jaximus.objective import Objective, ObjectiveLoader, make_objective_eval, validation_batches
from jaximus.pretrained import with_pretrained
from jaximus.schema import SCHEMA
from jaximus.state import IslandState, Progress, TrainState, make_init, shard_state
from jaximus.step import make_eval_step, make_objective, make_sync_step, make_train_step
from jaximus.warm_start import check_start_from, with_start
from outer_optimizers import SCHEMES, check_scheme, make_scheme, outer_schema

PURPOSES = ("train", "measure", "compile")
__all__ = ["PURPOSES", "SCHEMES", "Run", "build", "load_config", "start"]


def load_config(config_path: str, overrides: list[str]):
    """(cfg, experiment modules), every key's type, range and relations checked; JAX is not touched."""
    exp = load_experiment(config_path)
    cfg = finalize_config(exp["config"], overrides, full_schema(exp))
    check_config(cfg, language_model=not hasattr(exp["model"], "make_objective"))
    check_scheme(cfg)
    getattr(exp["config"], "check_config", lambda c: None)(cfg)
    check_distributed(cfg)
    check_islands(cfg)
    check_start_from(cfg)
    return cfg, exp


def full_schema(exp) -> dict:
    """Type, range and meaning of every key: the run's, the registered schemes', the experiment's."""
    return {**SCHEMA, **ISLANDS_SCHEMA, **outer_schema(), **getattr(exp["config"], "config_schema", dict)()}


def start(config_path: str, overrides: list[str]):
    """Every command's prologue: check the config, then fake the CPU devices and join the other processes."""
    cfg, exp = load_config(config_path, overrides)
    force_cpu_devices(local_cpu_devices(cfg))
    initialize(cfg)
    enable_compile_cache(cfg.data.cache_dir)
    return cfg, exp


@dataclass
class Run:
    """Everything a training run needs, built once. Parts a purpose does not need are None."""
    cfg: object
    mesh: jax.sharding.Mesh
    scheme: object
    schedules: dict  # plain functions of the step, for logging
    state: TrainState  # ShapeDtypeStructs when built to compile only
    shardings: TrainState
    step: object  # step(state, batch) -> (state, loss_R)
    sync: object  # sync(state, groups, weights) -> (state, metrics)
    info: dict  # what config.json records under "resolved"
    perf: dict  # tokens_per_step, flops_per_token, peak
    evaluate: object = None  # evaluate(params_R, val_batches) -> {"val/loss": ..., "val/bpb": ...}
    val_batches: object = None
    loader: TrainLoader | None = None
    logger: object = None
    checkpointer: Checkpointer | None = None
    progress: Progress | None = None
    ledger: Ledger | None = None
    clock: IslandClock | None = None  # who takes part in each step, and the simulated time
    lock: RunLock | None = None  # process 0's hold on the run directory

    def batch(self, rows):
        """This process's islands' rows (n_local, B / R, T + 1) as the global batch."""
        return global_batch(rows, batch_sharding(self.mesh))

    def __enter__(self):
        self._mesh = jax.set_mesh(self.mesh)
        self._mesh.__enter__()
        return self

    def __exit__(self, *exc):
        for part in (self.loader, self.logger, self.checkpointer):
            if part is not None:
                part.close()
        if self.lock is not None:
            self.lock.release()
        self._mesh.__exit__(*exc)


def build(cfg, exp, purpose: str = "train") -> Run:
    """train: everything, resumed from the run directory's checkpoints; measure: compiled programs and a
    real state (no data, no files); compile: compiled programs over an abstract state (nothing allocated)."""
    assert purpose in PURPOSES, purpose
    mesh = make_mesh(cfg.parallel.replica, cfg.parallel.fsdp)
    check_layout(mesh)
    run_dir = Path(cfg.run.out_dir) / cfg.run.name
    if purpose == "train":  # every check that can fail on the run directory, before anything is written
        check_writable(cfg.run.out_dir, "run.out_dir")
        check_writable(str(run_dir / "checkpoints"), "run.out_dir")
        refuse_if_in_use(run_dir)
        resuming = check_resume(cfg, run_dir)
        resolve_wandb_mode(cfg.wandb.mode)
    tx, resolved, schedules = exp["optimizer"].make_optimizer(cfg)
    init_weights, key, R = partial(exp["model"].init_model_weights, cfg), jax.random.key(cfg.seed), cfg.parallel.replica
    island = jax.eval_shape(lambda k: IslandState(p := init_weights(k), tx.init(p)), key)
    scheme = make_scheme(cfg, tx, island, R)
    abstract, shardings, allocate = shard_state(make_init(init_weights, tx, scheme.init, R), key, mesh,
                                                cfg.parallel.strategy)
    objective = exp["model"].make_objective(cfg) if hasattr(exp["model"], "make_objective") else None
    loss_fn, nats_fn = (objective.loss, None) if objective else make_objective(exp["model"], cfg)
    fpt = getattr(exp["model"], "flops_per_token", lambda c: None)(cfg)
    per_row = 1 if objective else cfg.data.seq_len  # an objective's row is one example
    perf = {"tokens_per_step": cfg.data.batch_size * per_row, "flops_per_token": fpt}
    info = {"experiment": str(Path(exp["config"].__file__).resolve()),
            "params": sum(x.size for x in jax.tree.leaves(island.params)), "flops_per_token": fpt,
            "optimizer": resolved, "ledger": as_json(scheme.ledger()), "overlap_steps": scheme.overlap_steps()}
    if purpose != "compile":  # measured on one device, outside the mesh
        perf["peak"], info["peak_source"] = peak_flops()
        info["peak_flops"] = perf["peak"]
    with jax.set_mesh(mesh):
        parts = dict(cfg=cfg, mesh=mesh, scheme=scheme, schedules=schedules, shardings=shardings,
                     step=make_train_step(loss_fn, tx, scheme, mesh, shardings),
                     sync=make_sync_step(scheme, mesh, shardings), info=info, perf=perf)
        if purpose == "compile":
            return Run(state=abstract, **parts)
        if purpose == "measure":
            return Run(state=allocate(), **parts)
        data, val_rows = _read_data(cfg, parts, run_dir) if objective is None else _read_objective(objective, parts)
        with _released_on_error(hold(run_dir)) as lock:
            return _for_training(cfg, exp, run_dir, resuming, nats_fn, allocate, abstract, parts, data, val_rows, lock)


def _read_objective(objective: Objective, parts):
    """An experiment's own objective: no corpus, no tokenizer; its validation rows come with it."""
    parts["info"].update({"corpus": objective.description, "corpus_fingerprint": None, "tokenizer_vocab": None})
    _say_run(parts, "rows")
    return objective, None


def _read_data(cfg, parts, run_dir):
    """The tokenized data and the validation rows; records what they are in the run's info; every check
    that reads happens here, before anything is written."""
    R, B, T = cfg.parallel.replica, cfg.data.batch_size, cfg.data.seq_len
    data = open_data(cfg, say)
    source, tokenizer = data.source, data.tokenizer
    val_rows = validation_rows(source, tokenizer, T, B * math.ceil(cfg.eval.tokens / (B * T)))
    topic = cfg.data.island_split == "topic"
    parts["info"].update({"corpus": source.name, "corpus_fingerprint": source.fingerprint,
                          "tokenizer_vocab": tokenizer.vocab_size, "shuffle_seed": cfg.data.shuffle_seed,
                          "island_topics": island_topics(source, island_of_topic(source, R), R) if topic else None})
    _say_run(parts, "tokens")
    return data, val_rows


def _say_run(parts, unit: str) -> None:
    cfg = parts["cfg"]
    say(f"jaximus: {parts['info']['params']:,} params | {cfg.parallel.replica} islands x {cfg.parallel.fsdp} devices "
        f"({cfg.parallel.strategy}) | outer {parts['scheme'].name} | {parts['perf']['tokens_per_step']:,} "
        f"{unit}/step | peak {parts['info']['peak_source']} | run dir {Path(cfg.run.out_dir) / cfg.run.name}")


def refuse_if_in_use(run_dir: Path) -> None:
    """A run directory another run holds is named first, before its files are read as this run's."""
    holder = RunLock(run_dir).held_by() if is_primary() else None
    if all_processes_agree(int(holder is not None)):
        raise UserError(_in_use(run_dir, holder))


def hold(run_dir: Path) -> RunLock | None:
    """Process 0 locks the run directory before anything is written; every process stops if it is taken
    (a second run may have started since refuse_if_in_use)."""
    lock = RunLock(run_dir) if is_primary() else None
    holder = lock.acquire() if lock else None
    if all_processes_agree(int(holder is not None)):
        raise UserError(_in_use(run_dir, holder))
    return lock


def _in_use(run_dir: Path, holder: str | None) -> str:
    return (f"{run_dir}: in use by {holder or 'another run (see process 0)'}; wait for that run to end or stop it, "
            "or choose another run.name")


@contextmanager
def _released_on_error(lock):
    """The lock goes with the Run (released when it closes); a failure before the Run exists releases it here."""
    try:
        yield lock
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _for_training(cfg, exp, run_dir, resuming, nats_fn, allocate, abstract, parts, data, val_rows, lock) -> Run:
    """Evaluation, the run directory and the state: restored from the newest checkpoint, or fresh."""
    mesh, R, B = parts["mesh"], cfg.parallel.replica, cfg.data.batch_size
    tokenizer = getattr(data, "tokenizer", None)
    if cfg.run.resume == "fresh" and is_primary():  # only now that every check has passed
        clear(run_dir / "checkpoints")
    barrier("checkpoints cleared")
    checkpointer = Checkpointer(run_dir / "checkpoints", cfg.checkpoint.keep)
    resume_at = cfg.run.resume if isinstance(cfg.run.resume, int) else None
    restored = checkpointer.restore(abstract, resume_at) if resuming else None
    if restored:
        state, meta = restored
        if "island_wire" not in meta.get("progress", {}):
            raise UserError(f"{run_dir / 'checkpoints'}: written by an older jaximus (no progress record); "
                            "use run.resume=fresh or another run.name")
        progress = Progress.from_meta(meta["progress"])
        say(f"jaximus: resuming from step {progress.step} ({run_dir / 'checkpoints'})")
    else:
        state = with_pretrained(cfg, exp["model"], allocate(), parts["shardings"])
        state, progress = with_start(cfg, state, parts["shardings"]), Progress()
    islands = local_islands(mesh)
    if isinstance(data, Objective):
        positions = [progress.positions[r] for r in islands] if progress.positions else None
        evaluate, loader = make_objective_eval(data), ObjectiveLoader(data, islands, positions)
        val_batches = replicated_input(validation_batches(data, R), jax.NamedSharding(mesh, jax.P("replica")))
    else:
        evaluate = partial(evaluate_rows, make_eval_step(nats_fn, tokenizer.token_bytes, mesh))
    if progress.step >= cfg.max_steps:  # nothing to train: leave the run directory as it is
        return Run(state=state, evaluate=evaluate, checkpointer=checkpointer, progress=progress, lock=lock, **parts)
    logger = make_logger(cfg, {**cfg.to_dict(), "resolved": parts["info"]}, cfg.max_steps, resume_step=progress.step)
    if not isinstance(data, Objective):
        if is_primary():  # the run's own tokenizer, for jaximus.export
            atomic_write(run_dir / "tokenizer.json", tokenizer.tokenizer.to_str(pretty=True))
        positions = [progress.positions[r] for r in islands] if progress.positions else None
        loader = train_loader(cfg, data, islands, positions)
        val_batches = replicated_input(split_val_rows(val_rows, R, B), val_sharding(mesh))
    scheme = parts["scheme"]
    return Run(state=state, evaluate=evaluate, val_batches=val_batches, loader=loader, logger=logger,
               checkpointer=checkpointer, progress=progress, ledger=Ledger(scheme.ledger(), progress, R),
               clock=scheme.make_clock(cfg, progress), lock=lock, **parts)


def say(text: str) -> None:
    if is_primary():
        print(text, flush=True)
