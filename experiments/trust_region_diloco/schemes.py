"""DiLoCo with a trust region on the outer step: before the outer optimizer sees the mean pseudo-gradient,
it is scaled down to a global norm of at most outer.trust_ratio x the outer parameters' global norm.

A scheme of our own, outside the library (docs/writing_a_scheme.md): jaximus imports an experiment's
schemes.py before its config.py, and @register makes the class known to outer.name with its keys.
"""
import jax
import jax.numpy as jnp
import optax

from jaximus import UserError
from jaximus.schema import number
from outer_optimizers import Key, register
from outer_optimizers.diloco import DiLoCo


def clip_to_trust_region(ratio: float) -> optax.GradientTransformation:
    """updates x min(1, ratio |params| / |updates|): an outer step never moves the model by more than
    `ratio` of its own norm, whatever one round of inner steps did."""
    def update(updates, state, params):
        limit = ratio * optax.tree.norm(params)
        scale = jnp.minimum(1.0, limit / jnp.maximum(optax.tree.norm(updates), jnp.finfo(jnp.float32).tiny))
        return jax.tree.map(lambda u: u * scale, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


@register
class TrustRegionDiLoCo(DiLoCo):
    name = "trust_region_diloco"
    keys = {"outer.trust_ratio": Key(0.5, number(0), "largest global norm of the mean pseudo-gradient, as a fraction "
                                                     "of the outer parameters' norm; a larger one is scaled down")}

    @classmethod
    def check(cls, cfg):
        super().check(cfg)  # DiLoCo's own checks (compression, dropout) still hold
        if cfg.outer.trust_ratio <= 0:
            raise UserError(f"outer.trust_ratio={cfg.outer.trust_ratio}: must be > 0 (a ratio of 0 never moves)")
        if cfg.outer.eager:
            raise UserError("outer.eager=true with outer.name=trust_region_diloco: eager updates are a variant of "
                            "plain DiLoCo; use outer.name=diloco")

    @classmethod
    def variant(cls, cfg):
        return cls  # not DiLoCo's: it would hand outer.eager to EagerDiLoCo, which knows nothing of the region

    def __init__(self, outer_cfg, inner_tx, island, num_islands, compressor):
        super().__init__(outer_cfg, inner_tx, island, num_islands, compressor)
        self.outer_tx = optax.chain(clip_to_trust_region(outer_cfg.trust_ratio), self.outer_tx)
