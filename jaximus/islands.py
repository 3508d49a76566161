"""Island primitives that schemes build on: the per-island shard_map, the cross-island mean, byte counts.

Every leaf of the training state carries a leading replica axis R. `per_island` runs a function on one
island's slice under a shard_map manual over `replica` only (auto over `fsdp`), so nothing crosses
islands except the collectives written here. Nothing in this module knows about any scheme.
"""
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P


def per_island(fn, mesh, out_specs=P("replica")):
    """fn(*one island's slices) -> outputs, run for every island side by side in one program.

    Inputs and outputs have a leading R axis; fn sees them without it. out_specs may be a pytree prefix.
    """
    def body(*args):
        outs = fn(*jax.tree.map(lambda x: x[0], args))
        return jax.tree.map(lambda x: x[None], outs)

    return jax.shard_map(body, mesh=mesh, in_specs=P("replica"), out_specs=out_specs, axis_names={"replica"})


def num_islands() -> int:
    """Inside per_island: how many islands there are."""
    return jax.lax.axis_size("replica")


def across_islands(reduce, tree):
    """reduce(tree, "replica"), skipped for one island: XLA rejects a size-1 manual all-reduce."""
    return tree if num_islands() == 1 else reduce(tree, "replica")


def island_mean(tree, weight=None):
    """Mean over islands; with weight (1/n for each of the n islands taking part, else 0) a weighted one,
    so an island that dropped out of a sync is left out of the mean and re-joins from its result."""
    if weight is None:
        return across_islands(jax.lax.pmean, tree)
    return across_islands(jax.lax.psum, jax.tree.map(lambda x: x * weight.astype(x.dtype), tree))


def tree_bytes(tree) -> int:
    """Bytes of a pytree of arrays or ShapeDtypeStructs."""
    return sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))

