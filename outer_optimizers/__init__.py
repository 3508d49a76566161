"""Outer synchronization schemes: one file per scheme, registered by name (outer_optimizers/registry.py).

Every scheme answers: what is exchanged, when, how it is aggregated, how applied; the protocol is
outer_optimizers/base.py. Importing this package registers the library's schemes; a scheme of your
own registers itself in its experiment's schemes.py (docs/writing_a_scheme.md).
"""
from jaximus.compress import Compressor
from jaximus.plan import Clock, Event, Group, Plan
from outer_optimizers.base import Scheme
from outer_optimizers.registry import SCHEMES, Key, add_outer_config, check_scheme, outer_schema, register, scheme_named

# isort: off
# each module registers its scheme on import; this order is the order outer.name's choices are listed in
from outer_optimizers import sync, diloco, streaming, local_sgd, local_adam, desloc, async_diloco  # noqa: E402, F401
# isort: on


def make_scheme(cfg, inner_tx, island, num_islands: int) -> Scheme:
    """The scheme named by outer.name for islands shaped like `island` (an IslandState of shapes)."""
    scheme = scheme_named(cfg.outer.name)
    check_scheme(cfg)
    compressor = Compressor(cfg.outer.compress, cfg.parallel.fsdp, cfg.parallel.strategy, cfg.seed)
    return scheme.variant(cfg)(cfg.outer, inner_tx, island, num_islands, compressor)


__all__ = ["SCHEMES", "Clock", "Event", "Group", "Key", "Plan", "Scheme", "add_outer_config", "check_scheme", "make_scheme",
           "outer_schema", "register"]
