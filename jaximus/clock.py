"""The clock a scheme plans from: who takes part in each step and sync, and a simulated wall-clock.

Participation is lockstep: every island takes every step. With islands.local_steps (torchft's
per-replica sync_every for slow replicas, #233) island r takes only the first local_steps[r] steps of
each outer.sync_every-step round and idles until the sync. With island dropout (faults.island_dropout,
torchft-style quorum) each island misses a sync with that probability, drawn from (seed, step), so a
resumed run drops the same islands.

Simulated time (islands.*): island r's inner step takes islands.step_s[r] seconds, times a seeded
lognormal jitter, times islands.straggler_slowdown with probability islands.straggler_prob (or a
replayed file of measured times). Islands run on their own between communications; a collective
waits for the slowest island taking part, then costs its wire bytes (the scheme's ledger) over the
link: 8 bytes / bandwidth + 2 (R - 1) x latency (a ring's messages). An in-step collective hides
behind overlap_steps() steps of the slowest island's compute (sync DP's mean behind the backward pass,
Streaming DiLoCo's fragment behind tau steps); a sync program hides behind nothing. Times are integer
nanoseconds, so a resumed run continues the same sums exactly.
"""
import json
import math

import numpy as np

from jaximus import UserError
from jaximus.plan import Clock, Plan
from jaximus.schema import Spec, flag, number, text

NS = 10**9
SPEED_SALT = 0x5BEED  # keeps the speed draws apart from the dropout draws of the same (seed, step)

ISLANDS_SCHEMA = {
    "islands.step_s": Spec("numbers", meaning="simulated seconds per inner step: one value for every island, or one "
                           "per island, e.g. (0.58, 0.75, 1.51, 3.33) (Async Local-SGD's notebook)"),
    "islands.jitter": number(0, meaning="sigma of a lognormal factor (median 1) on every step's time, seeded per "
                             "island and step"),
    "islands.straggler_prob": number(0, 1, meaning="probability that an island's step is a straggler's"),
    "islands.straggler_slowdown": number(1, meaning="how many times longer a straggler's step takes"),
    "islands.step_times": text(optional=True, meaning="a .json file of measured seconds, [step][island], replayed "
                               "cyclically instead of the speed model"),
    "islands.local_steps": Spec("numbers", optional=True, meaning="inner steps each island takes per outer.sync_every "
                                "round, e.g. (10, 10, 5, 2): a slow island does fewer and idles until the sync"),
    "islands.dynamic_local_steps": flag(meaning="dynamic local updates (Async Local-SGD, 2401.09135): local_steps "
                                        "from the speeds, floor(H x fastest step_s / step_s[r]), so rounds end together"),
    "islands.merge": text("equal", "tokens", meaning="island weights in a sync: equal (torchft, Delayed Nesterov), or "
                          "tokens: in proportion to the steps each island takes per round"),
    "islands.gbps": number(0, meaning="simulated link between islands, Gbit/s per island each way"),
    "islands.latency_ms": number(0, meaning="simulated latency per message on that link"),
}


def add_islands_config(c) -> None:
    c.islands.step_s = (1.0,)  # every island equal: simulated time counts steps, plus what the link costs
    c.islands.jitter = 0.0
    c.islands.straggler_prob = 0.0
    c.islands.straggler_slowdown = 4.0  # an illustrative straggler; set it from your cluster's step times
    c.islands.step_times = None
    c.islands.local_steps = None  # every island takes every step
    c.islands.dynamic_local_steps = False
    c.islands.merge = "equal"  # DiLoCo's plain mean over the islands present
    c.islands.gbps = 1.0  # analysis.compare's default link
    c.islands.latency_ms = 10.0


def present_islands(seed: int, step: int, islands: int, dropout: float) -> tuple[bool, ...]:
    """Which islands attend a sync after inner step `step`: each misses it with probability `dropout`."""
    if not dropout:
        return (True,) * islands
    return tuple(bool(x) for x in np.random.default_rng([seed, step]).random(islands) >= dropout)


def read_step_times(path: str, islands: int) -> np.ndarray:
    """islands.step_times: a JSON list of rows, one per step, each with one positive number per island."""
    try:
        with open(path) as f:
            rows = json.load(f)
    except OSError as e:
        raise UserError(f"islands.step_times={path}: {e.strerror}; give a .json file of [step][island] seconds") from None
    except json.JSONDecodeError as e:
        raise UserError(f"islands.step_times={path}: not valid JSON ({e.msg}); give [[s, ...], ...]") from None
    table = np.asarray(rows, dtype=object)
    ok = table.ndim == 2 and table.shape[0] > 0 and table.shape[1] == islands and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 for x in table.ravel())
    if not ok:
        raise UserError(f"islands.step_times={path}: needs a non-empty list of rows of {islands} positive numbers "
                        f"(one per island: parallel.replica={islands})")
    return table.astype(float)


