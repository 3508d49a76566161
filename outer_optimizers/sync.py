"""Synchronous data-parallel (HSDP), the control: gradients averaged across islands every step."""
from jaximus.step import sync_gradients
from outer_optimizers.base import Scheme, tree_bytes


class SyncDP(Scheme):
    name = "sync"

    def grad_hook(self, grads):
        return sync_gradients(grads)

    def step_ledger(self, island):
        return {"grads": tree_bytes(island["params"])}  # gradients have the parameters' shapes and dtypes

    def init_outer(self, params):
        return {}  # islands stay identical: the global model is any island's parameters
