"""python train.py --config experiments/<exp>/config.py [key=value ...]

Wires an experiment (config, model, optimizer) and an outer scheme to the mesh, the data, the
compiled steps and the run directory; the pieces live in jaximus/ and outer_optimizers/.
"""
import json
import math
import sys
from functools import partial
from pathlib import Path

import jax

from jaximus import UserError
from jaximus.accounting import peak_flops
from jaximus.checkpoint import Checkpointer, abstract_like, clear, frozen_differences
from jaximus.config import check_config, check_writable, finalize_config, load_experiment, parse_command_line
from jaximus.data.loader import TrainLoader, validation_rows
from jaximus.data.sources import open_source
from jaximus.data.tokenizer import load_tokenizer
from jaximus.distributed import (
    barrier,
    check_distributed,
    check_layout,
    initialize,
    is_primary,
    local_cpu_devices,
    local_islands,
    replicated_input,
)
from jaximus.evaluate import split_val_rows, val_sharding
from jaximus.log import make_logger, resolve_wandb_mode
from jaximus.loop import Interrupted, Ledger, run_training
from jaximus.mesh import batch_sharding, enable_compile_cache, force_cpu_devices, make_mesh
from jaximus.outer import make_sync_step
from jaximus.state import abstract_state, init_state
from jaximus.step import make_eval_step, make_train_step
from outer_optimizers import make_scheme


