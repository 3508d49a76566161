"""The ("replica", "fsdp") mesh and the one rule that decides how every state leaf is sharded.

Island state carries a leading replica axis R: leaf shape (R, ...) is sharded P("replica", <fsdp spec>).
"""
from pathlib import Path

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from jaximus import UserError

STRATEGIES = ("fsdp", "dp")


def force_cpu_devices(count: int) -> None:
    """Fake CPU devices for island simulation; must run before JAX's backend initializes."""
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:
        pass  # backend already up (tests, notebooks): the existing device count is checked in make_mesh


def make_mesh(replica: int, fsdp: int) -> jax.sharding.Mesh:
    """Auto axes: partial-manual shard_map over `replica` needs them (docs/jax_notes.md §3)."""
    if replica < 1 or fsdp < 1:
        raise UserError(f"parallel.replica={replica}, parallel.fsdp={fsdp}: both must be >= 1")
    n = jax.device_count()
    if replica * fsdp != n:
        raise UserError(
            f"parallel.replica x parallel.fsdp = {replica} x {fsdp} = {replica * fsdp} but {n} devices "
            f"are present; set parallel.replica and parallel.fsdp so their product is {n}")
    # Process by process, so islands that divide evenly over processes never straddle two of them.
    devices = sorted(jax.devices(), key=lambda dev: (dev.process_index, dev.id))
    return jax.sharding.Mesh(np.array(devices, dtype=object).reshape(replica, fsdp), ("replica", "fsdp"),
                             axis_types=(AxisType.Auto,) * 2)


def island_spec(shape: tuple[int, ...], fsdp: int, strategy: str) -> P:
    """P("replica", ...): under fsdp, the largest dim divisible by the island size is sharded."""
    if strategy not in STRATEGIES:
        raise UserError(f"parallel.strategy={strategy!r}: choose one of {', '.join(STRATEGIES)}")
    spec = [None] * (len(shape) - 1)
    if strategy == "fsdp" and fsdp > 1:
        candidates = [i for i, d in enumerate(shape[1:]) if d % fsdp == 0 and d >= fsdp]
        if candidates:
            spec[max(candidates, key=lambda i: (shape[1 + i], -i))] = "fsdp"
    return P("replica", *spec)


def island_shardings(tree, mesh: jax.sharding.Mesh, strategy: str):
    """NamedShardings for a pytree of (R, ...) leaves (arrays or ShapeDtypeStructs)."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(lambda x: NamedSharding(mesh, island_spec(x.shape, fsdp, strategy)), tree)


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    """(R, B, T) batches: islands over replica, rows over the island's devices."""
    return NamedSharding(mesh, P("replica", "fsdp"))


def enable_compile_cache(cache_dir: str) -> None:
    """Persistent XLA cache: recompiling the same step on the next run is a disk read (docs/jax_notes.md §11)."""
    jax.config.update("jax_compilation_cache_dir", str(Path(cache_dir) / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
