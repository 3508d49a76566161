"""Local Adam (arXiv 2409.13155): parameters and both moment buffers averaged every H steps."""
from outer_optimizers.base import PARAMS, PeriodicScheme, average_groups, moment_groups
from outer_optimizers.registry import register


@register
class LocalAdam(PeriodicScheme):
    name = "local_adam"

    def __init__(self, outer_cfg, inner_tx, island, num_islands, compressor):
        super().__init__(outer_cfg, inner_tx, island, num_islands, compressor)
        # every moment buffer the inner optimizer keeps (Muon has only a first moment)
        self.groups = (PARAMS, *moment_groups(self.name, island.opt_state))

    def sync(self, island, outer, step, groups, weight):
        return average_groups(island, outer, groups, weight)

    def outer_lr(self):
        return 1.0
