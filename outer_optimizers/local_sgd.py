"""Local SGD / FedAvg (Photon, arXiv 2411.02908): islands' parameters averaged every H steps.

Equivalent to DiLoCo with outer SGD lr 1 and no momentum; optionally resets the inner optimizer's
moments after each round (Photon's client switch), never its schedules.
"""
from jaximus.schema import flag
from jaximus.state import IslandState
from outer_optimizers.base import PARAMS, PeriodicScheme, average_groups, reset_moments
from outer_optimizers.registry import Key, register


@register
class LocalSGD(PeriodicScheme):
    name = "local_sgd"
    groups = (PARAMS,)
    keys = {"outer.reset_inner_opt": Key(False, flag(), "reset the inner optimizer's moments after each round "
                                                         "(Photon's client switch)")}

    def sync(self, island, outer, step, groups, weight):
        island, outer, metrics = average_groups(island, outer, groups, weight)
        if self.cfg.reset_inner_opt:
            fresh = self.inner_tx.init(island.params)
            island = IslandState(island.params, reset_moments(island.opt_state, fresh))
        return island, outer, metrics

    def outer_lr(self):
        return 1.0
