"""Synchronous data-parallel (HSDP), the control: gradients averaged across islands every step."""
from jaximus import UserError
from jaximus.islands import island_mean, tree_bytes
from jaximus.plan import Event
from outer_optimizers.base import Scheme, make_ledger, refuse_partial_in_step
from outer_optimizers.registry import register

GRADS = {Event("grads")}  # every inner step means the gradients across islands


@register
class SyncDP(Scheme):
    name = "sync"

    @classmethod
    def check(cls, cfg):
        super().check(cfg)
        if cfg.faults.island_dropout:
            raise UserError("faults.island_dropout applies to local-update schemes; outer.name=sync has no syncs to miss")
        refuse_partial_in_step(cfg, True, "use a local-update scheme (outer.name=diloco, local_sgd, ...)")

    def init(self, params):
        return super().init(None)  # islands never differ: any island's parameters are the global model

    def grad_hook(self, grads):
        return island_mean(grads)

    def plan(self, clock):
        return clock.plan(events=GRADS)

    def ledger(self):
        # gradients have the parameters' shapes and dtypes
        return make_ledger({Event("grads"): self.all_reduce(tree_bytes(self.island.params))}, {})

    def overlap_steps(self):
        return 2 / 3  # the gradient all-reduce hides behind the backward pass: 2 of a step's 3 passes (2001.08361)

    def global_params(self, state):
        return state.islands.params
