"""Training state: islands (params, inner optimizer state) and the outer scheme's state, all with a
leading replica axis R and born sharded. Outer state is identical on every island by construction."""
import jax
import jax.numpy as jnp

from jaximus.mesh import island_shardings


def _make_state_fn(init_weights, tx, R: int, init_outer):
    def all_islands(key):
        params = init_weights(key)
        one = {"islands": {"params": params, "opt_state": tx.init(params)}, "outer": init_outer(params)}
        return jax.tree.map(lambda x: jnp.broadcast_to(x[None], (R, *x.shape)), one)

    return all_islands


def init_state(init_weights, tx, mesh, strategy: str, key, init_outer=lambda params: {}):
    """({"islands": {"params", "opt_state"}, "outer": init_outer(params)}, shardings); islands identical."""
    make = _make_state_fn(init_weights, tx, mesh.shape["replica"], init_outer)
    shardings = island_shardings(jax.eval_shape(make, key), mesh, strategy)
    return jax.jit(make, out_shardings=shardings)(key), shardings


def abstract_state(init_weights, tx, mesh, strategy: str, key, init_outer=lambda params: {}):
    """ShapeDtypeStructs carrying their shardings: compile and count without allocating."""
    tree = jax.eval_shape(_make_state_fn(init_weights, tx, mesh.shape["replica"], init_outer), key)
    shardings = island_shardings(tree, mesh, strategy)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings), shardings
