"""The training loop: inner steps on every island, a scheme's syncs when due, evaluation, logging.

Losses are read one step late so the host never stalls the device; the communication ledger is
accumulated from the scheme's own byte counts (tests keep them equal to the compiled programs').
"""
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
from jaximus.distributed import all_processes_agree, gather_islands, global_batch, to_host
from jaximus.evaluate import evaluate
from outer_optimizers import sync_weights


class Ledger:
    """Cumulative bytes each island sent across the slow link, and the number of syncs."""

    def __init__(self, scheme, island_abstract):
        self.scheme, self.island = scheme, island_abstract
        self.per_step = sum(scheme.step_ledger(island_abstract).values())
        self.bytes, self.syncs = 0, 0

    def inner_step(self):
        if self.per_step:
            self.bytes += self.per_step
            self.syncs += 1

    def sync(self, groups):
        self.bytes += sum(self.scheme.ledger(self.island, groups).values())
        self.syncs += 1

    def metrics(self):
        return {"comm/cross_island_bytes": self.bytes, "comm/syncs": self.syncs}


def eval_params(state):
    """The outer (global) parameters; sync DP keeps none because its islands never differ."""
    return state["outer"]["params"] if "params" in state["outer"] else state["islands"]["params"]


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


def run_training(cfg, state, steps, loader, logger, schedules, scheme, ledger, perf, checkpointer, resumed=None):
    """steps: {"train", "sync", "eval"} callables; perf: tokens_per_step, flops_per_token, peak.

    resumed: (step, meta) of the checkpoint `state` came from, or None for a fresh start.
    """
    # XLA:CPU's fake devices share one thread pool: with two programs in flight, islands that run ahead
    # block pool threads in a rendezvous the lagging islands need, and the run deadlocks; one at a time
    serialize = jax.devices()[0].platform == "cpu"
    first, evals = 0, None
    if resumed:
        first, meta = resumed
        evals = {int(k): v for k, v in meta["evals"].items()}
        ledger.bytes, ledger.syncs = meta["ledger"]["bytes"], meta["ledger"]["syncs"]
        logger.advance(first)
    else:
        evals = {0: evaluate(steps["eval"], eval_params(state), steps["val_batches"])}
        logger.log({"step": 0, "tokens": 0, **evals[0]})  # curves start from the shared initialization
    clock = {"last": time.perf_counter(), "times": []}
    pending = None
    with Interrupt() as interrupt:
        for step in range(first, cfg.max_steps):
            islands, loss = steps["train"](state["islands"], global_batch(next(loader), steps["batch_sharding"]))
            state = {**state, "islands": islands}
            if serialize:
                jax.block_until_ready(islands)
            ledger.inner_step()
            done = step + 1
            metrics = {"step": done, "tokens": done * perf["tokens_per_step"],
                       **{f"lr/{k}": float(f(step)) for k, f in schedules.items()}}
            groups = scheme.due(done)
            weights = sync_weights(cfg.seed, done, len(loss), cfg.faults.island_dropout) if groups else None
            if groups and weights is not None:
                islands, outer, sync_metrics = steps["sync"](state["islands"], state["outer"], groups, weights)
                state = {"islands": islands, "outer": outer}
                if serialize:
                    jax.block_until_ready(state)
                ledger.sync(groups)
                metrics.update(_sync_metrics(sync_metrics, groups, scheme))
                metrics["outer/islands_present"] = int((weights > 0).sum())
                metrics["outer/present"] = "".join("1" if w > 0 else "0" for w in weights)
            elif groups:
                metrics.update({"outer/islands_present": 0, "outer/present": "0" * len(loss)})
            metrics.update(ledger.metrics())
            if pending is not None:
                _report(*pending, logger, clock)  # the previous step, read while this one runs
            pending = (loss, metrics, perf, time.perf_counter() if serialize else None)
            last = done == cfg.max_steps
            if done % cfg.eval.every == 0 or last:
                _report(*pending, logger, clock)
                pending = None
                evals[done] = evaluate(steps["eval"], eval_params(state), steps["val_batches"])
                logger.log({"step": done, "tokens": done * perf["tokens_per_step"], **evals[done]})
                clock["last"] = time.perf_counter()  # evaluation time is not step time
            stop = all_processes_agree(interrupt.signum or 0)  # every process stops at the same step
            if done % cfg.checkpoint.every == 0 or last or stop:
                if pending is not None:  # every logged step is covered by the checkpoint that follows it
                    _report(*pending, logger, clock)
                    pending = None
                if not bool(_all_finite(state)):  # a finite loss can still precede an overflowing update
                    raise UserError(f"step {done}: non-finite parameters after the update; the last good "
                                    "checkpoint is kept. Lower the learning rates or check the data")
                positions = gather_islands(loader.state()["positions"], loader.islands, cfg.parallel.replica)
                checkpointer.save(done, state, {"step": done, "loader": {"positions": positions}, "evals": evals,
                                                "ledger": {"bytes": ledger.bytes, "syncs": ledger.syncs},
                                                "config": cfg.to_dict()})
            if stop and not last:
                checkpointer.wait()
                raise Interrupted(stop, done)
    return state, _summary(cfg, evals, clock, perf, ledger)


