"""Stop a diverging run: the training loss above the step-0 validation loss by guard.loss_margin nats for
guard.patience consecutive steps. Non-finite losses and parameters stop a run at once (jaximus/loop.py).

The reference is the step-0 validation loss because it is checkpointed with the run (a resumed run judges
against the same value) and, from a random init, it is the loss of a model that has learned nothing:
a run that stays a nat above it for several steps has thrown away everything it learned.
"""


def add_guard_config(c) -> None:
    c.guard.loss_margin = 1.0  # nats above the step-0 validation loss that count as diverging
    c.guard.patience = 3  # consecutive steps above it that stop the run; 0 turns the guard off


class Diverged(Exception):
    def __init__(self, first: int, step: int, loss: float, reference: float):
        super().__init__(first, step)
        self.first, self.step, self.loss, self.reference = first, step, loss, reference


class DivergenceGuard:
    def __init__(self, cfg, reference: float):
        self.margin, self.patience, self.reference = cfg.guard.loss_margin, cfg.guard.patience, reference
        self.first = None  # the first step of the current run of steps above the limit

    def check(self, step: int, loss: float) -> None:
        """Called with every step's mean training loss, in step order; raises Diverged."""
        if not self.patience or loss <= self.reference + self.margin:
            self.first = None
            return
        self.first = step if self.first is None else self.first
        if step - self.first + 1 >= self.patience:
            raise Diverged(self.first, step, loss, self.reference)

    def explain(self, e: Diverged, kept: int | None, removed: list[int]) -> str:
        """The one line a diverged run ends with."""
        if kept is None:
            where = ("no checkpoint precedes it; the initialization is a function of seed (and model.init_from), so "
                     "run.resume=fresh restarts it exactly")
        else:
            where = f"the checkpoint at step {kept} is kept and a rerun resumes from it"
        gone = f" (removed the later ones: {', '.join(map(str, removed))})" if removed else ""
        return (f"step {e.step}: training diverged: the loss has stayed above the step-0 validation loss "
                f"{e.reference:.4g} + guard.loss_margin={self.margin:g} since step {e.first} (now {e.loss:.4g}); "
                f"{where}{gone}. Lower the learning rates, or set guard.patience=0 to train on")
