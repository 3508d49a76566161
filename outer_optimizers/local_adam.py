"""Local Adam (arXiv 2409.13155): parameters and both moment buffers averaged every H steps."""
from outer_optimizers.base import PeriodicScheme, average_groups


class LocalAdam(PeriodicScheme):
    name = "local_adam"
    groups = ("params", "mu", "nu")

    def check_inner_state(self, opt_state):
        """Averages every moment buffer the inner optimizer keeps (Muon has only a first moment)."""
        self.groups = ("params", *self.require_moments(opt_state))

    def sync(self, island, outer, groups, weight):
        return average_groups(island, outer, groups, weight)

    def outer_lr(self):
        return 1.0