def check_islands(cfg) -> None:
    """Relations between islands.* keys and the mesh, before JAX starts (types and ranges: ISLANDS_SCHEMA)."""
    R, s = cfg.parallel.replica, cfg.islands
    if len(s.step_s) not in (1, R) or not all(x > 0 for x in s.step_s):
        raise UserError(f"islands.step_s={tuple(s.step_s)}: give one positive number of seconds, or {R} (one per "
                        f"island: parallel.replica={R})")
    if not s.gbps > 0:
        raise UserError(f"islands.gbps={s.gbps}: must be > 0 Gbit/s")
    if s.step_times:
        read_step_times(s.step_times, R)
    if s.local_steps is not None:
        H = cfg.outer.sync_every
        if len(s.local_steps) != R or not all(isinstance(h, int) and 1 <= h <= H for h in s.local_steps):
            raise UserError(f"islands.local_steps={tuple(s.local_steps)}: give {R} whole numbers of inner steps (one per "
                            f"island: parallel.replica={R}), each from 1 to outer.sync_every={H}")
        if s.dynamic_local_steps:
            raise UserError(f"islands.local_steps={tuple(s.local_steps)} with islands.dynamic_local_steps=true: choose "
                            "one (dynamic local updates derive local_steps from islands.step_s)")


def local_steps(cfg) -> tuple[int, ...] | None:
    """Inner steps each island takes per round: islands.local_steps, or DyLU's from the mean speeds, else None."""
    s, H = cfg.islands, cfg.outer.sync_every
    if not s.dynamic_local_steps:
        return None if s.local_steps is None else tuple(s.local_steps)
    step_s = mean_step_s(cfg)
    # H_r = floor(H v_r / max v) (2401.09135, dynamic local updates), at least one step; 1e-9 absorbs rounding
    return tuple(max(1, math.floor(H * min(step_s) / x + 1e-9)) for x in step_s)


def mean_step_s(cfg) -> list[float]:
    """Each island's mean seconds per step: from the replayed file, or islands.step_s (jitter has median 1)."""
    R, s = cfg.parallel.replica, cfg.islands
    if s.step_times:
        return list(read_step_times(s.step_times, R).mean(axis=0))
    return list(s.step_s) * R if len(s.step_s) == 1 else list(s.step_s)


class Speeds:
    """Nanoseconds island r's inner step number `step` takes."""

    def __init__(self, cfg):
        R, s = cfg.parallel.replica, cfg.islands
        self.base = [float(x) for x in (s.step_s if len(s.step_s) == R else s.step_s * R)]
        self.seed, self.jitter = cfg.seed, s.jitter
        self.straggler_prob, self.slowdown = s.straggler_prob, s.straggler_slowdown
        self.table = read_step_times(s.step_times, R) if s.step_times else None

    def step_ns(self, island: int, step: int) -> int:
        if self.table is not None:
            return round(self.table[(step - 1) % len(self.table), island] * NS)
        seconds = self.base[island]
        if self.jitter or self.straggler_prob:
            rng = np.random.default_rng([self.seed, SPEED_SALT, island, step])
            seconds *= math.exp(self.jitter * rng.standard_normal())
            seconds *= self.slowdown if rng.random() < self.straggler_prob else 1.0
        return round(seconds * NS)


