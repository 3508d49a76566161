"""Asynchronous outer updates on the simulated clock: every island runs its rounds at its own speed.

Async Local-SGD (2401.09135): island r pulls the outer model, takes its H_r inner steps, and pushes its
pseudo-gradient against the model it pulled; the server applies arrivals in simulated-time order. The
first arrival opens a grace window (outer.grace_s); islands that arrive inside it wait, and when it
closes (its time is up, or every island waits) they all pull the latest model. A quorum (Decoupled
DiLoCo, 2604.21428) also closes the window once K islands wait, and merges their work in one update;
a late island's round merges into the next window's.

The schedule depends only on the speeds, never on the numbers trained, so the host plays it out as an
event-driven simulation (integer nanoseconds; ties broken by island id) and the SPMD program follows
it: island r takes a step whenever its round has steps left, and after each step the loop runs, in
simulated-time order, every exchange that has become due: an arrival once its island's round is
computed, a window's close (and pulls) once every arrival before it is. A fast island takes steps
while a slow one idles, so the program executes max-speed steps: islands/step_efficiency says what
share of the executed island-steps was useful. After the last step every island's unpushed work
arrives, so the final evaluation reflects all the compute.
"""
import copy
from typing import NamedTuple

from jaximus.clock import NS, IslandClock, local_steps
from jaximus.plan import Clock, Plan


class Exchange(NamedTuple):
    """An arrival (its islands' pseudo-gradients reach the server and make `version`) or a pull (its islands
    take outer model `version`), at simulated time `time_ns`."""
    kind: str  # "arrive" or "pull"
    islands: tuple[int, ...]
    time_ns: int
    version: int
    staleness: tuple[int, ...] = ()  # per arriving island: outer updates applied since it pulled
    steps: tuple[int, ...] = ()  # per arriving island: inner steps in the round it pushes


