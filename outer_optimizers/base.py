"""The protocol every outer scheme implements, and the pieces schemes share.

    @register                                     # outer_optimizers/registry.py: picked by outer.name
    class Scheme:
        name: str
        keys: {"outer.x": Key(default, spec, meaning)}   # config keys it reads beyond the shared ones
        compressible: bool                        # feeds a mean pseudo-gradient to an outer step
        asynchronous: bool                        # plans from a clock of its own (make_clock: jaximus/asynchrony.py)
        check(cfg) (classmethod)                  # settings it cannot honour, one line each, before JAX starts
        variant(cfg) -> class (classmethod)       # the class that runs this config (DiLoCo's eager updates)
        groups: tuple[Group, ...]                 # what a sync can exchange; fixed at construction
        __init__(outer_cfg, inner_tx, island, num_islands, compressor)   # island: one island's IslandState (shapes)
        init(params) -> OuterState                # one island's copy of the outer state
        make_clock(cfg, progress) -> IslandClock  # who takes part in each step, and the simulated time
        plan(clock) -> Plan                       # the one schedule question: what this step does, what syncs after it
        grad_hook(grads) -> grads                 # (1) inside the inner step, on the gradients
        in_step(island, outer, step, events) -> (island, outer)   # (2) inside the inner step, after the update
        sync(island, outer, step, groups, weight) -> (island, outer, metrics)   # (3) the sync program
        ledger() -> {"step": {Event: bytes}, "sync": {Group: bytes}, "wire": {"step": ..., "sync": ...}}
        overlap_steps() -> float                  # inner steps of compute its communication hides behind
        global_params(state) -> params            # the model evaluation scores (leading R axis)

The schedule is data (jaximus/plan.py): before each inner step the loop hands the scheme a
Clock (the step about to run, the last step, which islands take it, which a sync would hear from) and the scheme
answers with a Plan, built by `clock.plan(events, groups)`: the Events its inner step does (say
{Event("issue", 1)}) and the Groups a sync after it exchanges. An asynchronous scheme's clock also
lists the exchanges due after the step (arrivals, pulls, in simulated-time order), and the scheme
answers with several syncs, `clock.plan(syncs=...)`, each with its own weights. Nothing else in the library decides
when a scheme talks; the ledger prices the same values, inspect compiles them, and the checkpoint
needs none of it (a plan is a function of the step). After the last step (`clock.last`) a scheme syncs
whatever is pending, so the run's final evaluation reflects all of its compute. An island that does not
take a step (islands.local_steps) keeps its state; one absent from a sync (faults.island_dropout) has
weight 0. Neither can sit out a collective inside the inner step, so a scheme that has one calls
refuse_partial_in_step from its check.

A scheme may talk across islands in exactly three places, always through jaximus.islands: in the
gradient (sync DP's mean), inside the compiled inner step on its own state (a collective issued at
step t and consumed at t + tau lets XLA overlap it with that step's compute), and in a sync program
that the loop runs when the plan has groups. Each distinct event set compiles its own inner step, so a
step carries exactly the collectives of its events, and `ledger()["step"]` gives the bytes of each
event that sends: the payload an island hands to the collectives, and under "wire" what it puts on the
link for the pattern compiled (a ring all-reduce sends 2 (R - 1) / R x its payload, an all-gather
(R - 1) x). A scheme that exchanges pseudo-gradients means them through its `compressor`
(jaximus.compress), never island_mean. Every function but `plan` runs per island (no leading R axis)
inside a shard_map manual over `replica`. Whatever a scheme keeps lives in its OuterState (global
params, outer optimizer state, buffers), so it is sharded, donated and checkpointed with the weights.
"""
import jax
import jax.numpy as jnp
import optax

from jaximus import UserError
from jaximus.clock import IslandClock
from jaximus.compress import Compressor
from jaximus.islands import island_mean, tree_bytes
from jaximus.plan import Clock, Group, Plan
from jaximus.state import IslandState, OuterState
from outer_optimizers.registry import SCHEMES, declared_keys, owners

PARAMS, MU, NU = Group("params"), Group("mu"), Group("nu")
FIRST_MOMENT_NAMES = ("mu", "momentum", "trace")  # ScaleByAdamState.mu, MuonState.momentum, TraceState.trace
SECOND_MOMENT_NAMES = ("nu",)


