"""Streaming DiLoCo (arXiv 2501.18512): DiLoCo on P fragments of the parameters, staggered, overlapped.

Fragment p syncs every H steps at offset p H / P, so one fragment syncs every H / P steps and the peak
bytes per sync fall by P. With overlap tau >= 1 its pseudo-gradient is taken after step t, its
cross-island mean is issued inside the compiled program of step t + 1 (beside that step's compute) and
consumed at the end of step t + tau: an outer Nesterov step on that fragment, then the merge
theta_island <- alpha theta_island + (1 - alpha) theta_outer. tau = 0 syncs at once in a sync program.
Fragments' means go through the compressor (the paper's FP4 is outer.compress.format=fp4_e3m0 or
fp4_e2m1), with one error-feedback buffer per fragment when it keeps one.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaximus import UserError
from jaximus.plan import Event, Group
from jaximus.schema import integer, number, text
from jaximus.state import IslandState, OuterState
from outer_optimizers.base import PeriodicScheme, make_ledger, refuse_partial_in_step, tree_norm
from outer_optimizers.diloco import EAGER_KEY, OUTER_OPTIMIZER_KEYS, make_outer_optimizer
from outer_optimizers.registry import Key, register

LAYOUTS = ("strided", "sequential")


def _is_layered(path) -> bool:
    """Leaves under "blocks" are stacked on a leading layer axis (the nanochat model contract)."""
    return any(getattr(k, "key", None) == "blocks" for k in path)


def assign_fragments(params, fragments: int, layout: str) -> list:
    """Per leaf (in tree order): an array of fragment ids, one per layer, or one id for an unstacked leaf.

    Layer l goes to fragment l % P (strided, the paper's better compute profile) or to its contiguous
    block (sequential). The embedding goes with layer 0, which reads it, and every other unstacked leaf
    (the head) with the last layer, which feeds it: each fragment stays a piece of the network's flow.
    """
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    depths = {leaf.shape[0] for path, leaf in flat if _is_layered(path)}
    if len(depths) != 1:
        raise UserError(f"outer.name=streaming_diloco: needs the model's blocks stacked on one layer axis (found "
                        f"depths {sorted(depths)})")
    (L,) = depths
    by_layer = (np.arange(L) % fragments if layout == "strided"
                else np.concatenate([np.full(len(c), p) for p, c in enumerate(np.array_split(np.arange(L), fragments))]))
    out = []
    for path, _ in flat:
        if _is_layered(path):
            out.append(by_layer)
        else:
            out.append(by_layer[0] if getattr(path[-1], "key", None) == "wte" else by_layer[-1])
    return out


@register
class StreamingDiLoCo(PeriodicScheme):
    name = "streaming_diloco"
    keys = {**OUTER_OPTIMIZER_KEYS, **EAGER_KEY,
            "outer.fragments": Key(2, integer(1), "P: fragments of the parameters, each synced every H steps at "
                                                  "offset p H / P (2501.18512: 3-layer fragments)"),
            "outer.fragment_layout": Key("strided", text(*LAYOUTS), "strided: fragment p holds layers p, p + P, ... "
                                                                     "(the paper's); sequential: contiguous blocks"),
            "outer.overlap_steps": Key(1, integer(0), "tau: a fragment's mean lands tau steps after it was taken "
                                                      "(the paper's recipe: 1; H: the whole round)"),
            "outer.mix_alpha": Key(0.0, number(0, 1), "alpha of the merge theta_island <- alpha theta_island + "
                                                      "(1 - alpha) theta_outer (torchft, MaxText: 0)")}
    compressible = True

    @classmethod
    def check(cls, cfg):
        super().check(cfg)
        refuse_partial_in_step(cfg, bool(cfg.outer.eager or cfg.outer.overlap_steps),
                               "use outer.overlap_steps=0 and outer.eager=false")

    def __init__(self, outer_cfg, inner_tx, island, num_islands, compressor):
        super().__init__(outer_cfg, inner_tx, island, num_islands, compressor)
        P, tau = self.settings(outer_cfg)
        H = self.every
        if outer_cfg.fragment_layout not in LAYOUTS:
            raise UserError(f"outer.fragment_layout={outer_cfg.fragment_layout!r}: choose one of {', '.join(LAYOUTS)}")
        if H % P:
            raise UserError(f"outer.sync_every={H} is not divisible by outer.fragments={P}: fragment p syncs at "
                            f"offset p x H / P; choose H a multiple of {P}")
        if not (tau < H // P or tau == H):
            raise UserError(f"outer.overlap_steps={tau}: must be below outer.sync_every / outer.fragments = {H // P} "
                            f"(a fragment lands before the next is taken), or {H} to overlap the whole round")
        if outer_cfg.eager and tau != H:
            raise UserError(f"outer.eager=true needs the whole round overlapped (outer.overlap_steps={H}), as in "
                            "2502.12996")
        self.P, self.tau, self.alpha, self.eager = P, tau, outer_cfg.mix_alpha, outer_cfg.eager
        self.whole_round = tau == H  # each fragment's mean lands at its next take: the naive delayed or eager rule
        self.treedef = jax.tree.structure(island.params)
        self.owner = assign_fragments(island.params, P, outer_cfg.fragment_layout)
        empty = [p for p in range(P) if not any(np.any(np.atleast_1d(o) == p) for o in self.owner)]
        if empty:
            raise UserError(f"outer.fragments={P}: fragment {empty[0]} holds no parameters (the model has "
                            f"{len(self.owner[0]) if np.ndim(self.owner[0]) else 1} layers); use fewer fragments")
        self.groups = tuple(Group("fragment", p) for p in range(P))
        self.outer_tx = make_outer_optimizer(outer_cfg)

    def settings(self, outer_cfg) -> tuple[int, int]:
        """(P, tau) from the config."""
        return outer_cfg.fragments, outer_cfg.overlap_steps

    # --- fragments: a fragment is a tuple of slices, one per leaf it holds part of -------------------------
    def _parts(self, p):
        """(leaf index, layer indices or None for the whole leaf) of fragment p's slices."""
        parts = []
        for i, owner in enumerate(self.owner):
            if np.ndim(owner):
                layers = np.flatnonzero(owner == p)
                if len(layers):
                    parts.append((i, layers))
            elif owner == p:
                parts.append((i, None))
        return parts

    def take(self, params, p) -> tuple:
        leaves = jax.tree.leaves(params)
        return tuple(leaves[i] if layers is None else leaves[i][layers] for i, layers in self._parts(p))

    def put(self, params, p, values):
        leaves = list(jax.tree.leaves(params))
        for (i, layers), v in zip(self._parts(p), values):
            leaves[i] = v if layers is None else leaves[i].at[layers].set(v)
        return jax.tree.unflatten(self.treedef, leaves)

    # --- schedule -------------------------------------------------------------------------------------------
    def fragment_due(self, done: int) -> int | None:
        """The fragment whose pseudo-gradient is taken after step `done` (offset p H / P), if any."""
        if done <= 0:
            return None
        phase, stride = done % self.every, self.every // self.P
        return phase // stride if phase % stride == 0 else None

    def _last_take(self, p: int, done: int) -> int | None:
        offset = p * self.every // self.P or self.every
        return None if done < offset else offset + (done - offset) // self.every * self.every

    def plan(self, clock):
        return clock.plan(events=self.events_at(clock.step), groups=self.groups_at(clock.step, clock.last))

    def groups_at(self, done: int, last: bool) -> set[Group]:
        """tau = 0: the fragment taken now syncs at once. After the last step every payload still in flight
        lands (issued first if it was not yet), then every fragment not taken at this step syncs its remaining
        local progress: each inner step reaches the evaluated model exactly once."""
        taken = self.fragment_due(done)
        groups = {Group("fragment", taken)} if self.tau == 0 and taken is not None else set()
        if not last:
            return groups
        for p in range(self.P):
            t = self._last_take(p, done)
            if self.tau and t is not None and (self.whole_round or done < t + self.tau):
                groups.add(Group("flush" if t == done else "land", p))  # flush: not issued yet
            if t != done:
                groups.add(Group("fragment", p))
        return groups

    def events_at(self, done: int) -> set[Event]:
        if self.tau == 0:
            return set()
        taken, issued = self.fragment_due(done), self.fragment_due(done - 1)
        applied = taken if self.whole_round else self.fragment_due(done - self.tau)
        return {Event(kind, p) for kind, p in (("take", taken), ("issue", issued), ("apply", applied)) if p is not None}

    # --- state and the three places -----------------------------------------------------------------------
    def init(self, params):
        opt = tuple(self.outer_tx.init(self.take(params, p)) for p in range(self.P))
        zeros = tuple(jax.tree.map(jnp.zeros_like, self.take(params, p)) for p in range(self.P))
        buffers = {"payload": zeros, **({"previous": zeros} if self.eager else {})} if self.tau else {}
        if self.compressor.error_feedback:
            buffers["error"] = zeros
        return OuterState(params, opt, buffers)

    def _apply(self, island, outer, p, mean_delta):
        """Outer step on fragment p's slice of theta_outer, then the alpha merge into the island."""
        theta = self.take(outer.params, p)
        updates, opt_p = self.outer_tx.update(mean_delta, outer.opt_state[p], theta)
        new = optax.apply_updates(theta, updates)
        merged = jax.tree.map(lambda local, o: self.alpha * local + (1 - self.alpha) * o, self.take(island.params, p), new)
        opt = tuple(opt_p if q == p else s for q, s in enumerate(outer.opt_state))
        return (IslandState(self.put(island.params, p, merged), island.opt_state),
                OuterState(self.put(outer.params, p, new), opt, outer.buffers))

    def _delta(self, island, outer, p):
        return jax.tree.map(jnp.subtract, self.take(outer.params, p), self.take(island.params, p))

    def _buffer(self, outer, name, p, value):
        values = tuple(value if q == p else v for q, v in enumerate(outer.buffers[name]))
        return OuterState(outer.params, outer.opt_state, {**outer.buffers, name: values})

    def _mean(self, outer, p, delta, step, weight=None):
        """(fragment p's compressed mean over islands, outer with its error buffer updated)."""
        error = outer.buffers["error"][p] if self.compressor.error_feedback else None
        mean, error = self.compressor.mean(delta, error, weight, step, salt=p)
        return mean, outer if error is None else self._buffer(outer, "error", p, error)

    def in_step(self, island, outer, step, events):
        """Issue, then apply, then take: tau = 1 issues and applies one fragment in one step. With the whole
        round overlapped, a take first applies the mean that arrived during the round (the naive delayed
        rule), or with eager updates that mean with this island's stale share swapped for its fresh one:
        mean^(t-1) + (delta_m^(t) - delta_m^(t-1)) / M (2502.12996)."""
        for p in range(self.P):
            if Event("issue", p) in events:
                mean, outer = self._mean(outer, p, outer.buffers["payload"][p], step)
                outer = self._buffer(outer, "payload", p, mean)
        fresh = {p: self._delta(island, outer, p) for p in range(self.P) if Event("take", p) in events}
        for p in range(self.P):
            if Event("apply", p) in events:
                mean = outer.buffers["payload"][p]
                if self.eager:
                    stale = outer.buffers["previous"][p]
                    mean = jax.tree.map(lambda m, f, s: m + (f - s) / self.num_islands, mean, fresh[p], stale)
                island, outer = self._apply(island, outer, p, mean)
        for p, delta in fresh.items():  # another fragment's apply leaves fragment p's slices alone
            outer = self._buffer(outer, "payload", p, delta)
            if self.eager:
                outer = self._buffer(outer, "previous", p, delta)
        return island, outer

    def sync(self, island, outer, step, groups, weight):
        fresh = {p: self._delta(island, outer, p) for p in range(self.P) if Group("fragment", p) in groups}
        for p in range(self.P):
            if Group("flush", p) in groups or Group("land", p) in groups:
                mean = outer.buffers["payload"][p]
                if Group("flush", p) in groups:
                    mean, outer = self._mean(outer, p, mean, step)
                if self.eager:  # this island's own share of it was applied eagerly, at its take (landed or not)
                    mean = jax.tree.map(lambda m, own: m - own / self.num_islands, mean, outer.buffers["previous"][p])
                island, outer = self._apply(island, outer, p, mean)
        means = {}
        for p, delta in fresh.items():
            means[p], outer = self._mean(outer, p, delta, step, weight)
            island, outer = self._apply(island, outer, p, means[p])
        return island, outer, {"drift": tree_norm(list(fresh.values())), "pseudo_grad_norm": tree_norm(list(means.values()))}

    def ledger(self):
        costs = [self.compressor.cost(jax.eval_shape(lambda x: self.take(x, p), self.island.params), self.num_islands)
                 for p in range(self.P)]
        return make_ledger({Event("issue", p): c for p, c in enumerate(costs)},
                           {**{Group("fragment", p): c for p, c in enumerate(costs)},
                            **{Group("flush", p): c for p, c in enumerate(costs)},
                            **{Group("land", p): (0, 0.0) for p in range(self.P)}})

    def overlap_steps(self):
        return float(self.tau)  # a fragment's mean has tau steps of compute to arrive in

    def outer_lr(self):
        return self.cfg.lr


class EagerDiLoCo(StreamingDiLoCo):
    """outer.name=diloco with outer.eager=true: one fragment, its mean overlapping the whole next round."""
    name = "diloco"

    def settings(self, outer_cfg):
        return 1, self.every
