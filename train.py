"""python train.py --config experiments/<exp>/config.py [key=value ...]

Wires an experiment (config, model, optimizer) to the mesh, the data, the inner step and the run
directory; the pieces live in jaximus/.
"""
import math
import sys
import time
from functools import partial

import jax
import numpy as np

from jaximus import UserError
from jaximus.accounting import mfu, peak_flops
from jaximus.config import check_config, check_writable, finalize_config, load_experiment, parse_command_line
from jaximus.data.loader import TrainLoader, validation_rows
from jaximus.data.sources import open_source
from jaximus.data.tokenizer import load_tokenizer
from jaximus.evaluate import evaluate, split_val_rows
from jaximus.log import RunLogger, resolve_wandb_mode
from jaximus.mesh import batch_sharding, enable_compile_cache, force_cpu_devices, make_mesh
from jaximus.state import init_island_state
from jaximus.step import make_eval_step, make_train_step


def train(cfg, exp) -> dict:
    mesh = make_mesh(cfg.parallel.replica, cfg.parallel.fsdp)
    check_writable(cfg.run.out_dir, "run.out_dir")
    resolve_wandb_mode(cfg.wandb.mode)
    source = open_source(cfg.data)
    tokenizer = load_tokenizer(source, cfg.data, cfg.model.vocab_size)
    tx, resolved, schedules = exp["optimizer"].make_optimizer(cfg)
    forward = exp["model"].make_model_forward(cfg)
    R, B, T = cfg.parallel.replica, cfg.data.batch_size, cfg.data.seq_len
    val_rows = validation_rows(source, tokenizer, T, B * math.ceil(cfg.eval.tokens / (B * T)))
    tokens_per_step = B * T
    flops_per_token = getattr(exp["model"], "flops_per_token", lambda c: None)(cfg)

    peak, peak_desc = peak_flops()
    with jax.set_mesh(mesh):
        init_weights = partial(exp["model"].init_model_weights, cfg)
        state, shardings = init_island_state(init_weights, tx, mesh, cfg.parallel.strategy, jax.random.key(cfg.seed))
        n_params = sum(x.size // R for x in jax.tree.leaves(state["params"]))
        train_step = make_train_step(forward, tx, mesh, shardings)
        eval_step = make_eval_step(forward, tokenizer.token_bytes, mesh)
        val_batches = [jax.device_put(b, batch_sharding(mesh)) for b in split_val_rows(val_rows, R, B)]
        run_info = {"params": n_params, "flops_per_token": flops_per_token, "peak_flops": peak,
                    "peak_source": peak_desc, "corpus": source.name, "corpus_fingerprint": source.fingerprint,
                    "tokenizer_vocab": tokenizer.vocab_size, "optimizer": resolved}
        print(f"jaximus: {n_params:,} params | {R} islands x {cfg.parallel.fsdp} devices "
              f"({cfg.parallel.strategy}) | {tokens_per_step:,} tokens/step | peak {peak_desc} | "
              f"run dir {cfg.run.out_dir}/{cfg.run.name}", flush=True)
        logger = RunLogger(cfg, {**cfg.to_dict(), "resolved": run_info}, cfg.max_steps)
        loader = TrainLoader(source, tokenizer, T, B // R, list(range(R)), R, prefetch=cfg.data.prefetch)
        try:
            summary = _loop(cfg, batch_sharding(mesh), state, train_step, eval_step, val_batches, loader, logger,
                            schedules, tokens_per_step, flops_per_token, peak, n_params)
            summary.update(run_info)
            logger.write_summary(summary)
        finally:
            loader.close()
            logger.close()
    print(f"jaximus: done | val bpb {summary['val/bpb_initial']:.4f} -> {summary['val/bpb']:.4f} | "
          f"{summary['perf/tokens_per_sec']:,.0f} tokens/s | compile {summary['compile_s']:.1f}s | "
          f"run dir {logger.dir}", flush=True)
    return summary


def _loop(cfg, batch_sharding, state, train_step, eval_step, val_batches, loader, logger, schedules,
          tokens_per_step, flops_per_token, peak, n_params):
    evals = {0: evaluate(eval_step, state["params"], val_batches)}
    grad_bytes = 4 * n_params  # sync DP: each island sends its f32 gradient once per step
    clock = {"last": time.perf_counter(), "times": []}
    pending = None
    for step in range(cfg.max_steps):
        state, loss = train_step(state, jax.device_put(next(loader), batch_sharding))
        if pending is not None:
            _report(*pending, logger, clock)  # the previous step, read while this one runs
        done = step + 1
        metrics = {"step": done, "tokens": done * tokens_per_step,
                   **{f"lr/{k}": float(f(step)) for k, f in schedules.items()},
                   "comm/cross_island_bytes": grad_bytes * done, "comm/syncs": done}
        pending = (loss, metrics, tokens_per_step, flops_per_token, peak)
        if done % cfg.eval.every == 0 or done == cfg.max_steps:
            _report(*pending, logger, clock)
            pending = None
            evals[done] = evaluate(eval_step, state["params"], val_batches)
            logger.log({"step": done, "tokens": done * tokens_per_step, **evals[done]})
            clock["last"] = time.perf_counter()  # evaluation time is not step time
    first_s, steady = clock["times"][0], clock["times"][1:] or clock["times"]
    step_s = float(np.median(steady))
    tokens_per_sec = tokens_per_step / step_s
    first, last = evals[0], evals[cfg.max_steps]
    summary = {"steps": cfg.max_steps, "tokens": cfg.max_steps * tokens_per_step,
               "compile_s": max(0.0, first_s - step_s), "val/loss": last["val/loss"], "val/bpb": last["val/bpb"],
               "val/bpb_initial": first["val/bpb"], "perf/tokens_per_sec": tokens_per_sec, "perf/step_s": step_s,
               "perf/mfu": mfu(flops_per_token, tokens_per_sec, peak) if flops_per_token else None,
               "comm/cross_island_bytes": grad_bytes * cfg.max_steps, "comm/syncs": cfg.max_steps}
    return summary


def _report(loss, metrics, tokens_per_step, flops_per_token, peak, logger, clock):
    """Log one step once its loss is on the host; step time is the gap between completions."""
    losses = [float(x) for x in loss]
    now = time.perf_counter()
    dt, clock["last"] = now - clock["last"], now
    clock["times"].append(dt)
    if not all(math.isfinite(x) for x in losses):
        raise UserError(f"step {metrics['step']}: non-finite training loss {losses}; lower the learning "
                        "rates or check the data")
    metrics = {**metrics, "train/loss": sum(losses) / len(losses), "perf/tokens_per_sec": tokens_per_step / dt,
               "perf/mfu": mfu(flops_per_token, tokens_per_step / dt, peak) if flops_per_token else None}
    if metrics["step"] % logger.every == 0 or metrics["step"] == 1:
        logger.log(metrics)
    logger.advance()


def main(argv: list[str]) -> int:
    try:
        config_path, overrides = parse_command_line(argv)
        exp = load_experiment(config_path)
        cfg = finalize_config(exp["config"], overrides)
        check_config(cfg)
        force_cpu_devices(cfg.parallel.cpu_devices)
        enable_compile_cache(cfg.data.cache_dir)
        train(cfg, exp)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