def _names(path) -> list:
    return [getattr(k, "name", getattr(k, "key", getattr(k, "idx", None))) for k in path]


def moment_role(path) -> str | None:
    """'mu' for first-moment buffers, 'nu' for second moments, found by field name in the optax state."""
    names = _names(path)
    if any(n in FIRST_MOMENT_NAMES for n in names):
        return "mu"
    if any(n in SECOND_MOMENT_NAMES for n in names):
        return "nu"
    return None


def map_role(fn, opt_state, role: str):
    """fn applied to the leaves of opt_state that hold the given moment role; others unchanged."""
    return jax.tree_util.tree_map_with_path(lambda p, x: fn(x) if moment_role(p) == role else x, opt_state)


def moment_bytes(opt_state) -> dict[str, int]:
    """Bytes of the first ("mu") and second ("nu") moment buffers of one island's optimizer state."""
    leaves = jax.tree_util.tree_flatten_with_path(opt_state)[0]
    return {role: sum(tree_bytes(x) for p, x in leaves if moment_role(p) == role) for role in ("mu", "nu")}


def reset_moments(opt_state, fresh):
    """Photon's reset: moment buffers start over, schedules do not.

    Moment buffers come from `fresh` (tx.init). An Adam-style state's count restarts with its moments,
    as PyTorch's does when its optimizer state is cleared (the count is Adam's bias correction); every
    other count (learning-rate schedules, Muon's momentum warmup) keeps the global step.
    """
    paths = [_names(p) for p, _ in jax.tree_util.tree_flatten_with_path(opt_state)[0]]
    bias_corrected = {tuple(n[:n.index("nu")]) for n in paths if "nu" in n}  # states that hold a second moment

    def pick(path, old, new):
        names = _names(path)
        restart = moment_role(path) or (names[-1] == "count" and tuple(names[:-1]) in bias_corrected)
        return new if restart else old

    return jax.tree_util.tree_map_with_path(pick, opt_state, fresh)


def tree_norm(tree):
    return optax.tree.norm(tree)


def refuse_partial_in_step(cfg, in_step: bool, fix: str) -> None:
    """Dropout and islands.local_steps leave an island out of a sync program; an in-step collective cannot."""
    if in_step and cfg.faults.island_dropout:
        raise UserError(f"faults.island_dropout with outer.name={cfg.outer.name}: an in-step sync cannot leave an "
                        f"island out yet; {fix}")
    if in_step and (cfg.islands.local_steps is not None or cfg.islands.dynamic_local_steps):
        raise UserError(f"islands.local_steps with outer.name={cfg.outer.name}: an island that idles cannot take part "
                        f"in a collective inside the inner step; {fix}")


