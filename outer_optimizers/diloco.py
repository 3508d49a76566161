"""DiLoCo (arXiv 2311.08105): every H steps, an outer optax step on the mean pseudo-gradient.

delta = theta_outer - theta_island; mean over islands (through the compressor: outer.compress.*);
theta_outer <- OuterOpt(theta_outer, mean delta); every island restarts from the new theta_outer and keeps
its inner optimizer state (never sent). An error-feedback buffer, when compressing with one, is outer.buffers["error"].
"""
import jax
import jax.numpy as jnp
import optax

from jaximus import UserError
from jaximus.schema import Spec, flag, number, text
from jaximus.state import IslandState, OuterState
from outer_optimizers.base import PARAMS, PeriodicScheme, refuse_partial_in_step, tree_norm
from outer_optimizers.registry import Key, register

OUTER_OPTIMIZER_KEYS = {  # every scheme that applies an outer optimizer to a mean pseudo-gradient (2311.08105)
    "outer.optimizer": Key("sgd", text(), "the outer optax optimizer, by name; sgd takes momentum and nesterov"),
    "outer.lr": Key(0.7, number(0), "the outer learning rate (DiLoCo paper: 0.7)"),
    "outer.momentum": Key(0.9, number(0, 1, hi_open=True), "outer sgd's momentum (DiLoCo paper: 0.9)"),
    "outer.nesterov": Key(True, flag(), "outer sgd's Nesterov momentum (DiLoCo paper: yes)"),
    "outer.optimizer_kwargs": Key(None, Spec("dict", optional=True),
                                  "extra keyword arguments for a non-sgd outer optimizer, e.g. {'b1': 0.9}"),
}
EAGER_KEY = {"outer.eager": Key(False, flag(), "eager updates over a whole-round overlap (2502.12996)")}


def make_outer_optimizer(outer_cfg) -> optax.GradientTransformation:
    """optax.sgd(lr, momentum, nesterov) by default; any optax optimizer by name otherwise."""
    name, lr = outer_cfg.optimizer, outer_cfg.lr
    if name == "sgd":
        return optax.sgd(lr, momentum=outer_cfg.momentum or None, nesterov=outer_cfg.nesterov)
    factory = getattr(optax, name, None)
    if not callable(factory):
        raise UserError(f"outer.optimizer={name!r}: not an optax optimizer (e.g. sgd, adam, adamw, lion)")
    kwargs = outer_cfg.optimizer_kwargs
    kwargs = kwargs.to_dict() if hasattr(kwargs, "to_dict") else dict(kwargs or {})
    try:
        return factory(learning_rate=lr, **kwargs)
    except TypeError as e:
        raise UserError(f"outer.optimizer={name!r} with outer.optimizer_kwargs={kwargs}: {e}") from None


def with_error(compressor, params, outer: OuterState) -> OuterState:
    """outer.buffers["error"]: the error-feedback buffer, when the compressor keeps one."""
    error = compressor.init_error(params)
    return outer if error is None else OuterState(outer.params, outer.opt_state, {**outer.buffers, "error": error})


def outer_step(outer_tx, compressor, island_params, outer: OuterState, step, weight):
    """The pseudo-gradient step shared by DiLoCo and DES-LOC's optional outer optimizer."""
    delta = jax.tree.map(jnp.subtract, outer.params, island_params)
    mean_delta, error = compressor.mean(delta, outer.buffers.get("error"), weight, step)
    updates, opt_state = outer_tx.update(mean_delta, outer.opt_state, outer.params)
    new = optax.apply_updates(outer.params, updates)
    buffers = outer.buffers if error is None else {**outer.buffers, "error": error}
    metrics = {"drift": tree_norm(delta), "pseudo_grad_norm": tree_norm(mean_delta)}
    return new, OuterState(new, opt_state, buffers), metrics


@register
class DiLoCo(PeriodicScheme):
    name = "diloco"
    groups = (PARAMS,)
    keys = {**OUTER_OPTIMIZER_KEYS, **EAGER_KEY}
    compressible = True

    @classmethod
    def check(cls, cfg):
        super().check(cfg)
        refuse_partial_in_step(cfg, cfg.outer.eager, "use outer.eager=false")

    @classmethod
    def variant(cls, cfg):
        from outer_optimizers.streaming import EagerDiLoCo  # a streaming scheme of one fragment: it imports us

        return EagerDiLoCo if cfg.outer.eager else cls

    def __init__(self, outer_cfg, inner_tx, island, num_islands, compressor):
        super().__init__(outer_cfg, inner_tx, island, num_islands, compressor)
        self.outer_tx = make_outer_optimizer(outer_cfg)

    def init(self, params):
        return with_error(self.compressor, params, OuterState(params, self.outer_tx.init(params), {}))

    def sync(self, island, outer, step, groups, weight):
        params, outer, metrics = outer_step(self.outer_tx, self.compressor, island.params, outer, step, weight)
        return IslandState(params, island.opt_state), outer, metrics

    def outer_lr(self):
        return self.cfg.lr
