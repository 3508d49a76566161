"""The compiled programs: the inner step, a scheme's sync, and the evaluation, each run per island.

All three run every island side by side in one jitted call (jaximus.islands.per_island). Nothing
crosses islands except what the scheme does in its three places (grad_hook, in_step, sync).
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaximus.islands import per_island
from jaximus.loss import head_loss, head_nats, token_nats
from jaximus.state import IslandState, TrainState


def make_objective(model, cfg):
    """(loss(params, batch_BT1) -> mean nats, nats(params, inputs_BT, targets_BT) -> nats (B, T)).

    A model with make_model_features is scored by jaximus.loss's chunked head; otherwise from its logits.
    An experiment with its own objective (jaximus/objective.py) brings its loss, and has no nats.
    """
    if hasattr(model, "make_objective"):
        return model.make_objective(cfg).loss, None
    if hasattr(model, "make_model_features"):
        features = model.make_model_features(cfg)

        def loss(params, batch_BT1):
            h, w, softcap = features(batch_BT1[:, :-1], params)
            return head_loss(h, w, batch_BT1[:, 1:].reshape(-1), softcap)

        def nats(params, inputs_BT, targets_BT):
            h, w, softcap = features(inputs_BT, params)
            return head_nats(h, w, targets_BT.reshape(-1), softcap).reshape(targets_BT.shape)

        return loss, nats
    forward = model.make_model_forward(cfg)

    def nats(params, inputs_BT, targets_BT):
        return token_nats(forward(inputs_BT, params), targets_BT)

    return lambda params, batch_BT1: jnp.mean(nats(params, batch_BT1[:, :-1], batch_BT1[:, 1:])), nats


def _compiled_per_key(build, call):
    """call(program, *args) with program = build(key), built on first use of each key (step events, sync groups);
    the wrapper exposes .build and .compiled for inspection."""
    compiled = {}

    def run(key, *args):
        if key not in compiled:
            compiled[key] = build(key)
        return call(compiled[key], *args)

    run.build, run.compiled = build, compiled
    return run


def make_train_step(loss_fn, tx, scheme, mesh, shardings):
    """step(state, batch_RBT1, events, active_R=None) -> (state, loss_R), compiled once per set of the scheme's
    step events; the state's buffers are donated.

    With `active` (a bool per island, some False) one more program per event set takes the mask as data: an
    inactive island's parameters, optimizer state and outer state stay as they were (its rows are ignored).
    state.step counts the run's steps on every island, so the seeds a sync derives from it agree.
    """
    def build(events: frozenset, masked: bool = False):
        def island_step(state: TrainState, batch_BT1, active=None):
            batch_BT1 = jax.lax.with_sharding_constraint(batch_BT1, P("fsdp"))
            params = state.islands.params
            loss, grads = jax.value_and_grad(loss_fn)(params, batch_BT1)
            updates, opt_state = tx.update(scheme.grad_hook(grads), state.islands.opt_state, params)
            island = IslandState(optax.apply_updates(params, updates), opt_state)
            island, outer = scheme.in_step(island, state.outer, state.step, events)
            if masked:
                island, outer = jax.tree.map(lambda new, old: jnp.where(active, new, old),
                                             (island, outer), (state.islands, state.outer))
            return TrainState(island, outer, state.step + 1), loss

        return jax.jit(per_island(island_step, mesh), donate_argnums=0, out_shardings=(shardings, None))

    mask_sharding = NamedSharding(mesh, P("replica"))

    def call(program, state, batch, active):
        if active is None:
            return program(state, batch)
        return program(state, batch, jax.device_put(np.asarray(active, bool), mask_sharding))

    per_key = _compiled_per_key(lambda key: build(*key), call)

    def step(state, batch, events: frozenset = frozenset(), active=None):
        masked = active is not None and not all(active)
        return per_key((events, masked), state, batch, active if masked else None)

    step.build, step.compiled = build, per_key.compiled
    return step


def make_sync_step(scheme, mesh, shardings):
    """sync(state, groups, weights_R) -> (state, metrics with a leading R axis), compiled once per groups.

    weights_R: 1/n for each of the n islands taking part, 0 for an island that dropped out.
    """
    def build(groups: frozenset):
        def island_sync(state: TrainState, weight):
            island, outer, metrics = scheme.sync(state.islands, state.outer, state.step, groups, weight)
            return state.replace(islands=island, outer=outer), metrics

        return jax.jit(per_island(island_sync, mesh), donate_argnums=0, out_shardings=(shardings, None))

    weights_sharding = NamedSharding(mesh, P("replica"))
    per_groups = _compiled_per_key(build, lambda program, state, weights: program(
        state, jax.device_put(np.asarray(weights, np.float32), weights_sharding)))

    def sync(state, groups: frozenset, weights):
        return per_groups(groups, state, weights)

    sync.build, sync.compiled = build, per_groups.compiled
    return sync


def make_eval_step(nats_fn, token_bytes, mesh):
    """eval(params_R, rows_RNBT1) -> per-island (sum nats, sum nats over byte-bearing targets, bytes, tokens).

    One program scans all N validation batches: on CPU, several collective programs in flight at once
    can deadlock the fake devices' shared thread pool. Islands do not talk: the host adds their sums.
    """
    token_bytes = np.asarray(token_bytes)  # a numpy constant: a captured jax array would carry the outer mesh

    def island_eval(params, rows_NBT1):
        def one_batch(total, rows_BT1):
            rows_BT1 = jax.lax.with_sharding_constraint(rows_BT1, P("fsdp"))
            targets = rows_BT1[:, 1:]
            nats = nats_fn(params, rows_BT1[:, :-1], targets)
            nbytes = jnp.asarray(token_bytes)[targets]
            sums = jnp.stack([nats.sum(), jnp.where(nbytes > 0, nats, 0.0).sum(),
                              nbytes.sum().astype(jnp.float32), jnp.float32(nats.size)])
            return total + sums, None

        zeros = jax.lax.pcast(jnp.zeros(4, jnp.float32), "replica", to="varying")  # the carry differs per island
        return jax.lax.scan(one_batch, zeros, rows_NBT1)[0]

    return jax.jit(per_island(island_eval, mesh))