def check_period(key: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError(f"outer.{key}={value!r}: must be a positive integer number of inner steps")
    return value


class Scheme:
    """Defaults: no outer optimizer, nothing in the inner step, no syncs; subclasses override what they do."""

    name = "base"
    groups: tuple[Group, ...] = ()  # what a sync can exchange: params, mu (first moments), nu (second moments)
    keys: dict = {}  # config keys this scheme reads beyond the shared ones: {"outer.x": registry.Key}
    compressible = False  # feeds a mean pseudo-gradient to an outer optimizer, so outer.compress.* applies
    asynchronous = False  # plans from its own clock (jaximus/asynchrony.py) rather than the lockstep one

    @classmethod
    def check(cls, cfg) -> None:
        """What this scheme cannot honour, as one line, before JAX starts; subclasses add their own."""
        fmt = cfg.outer.compress.format or "none"
        if fmt != "none" and not cls.compressible:
            raise UserError(f"outer.compress.format={fmt} with outer.name={cls.name}: compression applies to "
                            "pseudo-gradients fed to an outer optimizer; use "
                            f"{', '.join(n for n, s in SCHEMES.items() if s.compressible)}, or outer.compress.format=None")
        if cfg.outer.eager and "outer.eager" not in declared_keys(cls):
            raise UserError(f"outer.eager=true with outer.name={cls.name}: eager updates swap a share of the "
                            f"pseudo-gradient fed to an outer step; use {' or '.join(owners('outer.eager'))}")

    @classmethod
    def variant(cls, cfg) -> type:
        """The class that runs this config: a scheme may hand a setting to a variant of itself."""
        return cls

    def __init__(self, outer_cfg, inner_tx, island: IslandState, num_islands: int, compressor: Compressor):
        self.cfg, self.inner_tx, self.island, self.num_islands = outer_cfg, inner_tx, island, num_islands
        self.compressor = compressor

    def init(self, params) -> OuterState:
        return OuterState(params, (), {})

    def grad_hook(self, grads):
        return grads

    def make_clock(self, cfg, progress) -> IslandClock:
        """The clock the loop plans from: who takes part in each step, and the simulated time."""
        return IslandClock(cfg, self.ledger(), self.overlap_steps(), progress)

    def plan(self, clock: Clock) -> Plan:
        return clock.plan()

    def in_step(self, island: IslandState, outer: OuterState, step, events: frozenset[str]):
        return island, outer

    def sync(self, island: IslandState, outer: OuterState, step, groups: frozenset[str], weight):
        raise NotImplementedError

    def ledger(self) -> dict:
        """Bytes one island sends: by inner-step event, and per sync by group, as payload and wire bytes.
        Parameters go through the compressor; moment buffers are float32 all-reduces."""
        costs = {PARAMS: self.compressor.cost(self.island.params, self.num_islands),
                 **{Group(role): self.all_reduce(n) for role, n in moment_bytes(self.island.opt_state).items()}}
        return make_ledger({}, {g: costs[g] for g in self.groups})

    def all_reduce(self, payload: int) -> tuple[int, float]:
        """(payload, wire) of a ring all-reduce; one island sends nothing (no cross-island collective compiles)."""
        R = self.num_islands
        return (payload, 2 * (R - 1) / R * payload) if R > 1 else (0, 0.0)

    def overlap_steps(self) -> float:
        """For the network model: a sync program blocks the islands until its collective is done."""
        return 0.0

    def global_params(self, state):
        return state.outer.params

    def outer_lr(self) -> float | None:
        return None


class PeriodicScheme(Scheme):
    """Syncs all of its groups every outer.sync_every (H) inner steps, and after the last step."""

    def __init__(self, outer_cfg, inner_tx, island, num_islands, compressor):
        super().__init__(outer_cfg, inner_tx, island, num_islands, compressor)
        self.every = check_period("sync_every", outer_cfg.sync_every)

    def plan(self, clock):
        return clock.plan(groups=self.groups if clock.step % self.every == 0 or clock.last else ())


def moment_groups(name: str, opt_state) -> tuple[Group, ...]:
    """The moment roles this inner optimizer keeps; none is a start-up error for moment-syncing schemes."""
    leaves = jax.tree_util.tree_flatten_with_path(opt_state)[0]
    present = sorted({r for r in (moment_role(p) for p, _ in leaves) if r})
    if not present:
        raise UserError(f"outer.name={name}: syncs optimizer moment buffers but the inner optimizer keeps "
                        "none (plain SGD?); use an Adam- or momentum-based inner optimizer, or outer.name=diloco")
    return tuple(Group(role) for role in present)


def make_ledger(step: dict, sync: dict) -> dict:
    """The ledger() layout from {Event or Group: (payload, wire)}."""
    return {"step": {k: p for k, (p, _) in step.items()}, "sync": {k: p for k, (p, _) in sync.items()},
            "wire": {"step": {k: w for k, (_, w) in step.items()}, "sync": {k: w for k, (_, w) in sync.items()}}}


def average_groups(island: IslandState, outer: OuterState, groups: frozenset[str], weight):
    """Replace params and/or moment buffers by their mean over islands (Local SGD, Local Adam, DES-LOC)."""
    metrics = {}
    params, opt_state = island.params, island.opt_state
    if PARAMS in groups:
        metrics["drift"] = tree_norm(jax.tree.map(jnp.subtract, outer.params, params))
        params = island_mean(params, weight)
        metrics["pseudo_grad_norm"] = tree_norm(jax.tree.map(jnp.subtract, outer.params, params))
        outer = OuterState(params, outer.opt_state, outer.buffers)
    for role in ("mu", "nu"):
        if Group(role) in groups:
            opt_state = map_role(lambda x: island_mean(x, weight), opt_state, role)
    return IslandState(params, opt_state), outer, metrics
