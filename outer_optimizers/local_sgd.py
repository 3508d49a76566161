"""Local SGD / FedAvg (Photon, arXiv 2411.02908): islands' parameters averaged every H steps.

Equivalent to DiLoCo with outer SGD lr 1 and no momentum; optionally resets the inner optimizer.
"""
from outer_optimizers.base import Scheme, average_groups, check_period


class LocalSGD(Scheme):
    name = "local_sgd"
    groups = ("params",)

    def __init__(self, outer_cfg, inner_tx):
        super().__init__(outer_cfg, inner_tx)
        self.every = check_period("sync_every", outer_cfg.sync_every)

    def due(self, done):
        return frozenset({"params"}) if done % self.every == 0 else frozenset()

    def sync(self, island, outer, groups):
        island, outer, metrics = average_groups(island, outer, groups)
        if self.cfg.reset_inner_opt:
            island = {**island, "opt_state": self.inner_tx.init(island["params"])}
        return island, outer, metrics

    def outer_lr(self):
        return 1.0