def train(cfg, exp) -> dict:
    mesh = make_mesh(cfg.parallel.replica, cfg.parallel.fsdp)
    check_layout(mesh)
    islands = local_islands(mesh)
    run_dir = Path(cfg.run.out_dir) / cfg.run.name
    check_writable(cfg.run.out_dir, "run.out_dir")
    check_writable(str(run_dir / "checkpoints"), "run.out_dir")
    resuming = check_resume(cfg, run_dir)
    resolve_wandb_mode(cfg.wandb.mode)
    tx, resolved, schedules = exp["optimizer"].make_optimizer(cfg)
    scheme = make_scheme(cfg, tx)
    init_weights = partial(exp["model"].init_model_weights, cfg)
    key = jax.random.key(cfg.seed)
    abstract, _ = abstract_state(init_weights, tx, mesh, cfg.parallel.strategy, key, scheme.init_outer)
    island_abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), abstract["islands"])
    scheme.check_inner_state(island_abstract["opt_state"])
    source = open_source(cfg.data)
    tokenizer = load_tokenizer(source, cfg.data, cfg.model.vocab_size) if is_primary() else None
    barrier("tokenizer")  # process 0 trains and caches it; the others read the cache
    tokenizer = tokenizer or load_tokenizer(source, cfg.data, cfg.model.vocab_size)
    forward = exp["model"].make_model_forward(cfg)
    R, B, T = cfg.parallel.replica, cfg.data.batch_size, cfg.data.seq_len
    val_rows = validation_rows(source, tokenizer, T, B * math.ceil(cfg.eval.tokens / (B * T)))
    perf = {"tokens_per_step": B * T, "flops_per_token": getattr(exp["model"], "flops_per_token", lambda c: None)(cfg)}
    perf["peak"], peak_desc = peak_flops()

    with jax.set_mesh(mesh):
        state, shardings = init_state(init_weights, tx, mesh, cfg.parallel.strategy, key, scheme.init_outer)
        n_params = sum(x.size // R for x in jax.tree.leaves(state["islands"]["params"]))
        steps = {"train": make_train_step(forward, tx, mesh, shardings["islands"], grad_hook=scheme.grad_hook),
                 "sync": make_sync_step(scheme, mesh, shardings),
                 "eval": make_eval_step(forward, tokenizer.token_bytes, mesh),
                 "batch_sharding": batch_sharding(mesh),
                 "val_batches": replicated_input(split_val_rows(val_rows, R, B), val_sharding(mesh))}
        run_info = {"params": n_params, "flops_per_token": perf["flops_per_token"], "peak_flops": perf["peak"],
                    "peak_source": peak_desc, "corpus": source.name, "corpus_fingerprint": source.fingerprint,
                    "tokenizer_vocab": tokenizer.vocab_size, "optimizer": resolved,
                    "ledger": {"per_inner_step": scheme.step_ledger(island_abstract),
                               "per_sync": scheme.ledger(island_abstract, frozenset(scheme.groups))}}
        say(f"jaximus: {n_params:,} params | {R} islands x {cfg.parallel.fsdp} devices ({cfg.parallel.strategy}) | "
              f"outer {scheme.name} | {perf['tokens_per_step']:,} tokens/step | peak {peak_desc} | "
              f"run dir {cfg.run.out_dir}/{cfg.run.name}")
        if cfg.run.resume == "fresh" and is_primary():  # only now that every check has passed
            clear(run_dir / "checkpoints")
        barrier("checkpoints cleared")
        checkpointer = Checkpointer(run_dir / "checkpoints", cfg.checkpoint.keep)
        restored = checkpointer.restore(abstract_like(state), _resume_step(cfg)) if resuming else None
        if restored:
            step, state, meta = restored
            say(f"jaximus: resuming from step {step} ({run_dir / 'checkpoints'})")
            if step >= cfg.max_steps:
                checkpointer.close()
                say(f"jaximus: already complete at step {step}; raise max_steps to train further")
                return json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
        logger = make_logger(cfg, {**cfg.to_dict(), "resolved": run_info}, cfg.max_steps,
                            resume_step=restored[0] if restored else 0)
        positions = restored[2]["loader"]["positions"] if restored else None
        loader = TrainLoader(source, tokenizer, T, B // R, islands, R, prefetch=cfg.data.prefetch,
                             state={"positions": [positions[r] for r in islands]} if positions else None)
        try:
            _, summary = run_training(cfg, state, steps, loader, logger, schedules, scheme,
                                      Ledger(scheme, island_abstract), perf, checkpointer,
                                      resumed=(restored[0], restored[2]) if restored else None)
            summary.update(run_info)
            logger.write_summary(summary)
        finally:
            loader.close()
            logger.close()
            checkpointer.close()
    say(f"jaximus: done | val bpb {summary['val/bpb_initial']:.4f} -> {summary['val/bpb']:.4f} | "
          f"{summary['perf/tokens_per_sec']:,.0f} tokens/s | {summary['comm/cross_island_bytes'] / 2**20:,.1f} MiB "
          f"cross-island in {summary['comm/syncs']} syncs | run dir {logger.dir}")
    return summary


def say(text: str) -> None:
    if is_primary():
        print(text, flush=True)


def _resume_step(cfg) -> int | None:
    return cfg.run.resume if isinstance(cfg.run.resume, int) else None


def check_resume(cfg, run_dir: Path) -> bool:
    """Whether to restore; fails, before anything is written, on a frozen key changed since the checkpoints."""
    mode = cfg.run.resume
    if mode not in ("auto", "fresh") and not (isinstance(mode, int) and not isinstance(mode, bool) and mode >= 0):
        raise UserError(f"run.resume={mode!r}: use auto (latest checkpoint), fresh (start over) or a step number")
    if mode == "fresh":
        return False
    saved = run_dir / "config.json"
    if not (run_dir / "checkpoints").is_dir() or not saved.exists():
        return False
    changed = frozen_differences(json.loads(saved.read_text()), cfg.to_dict())
    if changed:
        raise UserError(f"{run_dir}: its checkpoints come from another config; changed: {'; '.join(changed)}. "
                        "Use another run.name, or run.resume=fresh to start over")
    return True


def main(argv: list[str]) -> int:
    try:
        config_path, overrides = parse_command_line(argv)
        exp = load_experiment(config_path)
        cfg = finalize_config(exp["config"], overrides)
        check_config(cfg)
        check_distributed(cfg)
        force_cpu_devices(local_cpu_devices(cfg))
        initialize(cfg)
        enable_compile_cache(cfg.data.cache_dir)
        train(cfg, exp)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"jaximus: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
