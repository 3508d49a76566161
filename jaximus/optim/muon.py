"""Muon as nanochat@3a5e0bc does it, as an optax transformation, aware of FSDP-sharded matrices.

Momentum is the EMA/lerp form with a Nesterov lerp; the update is orthogonalized by a quintic
Newton-Schulz iteration and scaled by sqrt(max(1, fan_out / fan_in)). Learning rate is applied
outside (optax.scale_by_learning_rate) so one schedule drives every group.
"""
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

# Keller Jordan's quintic coefficients, as in nanochat@3a5e0bc (github.com/KellerJordan/Muon)
NS_COEFFS = (3.4445, -4.7750, 2.0315)


class MuonState(NamedTuple):
    count: jax.Array
    momentum: optax.Updates  # the first-moment buffer (outer schemes find it by this name)


def newton_schulz(g_NMK, steps: int, coeffs=NS_COEFFS, dtype=jnp.bfloat16, eps: float = 1e-7):
    """Batched orthogonalization of (N, m, n) matrices, each normalized by its own Frobenius norm."""
    a, b, c = coeffs
    x = g_NMK.astype(dtype)
    tall = x.shape[-2] > x.shape[-1]
    if tall:  # iterate on the wide orientation: the Gram matrix is the smaller one
        x = jnp.swapaxes(x, -1, -2)
    norm = jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=(-2, -1), keepdims=True))
    x = (x / (norm + eps).astype(dtype)).astype(dtype)
    for _ in range(steps):
        s = x @ jnp.swapaxes(x, -1, -2)
        x = a * x + (b * s + c * (s @ s)) @ x
    return jnp.swapaxes(x, -1, -2) if tall else x


def _orthogonalize_grouped(updates: list, steps, coeffs, dtype, shard_axis: str | None, shard_size: int):
    """Stack same-shape matrices, give each device whole matrices, run Newton-Schulz, scatter back.

    Under FSDP each matrix is split across the island; Newton-Schulz on split operands costs hundreds
    of small collectives. Resharding the stack over its matrix axis is one all-to-all each way.
    """
    out = [None] * len(updates)
    if shard_axis not in jax.sharding.get_abstract_mesh().axis_names:  # no mesh (a unit test): nothing to spread
        shard_axis = None
    groups: dict[tuple, list[int]] = {}
    for i, u in enumerate(updates):
        groups.setdefault(u.shape[-2:], []).append(i)
    for shape, idx in groups.items():
        stack = jnp.concatenate([updates[i].reshape(-1, *shape) for i in idx])
        n = stack.shape[0]
        if shard_axis is not None:
            pad = -n % shard_size
            stack = jnp.pad(stack, ((0, pad), (0, 0), (0, 0)))  # zero matrices stay zero under NS
            stack = jax.lax.with_sharding_constraint(stack, P(shard_axis, None, None))
        ortho = newton_schulz(stack, steps, coeffs, dtype)[:n].astype(stack.dtype)
        offset = 0
        for i in idx:
            size = updates[i].size // (shape[0] * shape[1])
            out[i] = ortho[offset:offset + size].reshape(updates[i].shape)
            offset += size
    return out


def scale_by_muon(momentum: Callable[[jax.Array], jax.Array] | float = 0.95, ns_steps: int = 5,
                  ns_coeffs=NS_COEFFS, ns_dtype=jnp.bfloat16, shard_axis: str | None = None,
                  shard_size: int = 1) -> optax.GradientTransformation:
    """Leaves are matrices, or stacks of matrices on leading axes ((L, in, out) for scanned blocks)."""
    momentum_fn = momentum if callable(momentum) else (lambda _: momentum)

    def init(params):
        return MuonState(jnp.zeros([], jnp.int32), jax.tree.map(jnp.zeros_like, params))

    def update(grads, state, params=None):
        beta = momentum_fn(state.count)
        buf = jax.tree.map(lambda m, g: beta * m + (1 - beta) * g, state.momentum, grads)  # buf.lerp_(g, 1-b)
        nesterov = jax.tree.map(lambda g, m: (1 - beta) * g + beta * m, grads, buf)  # g.lerp_(buf, b)
        leaves, treedef = jax.tree.flatten(nesterov)
        ortho = _orthogonalize_grouped(leaves, ns_steps, ns_coeffs, ns_dtype, shard_axis, shard_size)
        # nanochat's sqrt(max(1, rows/cols)) in PyTorch (out, in) terms = sqrt(max(1, fan_out/fan_in))
        scaled = [o * jnp.sqrt(jnp.maximum(1.0, o.shape[-1] / o.shape[-2])) for o in ortho]
        return jax.tree.unflatten(treedef, scaled), MuonState(optax.safe_increment(state.count), buf)

    return optax.GradientTransformation(init, update)
