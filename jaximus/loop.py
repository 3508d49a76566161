"""The training loop, read like nanochat's base_train: step, maybe sync, maybe evaluate, maybe checkpoint, log.

Losses are read one step late so the host never stalls the device. Every scheme goes through the same
calls: the loop never asks which scheme it runs.
"""
import contextlib
import functools
import math
import os
import signal
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaximus import UserError
from jaximus.accounting import mfu
from jaximus.checkpoint import SCHEDULE_KEY, schedule_length
from jaximus.distributed import all_processes_agree, gather_islands, is_primary, step_finished, to_host
from jaximus.files import read_json
from jaximus.guard import Diverged, DivergenceGuard
from jaximus.plan import names
from jaximus.schema import flatten


def advance(run, state, step: int):
    """Inner step number step + 1 on the islands the plan makes active, then its sync if it has one: (state, loss_R, metrics).

    After the last step whatever is pending syncs, so the final evaluation reflects all the compute.
    """
    done = step + 1
    plan = run.scheme.plan(run.clock.clock(done))
    state, loss = run.step(state, run.batch(run.loader.take(plan.active)), plan.events, plan.active)
    if _serialize():
        jax.block_until_ready(state)
    metrics = {"step": done, **{f"lr/{k}": float(f(step)) for k, f in run.schedules.items()}}
    if not all(plan.active):  # islands.local_steps: a slow island idles for the end of the round
        metrics["islands/active"] = "".join("1" if a else "0" for a in plan.active)
    for sync in plan.syncs:  # an asynchronous scheme may run several: arrivals one by one, then pulls
        if sync.weights is None:  # nobody attends: the sync is skipped
            metrics.update({"outer/islands_present": 0, "outer/present": "0" * run.cfg.parallel.replica})
            continue
        state, sync_metrics = run.sync(state, sync.groups, sync.weights)
        if _serialize():
            jax.block_until_ready(state)
        if sync_metrics or "outer/lr" not in metrics:  # several syncs: the last that reports (a pull does not)
            metrics.update(_sync_metrics(sync_metrics, plan.groups, sync.weights, run.scheme))
    run.ledger.record(plan)
    run.clock.advance(plan)
    metrics.update(run.clock.step_metrics())
    metrics.update({"tokens": run.clock.tokens(run.perf["tokens_per_step"]), "time/sim_s": run.clock.now_s()})
    run.progress.step = done
    step_finished(done)
    return state, loss, {**metrics, **run.ledger.metrics()}


def evaluate_global(run, state) -> dict:
    """val/loss and val/bpb of the global model (the scheme says which parameters that is)."""
    return run.evaluate(run.scheme.global_params(state), run.val_batches)


def train(run) -> dict:
    """Train from run.progress.step to max_steps; returns the summary (also written to summary.json)."""
    cfg, progress, logger = run.cfg, run.progress, run.logger
    run_dir = os.path.join(cfg.run.out_dir, cfg.run.name)
    if progress.step >= cfg.max_steps:
        _say(f"jaximus: already complete at step {progress.step}; to train further, raise max_steps and keep its "
             f"schedule with {SCHEDULE_KEY}={schedule_length(flatten(cfg.to_dict()))}")
        path = os.path.join(run_dir, "summary.json")
        return read_json(path, "delete it; it is written again when a run completes") if os.path.exists(path) else {}
    state = run.state
    if progress.step == 0:
        progress.evals[0] = evaluate_global(run, state)
        # curves start from the shared initialization
        logger.log({"step": 0, "tokens": 0, "time/sim_s": 0.0, **progress.evals[0]})
    else:
        logger.advance(progress.step)
    clock = {"last": time.perf_counter(), "times": []}
    guard, pending = DivergenceGuard(cfg, progress.evals[0]["val/loss"]), None
    with Interrupt() as interrupt, stopped_if_diverged(run, guard):
        for step in range(progress.step, cfg.max_steps):
            state, loss, metrics = advance(run, state, step)
            done, last = step + 1, step + 1 == cfg.max_steps
            if pending is not None:
                _report(*pending, run, clock, guard)  # the previous step, read while this one runs
            pending = (loss, metrics, time.perf_counter() if _serialize() else None)
            if done % cfg.eval.every == 0 or last:
                _report(*pending, run, clock, guard)
                pending = None
                progress.evals[done] = evaluate_global(run, state)
                logger.log({"step": done, "tokens": metrics["tokens"], "time/sim_s": metrics["time/sim_s"],
                            **progress.evals[done]})
                clock["last"] = time.perf_counter()  # evaluation time is not step time
            stop = all_processes_agree(interrupt.signum or 0)  # every process stops at the same step
            if done % cfg.checkpoint.every == 0 or last or stop:
                if pending is not None:  # every logged step is covered by the checkpoint that follows it
                    _report(*pending, run, clock, guard)
                    pending = None
                save(run, state)
            if stop and not last:
                run.checkpointer.wait()
                raise Interrupted(stop, done)
    run.state = state
    summary = {**_summary(cfg, progress, clock, run), **run.info}
    logger.write_summary(summary)
    logger.close()  # the progress bar ends before the last line is printed
    scored = "bpb" if summary["val/bpb"] is not None else "loss"  # an objective of the experiment's own has no bytes
    _say(f"jaximus: done | val {scored} {summary[f'val/{scored}_initial']:.4f} -> {summary[f'val/{scored}']:.4f} | "
         f"{summary['perf/tokens_per_sec']:,.0f} tokens/s | {summary['comm/cross_island_bytes'] / 2**20:,.1f} MiB "
         f"cross-island ({summary['comm/wire_bytes'] / 2**20:,.1f} MiB on the wire) in {summary['comm/syncs']} syncs | "
         f"run dir {run_dir}")
    return summary


