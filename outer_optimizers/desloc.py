"""DES-LOC (arXiv 2505.22549): parameters, first and second moments each synced on their own period.

Parameters every K_x (= outer.sync_every), first moments every K_u, second moments every K_v; with
K_x = K_u = K_v it is Local Adam. The parameter sync may apply the outer optimizer, as DiLoCo does, and
then its pseudo-gradient may be compressed (outer.compress.*); moments cross in float32.
A run's last step syncs the parameters if they are not due anyway; moments keep their own periods.
"""
from jaximus import UserError
from jaximus.schema import flag, integer
from jaximus.state import IslandState, OuterState
from outer_optimizers.base import MU, NU, PARAMS, Scheme, average_groups, check_period, moment_groups
from outer_optimizers.diloco import OUTER_OPTIMIZER_KEYS, make_outer_optimizer, outer_step, with_error
from outer_optimizers.registry import Key, register


@register
class DesLoc(Scheme):
    name = "desloc"
    keys = {**OUTER_OPTIMIZER_KEYS,
            "outer.first_moment_every": Key(lambda c: 3 * c.outer.sync_every, integer(1),
                                            "K_u: inner steps between first-moment syncs (2505.22549: 3 K_x)"),
            "outer.second_moment_every": Key(lambda c: 6 * c.outer.sync_every, integer(1),
                                             "K_v: inner steps between second-moment syncs (2505.22549: 6 K_x)"),
            "outer.desloc_outer_opt": Key(False, flag(), "apply the outer optimizer to DES-LOC's parameter sync")}
    compressible = True  # with outer.desloc_outer_opt=True: check says so

    @classmethod
    def check(cls, cfg):
        super().check(cfg)
        fmt = cfg.outer.compress.format or "none"
        if fmt != "none" and not cfg.outer.desloc_outer_opt:
            raise UserError(f"outer.compress.format={fmt} with outer.name=desloc: compression applies to pseudo-gradients "
                            "fed to an outer optimizer; add outer.desloc_outer_opt=True, or outer.compress.format=None")

    def __init__(self, outer_cfg, inner_tx, island, num_islands, compressor):
        super().__init__(outer_cfg, inner_tx, island, num_islands, compressor)
        self.periods = {PARAMS: check_period("sync_every", outer_cfg.sync_every),
                        MU: check_period("first_moment_every", outer_cfg.first_moment_every),
                        NU: check_period("second_moment_every", outer_cfg.second_moment_every)}
        self.groups = (PARAMS, *moment_groups(self.name, island.opt_state))
        self.outer_tx = make_outer_optimizer(outer_cfg) if outer_cfg.desloc_outer_opt else None

    def plan(self, clock):
        due = {g for g in self.groups if clock.step % self.periods[g] == 0}
        return clock.plan(groups=due | {PARAMS} if clock.last else due)

    def init(self, params):
        if self.outer_tx is None:
            return OuterState(params, (), {})
        return with_error(self.compressor, params, OuterState(params, self.outer_tx.init(params), {}))

    def sync(self, island, outer, step, groups, weight):
        if self.outer_tx is None or PARAMS not in groups:
            return average_groups(island, outer, groups, weight)
        island, outer, _ = average_groups(island, outer, groups - {PARAMS}, weight)
        params, outer, metrics = outer_step(self.outer_tx, self.compressor, island.params, outer, step, weight)
        return IslandState(params, island.opt_state), outer, metrics

    def outer_lr(self):
        return self.cfg.lr if self.outer_tx else 1.0
