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

    @classmethod
    def everyone(cls, step: int, max_steps: int, islands: int) -> "Clock":
        """Lockstep with every island present: the clock inspect and the benchmark plan from."""
        return cls(step, max_steps, (True,) * islands, (True,) * islands, (1.0,) * islands)

    @property
    def last(self) -> bool:
        return self.step == self.max_steps

    def plan(self, events=(), groups=()) -> "Plan":
        """The Plan for this step: the scheme's events and due groups, with the islands' weights in a sync."""
        groups = frozenset(groups)
        n = sum(w for w, p in zip(self.shares, self.present, strict=True) if p)
        weights = tuple(w / n if p else 0.0 for w, p in zip(self.shares, self.present, strict=True)) if groups and n else None
        return Plan(self.step, frozenset(events), groups, weights, self.active)


@dataclass(frozen=True)
class Plan:
    step: int  # the inner step it plans, 1-based
    events: frozenset[Event]  # what the inner step does for the scheme
    groups: frozenset[Group]  # what a sync after the step exchanges; empty: no sync
    weights: tuple[float, ...] | None  # each island's weight in the sync's mean: its share over the present's, 0 if absent
    active: tuple[bool, ...]  # islands that take the step; an inactive one keeps its state and its data

    @property
    def skipped(self) -> bool:
        """A sync was due but no island attends it."""
        return bool(self.groups) and self.weights is None