@jax.jit
def _all_finite(state):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(state)
                              if jnp.issubdtype(x.dtype, jnp.floating)]))


class Interrupted(Exception):
    def __init__(self, signum: int, step: int):
        super().__init__(f"{signal.Signals(signum).name} at step {step}: checkpoint saved; rerun the same command "
                         "to resume")
        self.exit_code = 128 + signum


def _sync_metrics(sync_metrics, groups, scheme) -> dict:
    out = {"outer/groups": ",".join(sorted(groups)), "outer/lr": scheme.outer_lr()}
    host = to_host(sync_metrics)
    if "drift" in host:
        out.update({"outer/drift": float(np.mean(host["drift"])), "outer/drift_max": float(np.max(host["drift"])),
                    "outer/pseudo_grad_norm": float(host["pseudo_grad_norm"][0])})
    return out


def _summary(cfg, evals, clock, perf, ledger) -> dict:
    first_s, steady = clock["times"][0], clock["times"][1:] or clock["times"]
    step_s = float(np.median(steady))
    tokens_per_sec = perf["tokens_per_step"] / step_s
    first, last = evals[0], evals[cfg.max_steps]
    fpt = perf["flops_per_token"]
    return {"steps": cfg.max_steps, "tokens": cfg.max_steps * perf["tokens_per_step"],
            "compile_s": max(0.0, first_s - step_s), "val/loss": last["val/loss"], "val/bpb": last["val/bpb"],
            "val/bpb_initial": first["val/bpb"], "perf/tokens_per_sec": tokens_per_sec, "perf/step_s": step_s,
            "perf/mfu": mfu(fpt, tokens_per_sec, perf["peak"]) if fpt else None, **ledger.metrics()}


def _report(loss, metrics, perf, ready_at, logger, clock):
    """Log one step once its losses are on the host; step time is the gap between completions."""
    losses = [float(x) for x in to_host(loss)]
    now = ready_at or time.perf_counter()  # a serialized step completed when it was blocked on
    dt, clock["last"] = now - clock["last"], now
    clock["times"].append(dt)
    if not all(math.isfinite(x) for x in losses):
        raise UserError(f"step {metrics['step']}: non-finite training loss {losses}; lower the learning "
                        "rates or check the data")
    tokens_per_sec = perf["tokens_per_step"] / dt
    metrics = {**metrics, "train/loss": sum(losses) / len(losses),
               **{f"train/island_loss/{r}": x for r, x in enumerate(losses)},
               "perf/tokens_per_sec": tokens_per_sec,
               "perf/mfu": mfu(perf["flops_per_token"], tokens_per_sec, perf["peak"]) if perf["flops_per_token"] else None}
    if metrics["step"] % logger.every == 0 or metrics["step"] == 1:
        logger.log(metrics)
    logger.advance()
