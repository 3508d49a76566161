"""DiLoCo (arXiv 2311.08105): every H steps, an outer optax step on the mean pseudo-gradient.

delta = theta_ref - theta_island; mean over islands; theta_ref <- OuterOpt(theta_ref, mean delta);
every island restarts from the new theta_ref and keeps its inner optimizer state (never sent).
"""
import jax
import jax.numpy as jnp
import optax

from jaximus import UserError
from outer_optimizers.base import PeriodicScheme, island_mean, tree_norm


def make_outer_optimizer(outer_cfg) -> optax.GradientTransformation:
    """optax.sgd(lr, momentum, nesterov) by default; any optax optimizer by name otherwise."""
    name, lr = outer_cfg.optimizer, outer_cfg.lr
    if not isinstance(lr, (int, float)) or lr < 0:
        raise UserError(f"outer.lr={lr!r}: must be a non-negative number")
    if name == "sgd":
        if not 0 <= outer_cfg.momentum < 1:
            raise UserError(f"outer.momentum={outer_cfg.momentum}: must lie in [0, 1)")
        return optax.sgd(lr, momentum=outer_cfg.momentum or None, nesterov=outer_cfg.nesterov)
    factory = getattr(optax, name, None)
    if not callable(factory):
        raise UserError(f"outer.optimizer={name!r}: not an optax optimizer (e.g. sgd, adam, adamw, lion)")
    return factory(learning_rate=lr, **dict(outer_cfg.optimizer_kwargs))


def outer_step(outer_tx, island_params, outer: dict, weight):
    """The pseudo-gradient step shared by DiLoCo and DES-LOC's optional outer optimizer."""
    delta = jax.tree.map(jnp.subtract, outer["params"], island_params)
    mean_delta = island_mean(delta, weight)
    updates, opt_state = outer_tx.update(mean_delta, outer["opt_state"], outer["params"])
    new = optax.apply_updates(outer["params"], updates)
    return new, {"params": new, "opt_state": opt_state}, {"drift": tree_norm(delta), "pseudo_grad_norm": tree_norm(mean_delta)}


class DiLoCo(PeriodicScheme):
    name = "diloco"
    groups = ("params",)

    def __init__(self, outer_cfg, inner_tx):
        super().__init__(outer_cfg, inner_tx)
        self.outer_tx = make_outer_optimizer(outer_cfg)

    def init_outer(self, params):
        return {"params": params, "opt_state": self.outer_tx.init(params)}

    def sync(self, island, outer, groups, weight):
        params, outer, metrics = outer_step(self.outer_tx, island["params"], outer, weight)
        return {**island, "params": params}, outer, metrics

    def outer_lr(self):
        return self.cfg.lr
