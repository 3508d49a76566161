"""The typed training state (a pytree) and the host-side progress that is checkpointed with it.

Every leaf of TrainState has a leading replica axis R and is born sharded P("replica", <fsdp spec>):
each island keeps its own copy of everything, outer state included, so no broadcast is ever needed.
"""
from dataclasses import dataclass, field, fields

import jax
import jax.numpy as jnp

from jaximus.mesh import island_shardings


def _pytree(cls):
    """A frozen dataclass registered as a pytree whose fields are all children."""
    cls = dataclass(frozen=True)(cls)
    return jax.tree_util.register_dataclass(cls, data_fields=[f.name for f in fields(cls)], meta_fields=[])


@_pytree
class IslandState:
    params: dict  # this island's weights
    opt_state: object  # the inner optax state


@_pytree
class OuterState:
    """What a scheme keeps across islands' syncs."""
    params: object  # the global model theta_outer; None for a scheme whose islands never differ (sync DP)
    opt_state: object  # the outer optimizer's state; () when there is none
    buffers: dict  # in-flight payloads, error feedback, previous deltas: whatever the scheme carries


@_pytree
class TrainState:
    islands: IslandState
    outer: OuterState
    step: jax.Array  # inner steps taken, one copy per island (a scheme may read it inside a program)

    def replace(self, **changes) -> "TrainState":
        return type(self)(**{**{f.name: getattr(self, f.name) for f in fields(self)}, **changes})


def make_init(init_weights, tx, init_outer, R: int):
    """key -> TrainState: every island starts from the same weights (one seed), broadcast to R copies."""
    def init(key):
        params = init_weights(key)
        one = TrainState(IslandState(params, tx.init(params)), init_outer(params), jnp.zeros((), jnp.int32))
        return jax.tree.map(lambda x: jnp.broadcast_to(x[None], (R, *x.shape)), one)

    return init


def shard_state(init, key, mesh, strategy: str):
    """(abstract TrainState carrying its shardings, shardings, allocate) without allocating anything yet."""
    tree = jax.eval_shape(init, key)
    shardings = island_shardings(tree, mesh, strategy)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
    return abstract, shardings, lambda: jax.jit(init, out_shardings=shardings)(key)


@dataclass
class Progress:
    """Host-side progress, saved in every checkpoint's metadata next to the TrainState."""
    step: int = 0
    positions: list | None = None  # every island's loader position: its batch rows' positions (jaximus/data/loader.py)
    island_bytes: list[int] = field(default_factory=list)  # cumulative cross-island payload each island sent
    island_wire: list[float] = field(default_factory=list)  # and the bytes it put on the link for it
    syncs: int = 0  # communication events so far
    evals: dict[int, dict] = field(default_factory=dict)  # step -> {"val/loss", "val/bpb"}
    clock: dict = field(default_factory=dict)  # each island's simulated time and steps (jaximus/clock.py)

    def to_meta(self) -> dict:
        return {"step": self.step, "positions": self.positions, "island_bytes": self.island_bytes,
                "island_wire": self.island_wire, "syncs": self.syncs, "evals": {str(k): v for k, v in self.evals.items()},
                "clock": self.clock}

    @classmethod
    def from_meta(cls, meta: dict) -> "Progress":
        return cls(meta["step"], meta["positions"], list(meta["island_bytes"]), list(meta["island_wire"]),
                   meta["syncs"], {int(k): v for k, v in meta["evals"].items()}, meta.get("clock", {}))  # older runs: from 0
