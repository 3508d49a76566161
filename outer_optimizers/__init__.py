"""Outer synchronization schemes across the replica axis, chosen by `outer.name` (the registry).

Every scheme answers (ALGORITHMS.md §1): what is exchanged, when, how it is aggregated, how applied;
base.py states the protocol. jaximus reaches the schemes only through `make_scheme`.
"""
from jaximus import UserError
from jaximus.compress import Compressor, check_settings
from outer_optimizers.base import OUTER_SCHEMA, Scheme, add_outer_config
from outer_optimizers.desloc import DesLoc
from outer_optimizers.diloco import DiLoCo
from outer_optimizers.local_adam import LocalAdam
from outer_optimizers.local_sgd import LocalSGD
from outer_optimizers.streaming import EagerDiLoCo, StreamingDiLoCo
from outer_optimizers.sync import SyncDP

SCHEMES = {s.name: s for s in (SyncDP, DiLoCo, StreamingDiLoCo, LocalSGD, LocalAdam, DesLoc)}
COMPRESSIBLE = ("diloco", "streaming_diloco", "desloc")  # schemes that feed a mean pseudo-gradient to an outer step


def check_compression(cfg) -> None:
    """outer.compress.* fits itself and the scheme; checked before JAX starts and again when a scheme is built."""
    check_settings(cfg.outer.compress)
    fmt, name = cfg.outer.compress.format or "none", cfg.outer.name
    if fmt != "none" and (name not in COMPRESSIBLE or (name == "desloc" and not cfg.outer.desloc_outer_opt)):
        raise UserError(f"outer.compress.format={fmt} with outer.name={name}: compression applies to pseudo-gradients "
                        f"fed to an outer optimizer; use {', '.join(COMPRESSIBLE)} (desloc with "
                        "outer.desloc_outer_opt=True), or outer.compress.format=None")


def make_scheme(cfg, inner_tx, island, num_islands: int) -> Scheme:
    """The scheme named by outer.name for islands shaped like `island` (an IslandState of shapes)."""
    name = cfg.outer.name
    if name not in SCHEMES:
        raise UserError(f"outer.name={name!r}: unknown scheme; choose one of {', '.join(SCHEMES)}")
    if cfg.faults.island_dropout and name == "sync":
        raise UserError("faults.island_dropout applies to local-update schemes; outer.name=sync has no syncs to miss")
    in_step = cfg.outer.eager or (name == "streaming_diloco" and cfg.outer.overlap_steps)
    if cfg.faults.island_dropout and in_step:
        raise UserError("faults.island_dropout with outer.overlap_steps > 0 or outer.eager: an in-step sync cannot "
                        "leave an island out yet; use outer.overlap_steps=0 and outer.eager=false")
    if cfg.outer.eager and name not in ("diloco", "streaming_diloco"):
        raise UserError(f"outer.eager=true with outer.name={name}: eager updates swap a share of the pseudo-gradient "
                        "fed to an outer step; use diloco or streaming_diloco")
    check_compression(cfg)
    compressor = Compressor(cfg.outer.compress, cfg.parallel.fsdp, cfg.parallel.strategy, cfg.seed)
    scheme = EagerDiLoCo if name == "diloco" and cfg.outer.eager else SCHEMES[name]
    return scheme(cfg.outer, inner_tx, island, num_islands, compressor)


__all__ = ["OUTER_SCHEMA", "SCHEMES", "Scheme", "add_outer_config", "check_compression", "make_scheme"]
