"""An experiment's own objective: something other than a language model, on synthetic data, through the
same loop, schemes, ledger and checkpoints.

An experiment's model.py may define `make_objective(cfg) -> Objective`; then no corpus or tokenizer is
opened, each island reads `batch(step, island)` (a function of the step and the island only, so a
resumed run reads exactly what it would have) and evaluation scores the global model on every island's
`val_batch(island)`. Toy problems for outer optimizers live here: a quadratic with a different optimum
per island, a linear regression, a constant gradient (experiments/toy).
"""
from dataclasses import dataclass
from typing import Callable

import jax
import numpy as np

from jaximus.distributed import to_host


@dataclass(frozen=True)
class Objective:
    loss: Callable  # loss(params, batch) -> the mean loss over one island's batch, inside the compiled step
    batch: Callable  # batch(step, island) -> np.ndarray: the island's rows for inner step `step` (0-based)
    val_batch: Callable  # val_batch(island) -> np.ndarray: the held-out rows of island `island`'s data
    description: str  # what the run's info records as its data


class ObjectiveLoader:
    """The loader interface (take, next, state, close) over Objective.batch; an island's position is its own step."""

    def __init__(self, objective: Objective, islands: list[int], positions: list | None = None):
        self.objective, self.islands = objective, islands
        self.steps = [int(p[0]) for p in positions] if positions else [0] * len(islands)

    def __iter__(self):
        return self

    def take(self, active=None) -> np.ndarray:
        """The next batch; an inactive island's rows are zeros and its step does not move."""
        rows = []
        for i, r in enumerate(self.islands):
            batch = self.objective.batch(self.steps[i], r)
            if active is None or active[r]:
                self.steps[i] += 1
                rows.append(batch)
            else:
                rows.append(np.zeros_like(batch))
        return np.stack(rows)

    def __next__(self) -> np.ndarray:
        return self.take()

    def state(self) -> dict:
        return {"positions": [[step] for step in self.steps]}

    def close(self) -> None:
        pass


def validation_batches(objective: Objective, num_islands: int) -> np.ndarray:
    """(R, rows, ...): island r's held-out rows, for every island."""
    return np.stack([objective.val_batch(r) for r in range(num_islands)])


def make_objective_eval(objective: Objective):
    """evaluate(params_R, val_R) -> {"val/loss": the global model's mean loss over every island's held-out rows}.
    The copies of the global model on the islands are equal, so each island scores its own."""
    score = jax.jit(jax.vmap(objective.loss))

    def evaluate(params_R, val_R) -> dict:
        return {"val/loss": float(np.mean(to_host(score(params_R, val_R))))}

    return evaluate
