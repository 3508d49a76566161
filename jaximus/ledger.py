"""The communication ledger: cumulative bytes each island sent across the slow link, from the scheme's
own byte counts (a test keeps them equal to the compiled programs'), kept in the checkpointed Progress."""
from jaximus.state import Progress


class Ledger:
    def __init__(self, scheme_ledger: dict[str, dict[str, int]], progress: Progress, num_islands: int):
        self.per_event = scheme_ledger["step"]
        self.per_group = scheme_ledger["sync"]
        self.progress = progress
        if not progress.island_bytes:
            progress.island_bytes = [0] * num_islands

    def inner_step(self, events) -> None:
        """What the inner step's events sent (sync DP's gradients on every step), as one communication event."""
        sent = sum(self.per_event.get(e, 0) for e in events)
        if sent:
            self.progress.island_bytes = [b + sent for b in self.progress.island_bytes]
            self.progress.syncs += 1

    def sync(self, groups, weights) -> None:
        """An island that dropped out of the sync (weight 0) sent nothing."""
        sent = sum(self.per_group[g] for g in groups)
        self.progress.island_bytes = [b + (sent if w > 0 else 0) for b, w in zip(self.progress.island_bytes, weights)]
        self.progress.syncs += 1

    def metrics(self) -> dict:
        """comm/cross_island_bytes is the mean over islands of what each has sent so far."""
        total, n = sum(self.progress.island_bytes), len(self.progress.island_bytes)
        return {"comm/cross_island_bytes": total // n if total % n == 0 else total / n,
                "comm/syncs": self.progress.syncs}
