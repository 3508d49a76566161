"""The communication ledger: cumulative bytes each island sent across the slow link, from the scheme's
own byte counts (a test keeps them equal to the compiled programs'), kept in the checkpointed Progress.

Two totals per island: the payload it handed to cross-island collectives (comm/cross_island_bytes) and
the bytes it put on the link for the collective pattern compiled (comm/wire_bytes: a ring all-reduce
sends 2 (R - 1) / R x its payload, an all-gather (R - 1) x).
"""
from jaximus.state import Progress


def _mean(values):
    total, n = sum(values), len(values)
    return total // n if isinstance(total, int) and total % n == 0 else total / n


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

    def inner_step(self, events) -> None:
        """What the inner step's events sent (sync DP's gradients on every step), as one communication event."""
        payload = sum(self.payload["step"].get(e, 0) for e in events)
        if payload:
            self._send(payload, sum(self.wire["step"].get(e, 0.0) for e in events), [True] * len(self.progress.island_bytes))

    def sync(self, groups, weights) -> None:
        """An island that dropped out of the sync (weight 0) sent nothing."""
        self._send(sum(self.payload["sync"][g] for g in groups), sum(self.wire["sync"][g] for g in groups),
                   [w > 0 for w in weights])

    def metrics(self) -> dict:
        """Means over islands of what each has sent so far."""
        return {"comm/cross_island_bytes": _mean(self.progress.island_bytes),
                "comm/wire_bytes": _mean(self.progress.island_wire), "comm/syncs": self.progress.syncs}