class AsyncClock(IslandClock):
    """The clock of an asynchronous scheme; its whole schedule lives in progress.clock, so a resumed run
    continues the same simulation exactly. `quorum` K closes a window once K islands wait (None: all of
    them); `merged` applies a window's arrivals as one update at its close instead of one by one."""

    def __init__(self, cfg, scheme_ledger, overlap_steps, progress, grace_s: float, quorum: int | None, merged: bool):
        super().__init__(cfg, scheme_ledger, overlap_steps, progress)
        self.grace_ns, self.merged = round(grace_s * NS), merged
        self.quorum = quorum or self.R
        self.H = list(local_steps(cfg) or (cfg.outer.sync_every,) * self.R)
        # a push is one message of the arrival's payload to the server; a pull costs what a push does
        payload = sum(scheme_ledger["sync"].values())
        self.push_ns = round(8 * payload / (self.gbps * 1e9) * NS) + self.latency_ns if self.R > 1 else 0
        self.pull_ns = self.push_ns
        st = self.state
        if "left" not in st:
            st.update(left=list(self.H), round=[0] * self.R, pulled=[0] * self.R, waiting=[], window_ns=None,
                      server_ns=0, staleness_counts=[], arrive_ns=[self._round_end(st, r, 0) for r in range(self.R)])
        self._proposal, self._last = None, []

    def _round_end(self, st, r: int, start_ns: int) -> int:
        """When island r's round, started at start_ns, arrives at the server: its steps, then the push."""
        first = st["steps"][r] + 1
        return start_ns + sum(self.speeds.step_ns(r, k) for k in range(first, first + self.H[r])) + self.push_ns

    def clock(self, step: int) -> Clock:
        """The clock before SPMD step `step`: the islands whose rounds have steps left, and the exchanges that
        become due once it has run (worked out on a copy of the schedule; advance commits it)."""
        st = copy.deepcopy(self.state)
        waiting = set(st["waiting"])
        active = tuple(st["left"][r] > 0 and r not in waiting for r in range(self.R))
        timeline = []
        for r in (r for r in range(self.R) if active[r]):
            ns = self.speeds.step_ns(r, st["steps"][r] + 1)
            st["steps"][r] += 1
            st["round"][r] += 1
            st["left"][r] -= 1
            timeline.append(self._event(st, r, "compute", st["ns"][r], st["ns"][r] + ns))
            st["ns"][r] += ns
            st["busy_ns"][r] += ns
        st["executed"] = step
        exchanges = self._settle(st, timeline, final=step == self.max_steps)
        self._proposal = (step, st, timeline, exchanges)
        return Clock(step, self.max_steps, (True,) * self.R, active, (1.0,) * self.R, tuple(exchanges))

    def advance(self, plan: Plan) -> list[dict]:
        if self._proposal is None or self._proposal[0] != plan.step:
            self.clock(plan.step)
        _, st, timeline, exchanges = self._proposal
        self.state.clear()
        self.state.update(st)
        self._proposal, self._last = None, exchanges
        return timeline

    def _settle(self, st, timeline, final: bool) -> list[Exchange]:
        """Every exchange that is due, in simulated-time order; stops at an arrival whose round is still to compute."""
        out = []
        while True:
            flying = [r for r in range(self.R) if r not in st["waiting"]]
            nxt = min(flying, key=lambda r: (st["arrive_ns"][r], r)) if flying else None
            if st["window_ns"] is not None and (nxt is None or st["arrive_ns"][nxt] > st["window_ns"] + self.grace_ns):
                self._close(st, st["window_ns"] + self.grace_ns, timeline, out)
            elif nxt is not None and st["left"][nxt] == 0:
                self._arrive(st, nxt, timeline, out)
            else:
                break
        if final:  # the run ends: every island's unpushed work arrives, in the order it would
            late = [r for r in range(self.R) if r not in st["waiting"] and st["round"][r] > 0]
            for r in sorted(late, key=lambda r: (st["ns"][r], r)):
                st["arrive_ns"][r] = st["ns"][r] + self.push_ns
                self._arrive(st, r, timeline, out, close=False)
            if self.merged and st["waiting"]:
                self._apply(st, st["waiting"], max(st["arrive_ns"][r] for r in st["waiting"]), timeline, out)
        return out

    def _arrive(self, st, r: int, timeline, out, close: bool = True) -> None:
        t = st["arrive_ns"][r]
        timeline.append(self._event(st, r, "comm", st["ns"][r], t))
        st["comm_ns"][r] += t - st["ns"][r]
        st["ns"][r] = t
        timeline.append(self._event(st, r, "arrive", t, t, staleness=st["version"] - st["pulled"][r]))
        if st["window_ns"] is None:
            st["window_ns"] = t
        st["waiting"].append(r)
        if not self.merged:
            self._apply(st, [r], t, timeline, out)
        if close and len(st["waiting"]) >= self.quorum:
            self._close(st, t, timeline, out)

    def _apply(self, st, islands: list[int], t: int, timeline, out) -> None:
        """Outer update: the islands' pseudo-gradients, each against the version it pulled."""
        staleness = tuple(st["version"] - st["pulled"][r] for r in islands)
        for s in staleness:
            counts = st["staleness_counts"]
            counts.extend([0] * (s + 1 - len(counts)))
            counts[s] += 1
        st["version"] += 1
        st["server_ns"] = max(st["server_ns"], t)
        out.append(Exchange("arrive", tuple(islands), t, st["version"], staleness, tuple(st["round"][r] for r in islands)))
        timeline += [self._event(st, r, "apply", t, t, staleness=s) for r, s in zip(islands, staleness)]

    def _close(self, st, t: int, timeline, out) -> None:
        """The window closes at t: a quorum merges what waits; every waiting island pulls the latest model."""
        waiting = list(st["waiting"])
        if self.merged:
            self._apply(st, waiting, t, timeline, out)
        for r in waiting:
            timeline.append(self._event(st, r, "wait", st["ns"][r], t))
            st["wait_ns"][r] += t - st["ns"][r]
            start = t + self.pull_ns
            timeline.append(self._event(st, r, "pull", t, start))
            st["comm_ns"][r] += self.pull_ns
            st["ns"][r], st["pulled"][r], st["left"][r], st["round"][r] = start, st["version"], self.H[r], 0
            st["arrive_ns"][r] = self._round_end(st, r, start)
        st["server_ns"] = max(st["server_ns"], t)
        st["waiting"], st["window_ns"] = [], None
        out.append(Exchange("pull", tuple(waiting), t, st["version"]))

    def _event(self, st, island: int, kind: str, start: int, end: int, staleness: int = 0) -> dict:
        return {"island": island, "kind": kind, "step": st["steps"][island], "start_s": start / NS,
                "end_s": end / NS, "version": st["version"], "staleness": staleness}

    def step_metrics(self) -> dict:
        """The last step's arrivals: how many, and how stale."""
        stale = [s for e in self._last if e.kind == "arrive" for s in e.staleness]
        if not stale:
            return {}
        return {"outer/arrivals": len(stale), "outer/staleness": sum(stale) / len(stale), "outer/version": self.state["version"]}

    def now_s(self) -> float:
        """Where the outer model stands: the simulated time of the last exchange."""
        return self.state["server_ns"] / NS

    def summary(self) -> dict:
        counts = self.state["staleness_counts"]
        mean = sum(s * n for s, n in enumerate(counts)) / (sum(counts) or 1)
        return {**super().summary(), "time/sim_s": self.now_s(), "outer/staleness_counts": list(counts),
                "outer/staleness_mean": mean}
