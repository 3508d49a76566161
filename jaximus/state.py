"""Island state: params and inner optimizer state with a leading replica axis, born sharded."""
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding

from jaximus.mesh import island_shardings


def init_island_state(init_weights, tx, mesh, strategy: str, key):
    """{"params", "opt_state"}, every leaf (R, ...): identical islands, created directly in their shards."""
    R = mesh.shape["replica"]

    def one_island(k):
        params = init_weights(k)
        return {"params": params, "opt_state": tx.init(params)}

    def all_islands(k):
        return jax.tree.map(lambda x: jnp.broadcast_to(x[None], (R, *x.shape)), one_island(k))

    abstract = jax.eval_shape(all_islands, key)
    shardings = island_shardings(abstract, mesh, strategy)
    return jax.jit(all_islands, out_shardings=shardings)(key), shardings


def abstract_island_state(init_weights, tx, mesh, strategy: str, key):
    """Shapes and shardings of the island state without allocating it (for inspection and parameter counts)."""
    R = mesh.shape["replica"]
    one = jax.eval_shape(lambda k: {"params": init_weights(k), "opt_state": tx.init(init_weights(k))}, key)
    tree = jax.tree.map(lambda x: jax.ShapeDtypeStruct((R, *x.shape), x.dtype), one)
    shardings = island_shardings(tree, mesh, strategy)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, jax.sharding.PartitionSpec())
