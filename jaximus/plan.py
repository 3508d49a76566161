"""The schedule as data: what one inner step does for a scheme, which syncs follow it, and who takes part.

A scheme answers one question per step, `plan(clock) -> Plan`. An Event is something the compiled inner
step does for the scheme (each distinct set of events compiles its own program, with exactly its
collectives); a Group is something a sync program exchanges. The loop, the ledger, inspect, analysis
and the simulated clock all read these values; `str()` is their one spelling in JSON (the ledger's keys
in config.json and summary.json, the metrics' outer/groups).
"""
from dataclasses import dataclass
from typing import NamedTuple


class Event(NamedTuple):
    """What an inner step does for the scheme: "grads" (sync DP's gradient mean), or Streaming DiLoCo's
    "take" (a fragment's pseudo-gradient), "issue" (its cross-island mean starts) and "apply" (it lands)."""
    kind: str
    fragment: int | None = None

    def __str__(self) -> str:
        return self.kind if self.fragment is None else f"{self.kind}:{self.fragment}"


class Group(NamedTuple):
    """What a sync exchanges: "params", "mu" / "nu" (first / second moments), or Streaming DiLoCo's
    "fragment" (take and mean a fragment now), "flush" (mean a taken one) and "land" (apply one in flight)."""
    kind: str
    fragment: int | None = None

    def __str__(self) -> str:
        return self.kind if self.fragment is None else f"{self.kind}{self.fragment}"


def names(values) -> list[str]:
    """Events or groups as their JSON spelling, sorted."""
    return sorted(str(v) for v in values)


@dataclass(frozen=True)
class Clock:
    """Where the run stands before an inner step: the step about to run, and who takes part in it.

    A participation policy (jaximus/clock.py) makes it: `active` says which islands take this step (all
    of them in lockstep; islands.local_steps idles a slow island for the end of each round), `present`
    which islands a sync after it hears from (island dropout draws it).
    """
    step: int  # the inner step about to run, 1-based
    max_steps: int
    present: tuple[bool, ...]  # islands a sync after this step averages over
    active: tuple[bool, ...]  # islands that take this step
    shares: tuple[float, ...]  # each island's weight in a sync before the mean over those present
    exchanges: tuple = ()  # an asynchronous schedule's arrivals and pulls after this step (jaximus/asynchrony.py)

    @classmethod
    def everyone(cls, step: int, max_steps: int, islands: int) -> "Clock":
        """Lockstep with every island present: the clock inspect and the benchmark plan from."""
        return cls(step, max_steps, (True,) * islands, (True,) * islands, (1.0,) * islands)

    @property
    def last(self) -> bool:
        return self.step == self.max_steps

    def plan(self, events=(), groups=(), syncs=None) -> "Plan":
        """The Plan for this step: the scheme's events and due groups, with the islands' weights in a sync.

        An asynchronous scheme gives its syncs instead (several per step, each with its own weights)."""
        if syncs is None:
            groups = frozenset(groups)
            n = sum(w for w, p in zip(self.shares, self.present, strict=True) if p)
            weights = tuple(w / n if p else 0.0 for w, p in zip(self.shares, self.present, strict=True)) if n else None
            syncs = (Sync(groups, weights),) if groups else ()
        return Plan(self.step, frozenset(events), tuple(syncs), self.active)


class Sync(NamedTuple):
    """One sync program's run after a step: the groups it exchanges, each island's weight (None: skipped,
    nobody attends), and for the simulated clock what it is (an asynchronous scheme's arrivals and pulls)."""
    groups: frozenset
    weights: tuple[float, ...] | None
    exchange: object = None  # jaximus.asynchrony.Exchange for an asynchronous scheme


@dataclass(frozen=True)
class Plan:
    step: int  # the inner step it plans, 1-based
    events: frozenset[Event]  # what the inner step does for the scheme
    syncs: tuple[Sync, ...]  # the sync programs that run after the step, in order; empty: no sync
    active: tuple[bool, ...]  # islands that take the step; an inactive one keeps its state and its data

    @property
    def groups(self) -> frozenset[Group]:
        """Everything the step's syncs exchange."""
        return frozenset().union(*(s.groups for s in self.syncs))
