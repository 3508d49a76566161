"""The communication ledger: cumulative bytes each island sent across the slow link, from the scheme's
own byte counts (a test keeps them equal to the compiled programs'), kept in the checkpointed Progress.

Two totals per island: the payload it handed to cross-island collectives (comm/cross_island_bytes) and
the bytes it put on the link for the collective pattern compiled (comm/wire_bytes: a ring all-reduce
sends 2 (R - 1) / R x its payload, an all-gather (R - 1) x). The scheme's ledger is keyed by its
Events and Groups (jaximus/plan.py); `as_json` spells them for config.json.
"""
from jaximus.plan import Plan
from jaximus.state import Progress


def _mean(values):
    total, n = sum(values), len(values)
    return total // n if isinstance(total, int) and total % n == 0 else total / n


def as_json(scheme_ledger: dict) -> dict:
    """The scheme's ledger with its Events and Groups spelled as strings (how config.json records it)."""
    return {k: as_json(v) if isinstance(v, dict) else v for k, v in
            ((k if isinstance(k, str) else str(k), v) for k, v in scheme_ledger.items())}


def plan_bytes(scheme_ledger: dict, plan: Plan, key: str = "payload") -> float:
    """Bytes one island sends for a plan: its step's events and, when the sync takes place, its groups."""
    table = scheme_ledger if key == "payload" else scheme_ledger["wire"]
    sent = sum(table["step"].get(e, 0) for e in plan.events)
    return sent + sum(sum(table["sync"][g] for g in s.groups) for s in plan.syncs if s.weights is not None)


def _is_pull(sync) -> bool:
    """An asynchronous island taking the outer model: the server sends it, no island does (jaximus/asynchrony.py)."""
    return sync.exchange is not None and sync.exchange.kind == "pull"


class Ledger:
    def __init__(self, scheme_ledger: dict, progress: Progress, num_islands: int):
        self.payload, self.wire = scheme_ledger, scheme_ledger["wire"]
        self.progress = progress
        if not progress.island_bytes:
            progress.island_bytes, progress.island_wire = [0] * num_islands, [0.0] * num_islands

    def _send(self, payload, wire, present) -> None:
        p = self.progress
        p.island_bytes = [b + (payload if here else 0) for b, here in zip(p.island_bytes, present)]
        p.island_wire = [b + (wire if here else 0.0) for b, here in zip(p.island_wire, present)]
        p.syncs += 1

    def record(self, plan: Plan) -> None:
        """What a planned step sent: its inner step's events (sync DP's gradients on every step) as one
        communication event, then its syncs, which an island that dropped out of (weight 0) sent nothing for."""
        payload = sum(self.payload["step"].get(e, 0) for e in plan.events)
        if payload:
            self._send(payload, sum(self.wire["step"].get(e, 0.0) for e in plan.events),
                       [True] * len(self.progress.island_bytes))
        for sync in (s for s in plan.syncs if s.weights is not None and not _is_pull(s)):
            self._send(sum(self.payload["sync"][g] for g in sync.groups),
                       sum(self.wire["sync"][g] for g in sync.groups), [w > 0 for w in sync.weights])

    def metrics(self) -> dict:
        """Means over islands of what each has sent so far."""
        return {"comm/cross_island_bytes": _mean(self.progress.island_bytes),
                "comm/wire_bytes": _mean(self.progress.island_wire), "comm/syncs": self.progress.syncs}
