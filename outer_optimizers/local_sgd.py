"""Local SGD / FedAvg (Photon, arXiv 2411.02908): islands' parameters averaged every H steps.

Equivalent to DiLoCo with outer SGD lr 1 and no momentum; optionally resets the inner optimizer.
"""
from outer_optimizers.base import PeriodicScheme, average_groups


class LocalSGD(PeriodicScheme):
    name = "local_sgd"
    groups = ("params",)

    def sync(self, island, outer, groups, weight):
        island, outer, metrics = average_groups(island, outer, groups, weight)
        if self.cfg.reset_inner_opt:
            island = {**island, "opt_state": self.inner_tx.init(island["params"])}
        return island, outer, metrics

    def outer_lr(self):
        return 1.0
