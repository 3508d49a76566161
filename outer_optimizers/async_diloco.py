"""Asynchronous DiLoCo (Async Local-SGD, arXiv 2401.09135) and quorum DiLoCo (Decoupled DiLoCo, 2604.21428).

Each island keeps the outer model it pulled as its anchor (outer.buffers["anchor"]) and pushes
delta_r = anchor_r - theta_r when its round of H_r steps ends (islands.local_steps, or
islands.dynamic_local_steps' floor(H v_r / max v)). async_diloco applies every arrival as its own outer
update, in simulated-time order: plain outer sgd (Nesterov per arrival), or Delayed Nesterov
(outer.optimizer='delayed_nesterov'), optionally weighting a stale arrival by 1 / sqrt(1 + staleness).
quorum_diloco waits for outer.quorum islands (or the grace window) and applies their token-weighted mean
in one update. Islands that arrived pull the new outer model together when the window closes and keep
their inner optimizer state. When, and with whom, is the clock's (jaximus/asynchrony.py).

On the SPMD program an arrival is a sync whose weights are zero except for the arriving islands: every
island computes its delta, the compressor means them with those weights (so only the arrivals count,
compressed as they would be sent), and every island's copy of the outer state takes the same step.
A pull copies the outer model into the pulling islands' parameters and anchors; nothing crosses islands.
"""
import math

import jax
import jax.numpy as jnp
import optax

from jaximus import UserError
from jaximus.asynchrony import AsyncClock
from jaximus.optim.delayed_nesterov import delayed_nesterov
from jaximus.plan import Group, Sync
from jaximus.schema import Spec, number, text
from jaximus.state import IslandState, OuterState
from outer_optimizers.base import Scheme, make_ledger, tree_norm
from outer_optimizers.diloco import OUTER_OPTIMIZER_KEYS, make_outer_optimizer, with_error
from outer_optimizers.registry import Key, register

ARRIVE, PULL = Group("arrive"), Group("pull")

ASYNC_KEYS = {
    "outer.grace_s": Key(0.0, number(0), "simulated seconds after a window's first arrival that arriving islands wait "
                         "for each other before pulling (0: each pulls at once)"),
    "outer.staleness": Key("none", text("none", "sqrt"), "an arrival's weight: none, or sqrt: 1 / sqrt(1 + staleness), "
                           "staleness = outer updates applied since the island pulled"),
    "outer.dn_buffer": Key(None, Spec("int", lo=1, optional=True), "Delayed Nesterov's N: the outer momentum moves "
                           "every N arrivals on their mean (2401.09135; None: the number of islands)"),
    "outer.dn_c": Key(0.0, number(0), "Delayed Nesterov's c: the share of momentum applied between milestones"),
}


@register
class AsyncDiLoCo(Scheme):
    name = "async_diloco"
    groups = (ARRIVE, PULL)
    keys = {**OUTER_OPTIMIZER_KEYS, **ASYNC_KEYS}
    compressible = True
    asynchronous = True
    merged = False  # each arrival is its own outer update

    @classmethod
    def check(cls, cfg):
        super().check(cfg)
        if cfg.faults.island_dropout:
            raise UserError(f"faults.island_dropout with outer.name={cls.name}: an asynchronous island is never dropped; "
                            "model slow or stalling islands with islands.step_s and islands.straggler_*")
        if cfg.outer.optimizer == "delayed_nesterov" and not cfg.outer.momentum:
            raise UserError("outer.optimizer='delayed_nesterov' with outer.momentum=0: Delayed Nesterov delays a "
                            "momentum; give outer.momentum > 0 (2401.09135: 0.9), or outer.optimizer='sgd'")

    def __init__(self, outer_cfg, inner_tx, island, num_islands, compressor):
        super().__init__(outer_cfg, inner_tx, island, num_islands, compressor)
        if outer_cfg.optimizer == "delayed_nesterov":
            N = outer_cfg.dn_buffer or num_islands
            self.outer_tx = delayed_nesterov(outer_cfg.lr, outer_cfg.momentum, N, outer_cfg.dn_c)
        else:
            self.outer_tx = make_outer_optimizer(outer_cfg)

    def make_clock(self, cfg, progress):
        return AsyncClock(cfg, self.ledger(), self.overlap_steps(), progress, cfg.outer.grace_s,
                          self.quorum(cfg), self.merged)

    def quorum(self, cfg) -> int | None:
        return None  # the window closes when its time is up or every island waits

    def init(self, params):
        return with_error(self.compressor, params, OuterState(params, self.outer_tx.init(params), {"anchor": params}))

    def arrival_weights(self, exchange) -> list[float]:
        """Each arriving island's weight in the update: one each (staleness-discounted with outer.staleness=sqrt)."""
        return [self.discount(s) for s in exchange.staleness]

    def discount(self, staleness: int) -> float:
        return 1 / math.sqrt(1 + staleness) if self.cfg.staleness == "sqrt" else 1.0

    def plan(self, clock):
        syncs = []
        for ex in clock.exchanges:
            weights = [0.0] * self.num_islands
            for r, w in zip(ex.islands, [1.0] * len(ex.islands) if ex.kind == "pull" else self.arrival_weights(ex)):
                weights[r] = w
            syncs.append(Sync(frozenset({PULL if ex.kind == "pull" else ARRIVE}), tuple(weights), ex))
        return clock.plan(syncs=syncs)

    def sync(self, island, outer, step, groups, weight):
        anchor = outer.buffers["anchor"]
        if PULL in groups:  # the pulling islands take the outer model as their parameters and anchor
            take = weight > 0
            params, anchor = (jax.tree.map(lambda o, x: jnp.where(take, o, x), outer.params, t)
                              for t in (island.params, anchor))
            return IslandState(params, island.opt_state), OuterState(outer.params, outer.opt_state,
                                                                     {**outer.buffers, "anchor": anchor}), {}
        delta = jax.tree.map(jnp.subtract, anchor, island.params)  # against the model the island pulled
        update, error = self.compressor.mean(delta, outer.buffers.get("error"), weight, step)
        updates, opt_state = self.outer_tx.update(update, outer.opt_state, outer.params)
        params = optax.apply_updates(outer.params, updates)
        buffers = outer.buffers if error is None else {**outer.buffers, "error": error}
        return island, OuterState(params, opt_state, buffers), {"drift": tree_norm(delta),
                                                                "pseudo_grad_norm": tree_norm(update)}

    def ledger(self):
        return make_ledger({}, {ARRIVE: self.compressor.cost(self.island.params, self.num_islands), PULL: (0, 0.0)})

    def outer_lr(self):
        return self.cfg.lr


@register
class QuorumDiLoCo(AsyncDiLoCo):
    name = "quorum_diloco"
    keys = {"outer.quorum": Key(None, Spec("int", lo=1, optional=True), "K: a window closes once K islands have "
                                "arrived, or its grace is up (None: all of them); late islands merge into the next")}
    merged = True  # a window's arrivals merge in one update

    @classmethod
    def check(cls, cfg):
        super().check(cfg)
        K, R = cfg.outer.quorum, cfg.parallel.replica
        if K is not None and K > R:
            raise UserError(f"outer.quorum={K}: more than the {R} islands (parallel.replica={R}); give 1 to {R}")

    def quorum(self, cfg):
        return cfg.outer.quorum

    def arrival_weights(self, exchange):
        """Token-weighted (steps in each island's round), times the staleness discount, summing to one."""
        raw = [h * self.discount(s) for h, s in zip(exchange.steps, exchange.staleness)]
        return [w / sum(raw) for w in raw]
