"""The inner training step: one jitted call runs every island's step side by side.

shard_map is manual over `replica` only, so the body is one island's step auto-sharded over `fsdp`;
nothing crosses islands except what grad_hook does (sync DP: a pmean of the gradients).
"""
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from jaximus.loss import token_nats


def across_islands(reduce, tree):
    """reduce(tree, "replica"), skipped for one island: XLA rejects a size-1 manual all-reduce."""
    return tree if jax.lax.axis_size("replica") == 1 else reduce(tree, "replica")


def sync_gradients(grads):
    """Synchronous data-parallel: average gradients across islands every step."""
    return across_islands(jax.lax.pmean, grads)


def make_loss_fn(forward):
    def loss_fn(params, batch_BT1):
        logits = forward(batch_BT1[:, :-1], params)
        return jnp.mean(token_nats(logits, batch_BT1[:, 1:]))

    return loss_fn


def _per_island(fn, mesh, n_out: int):
    """Run fn on each island's slice (leading axis 1 dropped) under a shard_map manual over replica."""
    def body(*args):
        outs = fn(*jax.tree.map(lambda x: x[0], args))
        return jax.tree.map(lambda x: x[None], outs)

    return jax.shard_map(body, mesh=mesh, in_specs=P("replica"), out_specs=(P("replica"),) * n_out,
                         axis_names={"replica"})


def make_train_step(forward, tx, mesh, state_shardings, grad_hook=sync_gradients):
    """step(state, batch_RBT1) -> (state, loss_R); the state's buffers are donated."""
    loss_fn = make_loss_fn(forward)

    def island_step(state, batch_BT1):
        batch_BT1 = jax.lax.with_sharding_constraint(batch_BT1, P("fsdp"))
        loss, grads = jax.value_and_grad(loss_fn)(state["params"], batch_BT1)
        grads = grad_hook(grads)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        return {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state}, loss

    step = _per_island(island_step, mesh, 2)
    return jax.jit(step, donate_argnums=0, out_shardings=(state_shardings, None))


def make_eval_step(forward, token_bytes, mesh):
    """eval(params_R, rows_RNBT1) -> (sum nats, sum nats over byte-bearing targets, sum bytes, tokens).

    One program scans all N validation batches: on CPU, several collective programs in flight at once
    can deadlock the fake devices' shared thread pool.
    """
    token_bytes = np.asarray(token_bytes)  # a numpy constant: a captured jax array would carry the outer mesh

    def island_eval(params, rows_NBT1):
        def one_batch(total, rows_BT1):
            rows_BT1 = jax.lax.with_sharding_constraint(rows_BT1, P("fsdp"))
            targets = rows_BT1[:, 1:]
            nats = token_nats(forward(rows_BT1[:, :-1], params), targets)
            nbytes = jnp.asarray(token_bytes)[targets]
            sums = jnp.stack([nats.sum(), jnp.where(nbytes > 0, nats, 0.0).sum(),
                              nbytes.sum().astype(jnp.float32), jnp.float32(nats.size)])
            return total + sums, None

        zeros = jax.lax.pcast(jnp.zeros(4, jnp.float32), "replica", to="varying")  # the carry differs per island
        total, _ = jax.lax.scan(one_batch, zeros, rows_NBT1)
        return across_islands(jax.lax.psum, total)

    body = partial(jax.shard_map, mesh=mesh, in_specs=P("replica"), out_specs=P(), axis_names={"replica"})
    return jax.jit(body(lambda params, rows: island_eval(jax.tree.map(lambda x: x[0], params), rows[0])))
