"""The sync step: a scheme's `sync` run per island under a shard_map manual over `replica`.

One jitted program per set of groups (DES-LOC syncs params, first and second moments on different
steps), compiled on first use; the state's buffers are donated.
"""
import jax
from jax.sharding import PartitionSpec as P


def make_sync_step(scheme, mesh, shardings):
    """sync(islands, outer, groups) -> (islands, outer, metrics with a leading R axis)."""
    compiled = {}

    def build(groups):
        def body(islands, outer):
            one = lambda t: jax.tree.map(lambda x: x[0], t)  # noqa: E731
            island, new_outer, metrics = scheme.sync(one(islands), one(outer), groups)
            return jax.tree.map(lambda x: x[None], (island, new_outer, metrics))

        mapped = jax.shard_map(body, mesh=mesh, in_specs=P("replica"), out_specs=P("replica"), axis_names={"replica"})
        return jax.jit(mapped, donate_argnums=(0, 1), out_shardings=(shardings["islands"], shardings["outer"], None))

    def sync(islands, outer, groups: frozenset):
        if groups not in compiled:
            compiled[groups] = build(groups)
        return compiled[groups](islands, outer)

    sync.compiled = compiled
    sync.build = build
    return sync
