"""Outer synchronization schemes across the replica axis, chosen by `outer.name` (the registry).

Every scheme answers (ALGORITHMS.md §1): what is exchanged, when, how it is aggregated, how applied;
base.py states the protocol. jaximus reaches the schemes only through `make_scheme`.
"""
from jaximus import UserError
from outer_optimizers.base import OUTER_SCHEMA, Scheme, add_outer_config
from outer_optimizers.desloc import DesLoc
from outer_optimizers.diloco import DiLoCo
from outer_optimizers.local_adam import LocalAdam
from outer_optimizers.local_sgd import LocalSGD
from outer_optimizers.sync import SyncDP

SCHEMES = {s.name: s for s in (SyncDP, DiLoCo, LocalSGD, LocalAdam, DesLoc)}


def make_scheme(cfg, inner_tx, island, num_islands: int) -> Scheme:
    """The scheme named by outer.name for islands shaped like `island` (an IslandState of shapes)."""
    name = cfg.outer.name
    if name not in SCHEMES:
        raise UserError(f"outer.name={name!r}: unknown scheme; choose one of {', '.join(SCHEMES)}")
    if cfg.faults.island_dropout and name == "sync":
        raise UserError("faults.island_dropout applies to local-update schemes; outer.name=sync has no syncs to miss")
    return SCHEMES[name](cfg.outer, inner_tx, island, num_islands)


__all__ = ["OUTER_SCHEMA", "SCHEMES", "Scheme", "add_outer_config", "make_scheme"]