class IslandClock:
    """Each island's simulated time, kept in the checkpointed Progress (progress.clock), and the Clock
    a scheme plans each step from.

    advance(plan) moves every island through the planned step and returns what each did, as timeline
    events: compute, wait (at a collective, for the slowest), comm (the link's unhidden time) and apply
    (a sync's result, with the outer version it makes).
    """

    def __init__(self, cfg, scheme_ledger: dict, overlap_steps: float, progress):
        self.R, self.seed, self.max_steps = cfg.parallel.replica, cfg.seed, cfg.max_steps
        self.dropout, self.every, self.local_steps = cfg.faults.island_dropout, cfg.outer.sync_every, local_steps(cfg)
        # a sync's weight for each island present: its share of the round's steps, or equal
        merge_by_tokens = cfg.islands.merge == "tokens" and self.local_steps is not None
        self.shares = tuple(float(h) for h in self.local_steps) if merge_by_tokens else (1.0,) * self.R
        self.speeds, self.ledger, self.overlap = Speeds(cfg), scheme_ledger, overlap_steps
        self.gbps, self.latency_ns = cfg.islands.gbps, round(cfg.islands.latency_ms * 1e6)
        self.progress = progress
        if not progress.clock:
            progress.clock = {"steps": [0] * self.R, "ns": [0] * self.R, "busy_ns": [0] * self.R,
                              "wait_ns": [0] * self.R, "comm_ns": [0] * self.R, "version": 0}
        self.state = progress.clock

    def clock(self, step: int) -> Clock:
        """The clock before inner step `step` (1-based)."""
        within = (step - 1) % self.every  # steps of this round already taken
        active = (True,) * self.R if self.local_steps is None else tuple(within < h for h in self.local_steps)
        return Clock(step, self.max_steps, present_islands(self.seed, step, self.R, self.dropout), active, self.shares)

    def link_ns(self, wire_bytes: float) -> int:
        """One collective: its wire bytes over the link, and a ring's 2 (R - 1) messages of latency."""
        if not wire_bytes or self.R == 1:
            return 0
        return round(8 * wire_bytes / (self.gbps * 1e9) * NS) + 2 * (self.R - 1) * self.latency_ns

    def advance(self, plan: Plan) -> list[dict]:
        st, events = self.state, []
        st["executed"] = plan.step  # every island runs every step of the one SPMD program, idle or not
        compute = [self.speeds.step_ns(r, plan.step) if plan.active[r] else 0 for r in range(self.R)]
        for r in (r for r in range(self.R) if plan.active[r]):  # an idle island computes nothing
            st["steps"][r] += 1
            events.append(self._event(r, "compute", st["ns"][r], st["ns"][r] + compute[r]))
            st["ns"][r] += compute[r]
            st["busy_ns"][r] += compute[r]
        in_step = self.link_ns(sum(self.ledger["wire"]["step"].get(e, 0.0) for e in plan.events))
        if in_step:
            slowest = max(range(self.R), key=lambda r: st["ns"][r])
            events += self._meet(range(self.R), max(0, in_step - round(self.overlap * compute[slowest])))
        for sync in (s for s in plan.syncs if s.weights is not None):
            present = [r for r, w in enumerate(sync.weights) if w > 0]
            events += self._meet(present, self.link_ns(sum(self.ledger["wire"]["sync"][g] for g in sync.groups)))
            st["version"] += 1
            events += [self._event(r, "apply", st["ns"][r], st["ns"][r]) for r in present]
        return events

    def _meet(self, islands, comm_ns: int) -> list[dict]:
        """The islands wait for the slowest of them, then for the link."""
        st, events = self.state, []
        islands = list(islands)
        barrier = max(st["ns"][r] for r in islands)
        for r in islands:
            if barrier > st["ns"][r]:
                events.append(self._event(r, "wait", st["ns"][r], barrier))
            st["wait_ns"][r] += barrier - st["ns"][r]
            if comm_ns:
                events.append(self._event(r, "comm", barrier, barrier + comm_ns))
            st["comm_ns"][r] += comm_ns
            st["ns"][r] = barrier + comm_ns
        return events

    def _event(self, island: int, kind: str, start: int, end: int) -> dict:
        return {"island": island, "kind": kind, "step": self.state["steps"][island], "start_s": start / NS,
                "end_s": end / NS, "version": self.state["version"], "staleness": 0}

    def step_metrics(self) -> dict:
        """What the last advance adds to the step's metrics row (an asynchronous schedule's arrivals)."""
        return {}

    def tokens(self, tokens_per_step: int) -> int:
        """Tokens trained so far: each island's share of the global batch for every step it took."""
        return sum(self.state["steps"]) * tokens_per_step // self.R

    def now_s(self) -> float:
        """The run's simulated wall-clock: the furthest island."""
        return max(self.state["ns"]) / NS

    def summary(self) -> dict:
        """Simulated wall-clock, each island's busy / waiting (at collectives) / communicating fractions of
        it, goodput (useful island-seconds over island-seconds) and the simulator's step efficiency (island-steps
        taken over island-steps executed: an idle island still computes, and its result is discarded)."""
        st, total = self.state, max(self.state["ns"]) or 1
        return {"time/sim_s": max(st["ns"]) / NS, "time/island_busy": [b / total for b in st["busy_ns"]],
                "time/island_wait": [w / total for w in st["wait_ns"]],
                "time/island_comm": [c / total for c in st["comm_ns"]],
                "time/goodput": sum(st["busy_ns"]) / (self.R * total), "time/outer_versions": st["version"],
                "islands/step_efficiency": sum(st["steps"]) / (self.R * st.get("executed", 0) or 1)}