@contextlib.contextmanager
def stopped_if_diverged(run, guard):
    """A diverged run ends in one line; checkpoints from the diverging steps are removed, so a rerun resumes
    from the last good one. The loss of step k is that of the state after k - 1 steps."""
    try:
        yield
    except Diverged as e:
        kept, removed = run.checkpointer.discard_from(e.first - 1)
        raise UserError(guard.explain(e, kept, removed)) from None


def save(run, state) -> None:
    """Checkpoint the state with the host-side progress; refuses non-finite parameters."""
    if not bool(_all_finite(state)):  # a finite loss can still precede an overflowing update
        raise UserError(f"step {run.progress.step}: non-finite parameters after the update; the last good "
                        "checkpoint is kept. Lower the learning rates or check the data")
    progress = run.progress
    progress.positions = gather_islands(run.loader.state()["positions"], run.loader.islands, run.cfg.parallel.replica)
    run.checkpointer.save(progress.step, state, {"progress": progress.to_meta(), "config": run.cfg.to_dict()})


class Interrupt:
    """First SIGINT/SIGTERM: finish the current step, checkpoint, exit. A second one exits at once."""

    def __init__(self):
        self.signum = None
        self.previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:
            os._exit(128 + signum)
        self.signum = signum
        print(f"\njaximus: {signal.Signals(signum).name}: stopping at the next step boundary "
              "(send it again to exit now)", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class Interrupted(Exception):
    def __init__(self, signum: int, step: int):
        super().__init__(f"{signal.Signals(signum).name} at step {step}: checkpoint saved; rerun the same command "
                         "to resume")
        self.exit_code = 128 + signum


@functools.cache
def _serialize() -> bool:
    # XLA:CPU's fake devices share one thread pool: with two programs in flight, islands that run ahead
    # block pool threads in a rendezvous the lagging islands need, and the run deadlocks; one at a time
    return jax.devices()[0].platform == "cpu"


def _say(text: str) -> None:
    if is_primary():
        print(text, flush=True)


@jax.jit
def _all_finite(state):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(state)
                              if jnp.issubdtype(x.dtype, jnp.floating)]))


def _sync_metrics(sync_metrics, groups, weights, scheme) -> dict:
    out = {"outer/groups": ",".join(names(groups)), "outer/lr": scheme.outer_lr()}
    host = to_host(sync_metrics)
    if "drift" in host:
        out.update({"outer/drift": float(np.mean(host["drift"])), "outer/drift_max": float(np.max(host["drift"])),
                    "outer/pseudo_grad_norm": float(host["pseudo_grad_norm"][0])})
    return {**out, "outer/islands_present": sum(w > 0 for w in weights),
            "outer/present": "".join("1" if w > 0 else "0" for w in weights)}


def _summary(cfg, progress, clock, run) -> dict:
    perf = run.perf
    first_s, steady = clock["times"][0], clock["times"][1:] or clock["times"]
    step_s = float(np.median(steady))
    tokens_per_sec = perf["tokens_per_step"] / step_s
    first, last = progress.evals[0], progress.evals[cfg.max_steps]
    fpt = perf["flops_per_token"]
    return {"steps": cfg.max_steps, "tokens": run.clock.tokens(perf["tokens_per_step"]),
            "compile_s": max(0.0, first_s - step_s), "val/loss": last["val/loss"], "val/bpb": last.get("val/bpb"),
            "val/bpb_initial": first.get("val/bpb"), "val/loss_initial": first["val/loss"],
            "perf/tokens_per_sec": tokens_per_sec, "perf/step_s": step_s,
            "perf/mfu": mfu(fpt, tokens_per_sec, perf["peak"]) if fpt else None, **run.ledger.metrics(),
            "comm/island_bytes": list(progress.island_bytes), "comm/island_wire_bytes": list(progress.island_wire),
            **run.clock.summary()}


def _report(loss, metrics, ready_at, run, clock, guard):
    """Log one step once its losses are on the host; step time is the gap between completions."""
    perf, logger = run.perf, run.logger
    active = metrics.get("islands/active", "1" * len(loss))
    losses = {r: float(x) for r, x in enumerate(to_host(loss)) if active[r] == "1"}  # an idle island's loss is not one
    now = ready_at or time.perf_counter()  # a serialized step completed when it was blocked on
    dt, clock["last"] = now - clock["last"], now
    clock["times"].append(dt)
    if not all(math.isfinite(x) for x in losses.values()):
        raise UserError(f"step {metrics['step']}: non-finite training loss {list(losses.values())}; lower the "
                        "learning rates or check the data")
    mean = sum(losses.values()) / len(losses)
    guard.check(metrics["step"], mean)
    tokens_per_sec = perf["tokens_per_step"] / dt
    metrics = {**metrics, "train/loss": mean, **{f"train/island_loss/{r}": x for r, x in losses.items()},
               "perf/tokens_per_sec": tokens_per_sec,
               "perf/mfu": mfu(perf["flops_per_token"], tokens_per_sec, perf["peak"]) if perf["flops_per_token"] else None}
    if metrics["step"] % logger.every == 0 or metrics["step"] == 1:
        logger.log(metrics)
    logger.advance()
