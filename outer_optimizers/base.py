"""The small protocol every outer scheme implements, and the pieces they share.

A scheme's state per island is {"params": theta_ref, "opt_state": outer optimizer state}: the global
model as of the last sync (identical on every island, so no broadcast is ever needed) and what the
outer optimizer keeps. `sync` runs per island inside a shard_map manual over `replica`; it is the only
place a local-update scheme communicates across islands.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaximus import UserError
from jaximus.step import across_islands

FIRST_MOMENT_NAMES = ("mu", "momentum", "trace")  # ScaleByAdamState.mu, MuonState.momentum, TraceState.trace
SECOND_MOMENT_NAMES = ("nu",)


def add_outer_config(c) -> None:
    """outer.* defaults shared by every experiment (DiLoCo paper: outer Nesterov lr 0.7, momentum 0.9)."""
    c.outer.name = "sync"  # sync | diloco | local_sgd | local_adam | desloc
    c.outer.sync_every = 20  # H (DES-LOC's K_x): inner steps between syncs (DiLoCo paper: 500)
    c.outer.optimizer = "sgd"  # any optax optimizer taking learning_rate; sgd takes momentum and nesterov
    c.outer.lr = 0.7
    c.outer.momentum = 0.9
    c.outer.nesterov = True
    c.outer.optimizer_kwargs = {}  # extra keyword arguments for a non-sgd outer optimizer
    c.outer.reset_inner_opt = False  # local_sgd: re-initialize the inner optimizer after each round (Photon)
    c.outer.first_moment_every = lambda: 3 * c.outer.sync_every  # DES-LOC K_u = 3 K_x (2505.22549)
    c.outer.second_moment_every = lambda: 6 * c.outer.sync_every  # DES-LOC K_v = 6 K_x
    c.outer.desloc_outer_opt = False  # DES-LOC: apply the outer optimizer to the parameter sync
    c.faults.island_dropout = 0.0  # probability that an island misses a sync (torchft-style quorum), seeded


def sync_weights(seed: int, step: int, islands: int, dropout: float) -> np.ndarray | None:
    """Per-island weights of one sync's mean: 1/n for the n islands present, 0 for those that dropped out.

    Drawn from (seed, step), so a resumed run drops the same islands; None when every island dropped out.
    """
    present = np.random.default_rng([seed, step]).random(islands) >= dropout if dropout else np.ones(islands, bool)
    return present / present.sum() if present.any() else None


def moment_role(path) -> str | None:
    """'mu' for first-moment buffers, 'nu' for second moments, found by field name in the optax state."""
    names = [getattr(k, "name", getattr(k, "key", None)) for k in path]
    if any(n in FIRST_MOMENT_NAMES for n in names):
        return "mu"
    if any(n in SECOND_MOMENT_NAMES for n in names):
        return "nu"
    return None


def roles_present(opt_state) -> set[str]:
    leaves = jax.tree_util.tree_flatten_with_path(opt_state)[0]
    return {r for r in (moment_role(p) for p, _ in leaves) if r}


def map_role(fn, opt_state, role: str):
    """fn applied to the leaves of opt_state that hold the given moment role; others unchanged."""
    return jax.tree_util.tree_map_with_path(lambda p, x: fn(x) if moment_role(p) == role else x, opt_state)


def tree_bytes(tree) -> int:
    return sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def island_mean(tree, weight):
    """Weighted mean over islands: weight is 1/n for each of the n islands taking part in this sync, else 0
    (island dropout: an absent island is left out of the mean and re-joins from its result)."""
    return across_islands(jax.lax.psum, jax.tree.map(lambda x: x * weight.astype(x.dtype), tree))


def tree_norm(tree):
    return optax.tree.norm(tree)


def check_period(key: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError(f"outer.{key}={value!r}: must be a positive integer number of inner steps")
    return value


class Scheme:
    """Defaults for a scheme with no outer state and no syncs; subclasses override what they do."""

    name = "base"
    groups: tuple[str, ...] = ()  # what a sync can exchange: params, mu (first moments), nu (second moments)

    def __init__(self, outer_cfg, inner_tx):
        self.cfg, self.inner_tx = outer_cfg, inner_tx

    def check_inner_state(self, opt_state) -> None:
        """Called at start-up with one island's inner optimizer state; schemes that sync moments check it."""

    def require_moments(self, opt_state) -> tuple[str, ...]:
        """The moment roles this inner optimizer keeps; none is a start-up error for moment-syncing schemes."""
        present = roles_present(opt_state)
        if not present:
            raise UserError(f"outer.name={self.name}: syncs optimizer moment buffers but the inner optimizer keeps "
                            "none (plain SGD?); use an Adam- or momentum-based inner optimizer, or outer.name=diloco")
        return tuple(sorted(present))

    def grad_hook(self, grads):
        """Inside the inner step; only sync DP communicates here."""
        return grads

    def due(self, done: int) -> frozenset[str]:
        """Groups synced after inner step number `done` (1-based); empty: no sync."""
        return frozenset()

    def init_outer(self, params) -> dict:
        return {"params": params, "opt_state": ()}

    def sync(self, island: dict, outer: dict, groups: frozenset[str], weight) -> tuple[dict, dict, dict]:
        raise NotImplementedError

    def ledger(self, island: dict, groups: frozenset[str]) -> dict[str, int]:
        """Bytes one island contributes per sync, by group, before the all-reduce factor.

        A ring all-reduce over R islands moves about 2 (R - 1) / R of this payload per island each way.
        """
        sizes = {"params": tree_bytes(island["params"])}
        for role in ("mu", "nu"):
            leaves = jax.tree_util.tree_flatten_with_path(island["opt_state"])[0]
            sizes[role] = sum(x.size * jnp.dtype(x.dtype).itemsize for p, x in leaves if moment_role(p) == role)
        return {g: sizes[g] for g in sorted(groups)}

    def step_ledger(self, island: dict) -> dict[str, int]:
        """Bytes one island sends inside every inner step (sync DP's gradients); empty for local schemes."""
        return {}

    def outer_lr(self) -> float | None:
        return None


class PeriodicScheme(Scheme):
    """Syncs all of its groups every outer.sync_every (H) inner steps."""

    def __init__(self, outer_cfg, inner_tx):
        super().__init__(outer_cfg, inner_tx)
        self.every = check_period("sync_every", outer_cfg.sync_every)

    def due(self, done):
        return frozenset(self.groups) if done % self.every == 0 else frozenset()


def average_groups(island: dict, outer: dict, groups: frozenset[str], weight):
    """Replace params and/or moment buffers by their mean over islands (Local SGD, Local Adam, DES-LOC)."""
    metrics = {}
    params, opt_state = island["params"], island["opt_state"]
    if "params" in groups:
        metrics["drift"] = tree_norm(jax.tree.map(jnp.subtract, outer["params"], params))
        params = island_mean(params, weight)
        metrics["pseudo_grad_norm"] = tree_norm(jax.tree.map(jnp.subtract, outer["params"], params))
        outer = {**outer, "params": params}
    for role in ("mu", "nu"):
        if role in groups:
            opt_state = map_role(lambda x: island_mean(x, weight), opt_state, role)
    return {"params": params, "opt_state": opt_state}, outer, metrics
