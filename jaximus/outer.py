"""The sync step: a scheme's `sync` run per island under a shard_map manual over `replica`.

One jitted program per set of groups (DES-LOC syncs params, first and second moments on different
steps), compiled on first use; the state's buffers are donated.
"""
import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


def make_sync_step(scheme, mesh, shardings):
    """sync(islands, outer, groups, weights_R) -> (islands, outer, metrics with a leading R axis).

    weights_R: 1/n for each of the n islands taking part, 0 for an island that dropped out.
    """
    compiled = {}

    def build(groups):
        def body(islands, outer, weights):
            one = lambda t: jax.tree.map(lambda x: x[0], t)  # noqa: E731
            island, new_outer, metrics = scheme.sync(one(islands), one(outer), groups, weights[0])
            return jax.tree.map(lambda x: x[None], (island, new_outer, metrics))

        mapped = jax.shard_map(body, mesh=mesh, in_specs=P("replica"), out_specs=P("replica"), axis_names={"replica"})
        return jax.jit(mapped, donate_argnums=(0, 1), out_shardings=(shardings["islands"], shardings["outer"], None))

    def sync(islands, outer, groups: frozenset, weights):
        if groups not in compiled:
            compiled[groups] = build(groups)
        return compiled[groups](islands, outer, jax.device_put(weights, NamedSharding(mesh, P("replica"))))

    sync.compiled = compiled
    sync.build = build
    return sync
