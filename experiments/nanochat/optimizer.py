"""nanochat@3a5e0bc optimizer: Muon for the block matrices, AdamW for wte and lm_head.

Every group's learning rate is multiplied by the same warmup/constant/warmdown schedule.
"""
import jax.numpy as jnp
import optax

from jaximus.optim.muon import scale_by_muon
from jaximus.optim.schedules import lr_multiplier, muon_momentum


def param_labels(weights) -> dict:
    """Route every leaf to a group; embeddings are 2-D but must not go to Muon (NANOCHAT §11.9)."""
    return {"wte": "embedding", "lm_head": "unembedding",
            "blocks": {k: {n: "muon" for n in v} for k, v in weights["blocks"].items()}}


def make_optimizer(cfg, labels=param_labels, vectors: bool = False):
    """(optax transform, resolved hyperparameters, schedule functions of the step for logging).

    labels(weights) routes leaves to muon, embedding, unembedding and, with vectors=True, vector (norm
    gains and biases, which nanochat's model has none of: AdamW at the unembedding lr, its smallest)."""
    o = cfg.optimizer
    lrm = lr_multiplier(o.schedule_steps, o.warmup_steps, o.warmdown_frac, o.final_lr_frac)
    momentum = muon_momentum(o.muon_momentum_start, o.muon_momentum, o.muon_momentum_warmup_steps)
    width_scale = (cfg.model.width / 768) ** -0.5  # nanochat: AdamW lrs scale as (d_model/768)^-0.5
    lrs = {"muon": o.matrix_lr, "embedding": o.embedding_lr * width_scale,
           "unembedding": o.unembedding_lr * width_scale, **({"vector": o.unembedding_lr * width_scale} if vectors else {})}

    def adamw(lr):
        scale = (optax.scale_by_adam if o.adam == "adamw" else optax.contrib.scale_by_adopt)
        return optax.chain(scale(b1=o.adam_b1, b2=o.adam_b2, eps=o.adam_eps),
                           optax.add_decayed_weights(o.weight_decay),
                           optax.scale_by_learning_rate(lambda step: lr * lrm(step)))

    # Newton-Schulz on whole matrices, spread over the island's devices (one all-to-all each way); under
    # parallel.strategy=dp too, where each device would otherwise repeat the whole iteration
    shard = "fsdp" if cfg.parallel.fsdp > 1 else None
    muon = optax.chain(
        scale_by_muon(momentum, o.ns_steps, tuple(o.ns_coeffs), jnp.dtype(o.ns_dtype), shard, cfg.parallel.fsdp),
        optax.scale_by_learning_rate(lambda step: lrs["muon"] * lrm(step)))
    groups = {"muon": muon, **{g: adamw(lr) for g, lr in lrs.items() if g != "muon"}}
    tx = optax.partition(groups, labels)
    schedules = {"lrm": lrm, "muon_momentum": momentum,
                 **{group: (lambda s, lr=lr: lr * lrm(s)) for group, lr in lrs.items()}}
    return tx, {"lrs": lrs, "width_scale": width_scale}, schedules
