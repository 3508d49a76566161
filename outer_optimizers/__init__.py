"""Outer synchronization schemes across the replica axis, chosen by `outer.name`.

Every scheme answers (ALGORITHMS.md §1): what is exchanged, when, how it is aggregated, how applied.
Only `sync` (inside the inner step) and each scheme's `sync` method communicate across islands.
"""
from jaximus import UserError
from outer_optimizers.base import Scheme, add_outer_config, sync_weights
from outer_optimizers.desloc import DesLoc
from outer_optimizers.diloco import DiLoCo
from outer_optimizers.local_adam import LocalAdam
from outer_optimizers.local_sgd import LocalSGD
from outer_optimizers.sync import SyncDP

SCHEMES = {s.name: s for s in (SyncDP, DiLoCo, LocalSGD, LocalAdam, DesLoc)}


def make_scheme(cfg, inner_tx) -> Scheme:
    """The scheme named by outer.name, its settings checked before anything compiles."""
    name = cfg.outer.name
    if name not in SCHEMES:
        raise UserError(f"outer.name={name!r}: unknown scheme; choose one of {', '.join(SCHEMES)}")
    dropout = cfg.faults.island_dropout
    if not 0 <= dropout < 1:
        raise UserError(f"faults.island_dropout={dropout}: a probability in [0, 1)")
    if dropout and name == "sync":
        raise UserError("faults.island_dropout applies to local-update schemes; outer.name=sync has no syncs to miss")
    return SCHEMES[name](cfg.outer, inner_tx)


__all__ = ["SCHEMES", "Scheme", "add_outer_config", "make_scheme", "sync_weights"]
