"""Local Adam (arXiv 2409.13155): parameters and both moment buffers averaged every H steps."""
from outer_optimizers.base import Scheme, average_groups, check_period


class LocalAdam(Scheme):
    name = "local_adam"
    groups = ("params", "mu", "nu")

    def __init__(self, outer_cfg, inner_tx):
        super().__init__(outer_cfg, inner_tx)
        self.every = check_period("sync_every", outer_cfg.sync_every)

    def check_inner_state(self, opt_state):
        """Averages every moment buffer the inner optimizer keeps (Muon has only a first moment)."""
        self.groups = ("params", *self.require_moments(opt_state))

    def due(self, done):
        return frozenset(self.groups) if done % self.every == 0 else frozenset()

    def sync(self, island, outer, groups):
        return average_groups(island, outer, groups)

    def outer_lr(self):
        return 1.0
