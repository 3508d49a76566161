"""Island state: params and inner optimizer state with a leading replica axis, born sharded."""
import jax
import jax.numpy as jnp

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
