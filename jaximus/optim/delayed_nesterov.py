"""Delayed Nesterov (Async Local-SGD, arXiv 2401.09135, Algorithm 3): an outer optimizer for arrivals.

Every arrival's pseudo-gradient g moves the parameters by its share g / N at once, so an island that
pulls between arrivals sees the progress; the momentum m moves only every N-th arrival, on the mean of
the N buffered pseudo-gradients, so a stale g never enters it alone:

    D <- D + g
    every N-th arrival:  m <- beta m + D / N;  theta <- theta - lr ((1 - c (N - 1)) beta m + g / N);  D <- 0
    otherwise:           theta <- theta - lr (c beta m + g / N)

With c = 0 a buffer of N arrivals moves theta by one optax-form Nesterov step on their mean; N = 1 is
Nesterov per arrival (optax.sgd(lr, beta, nesterov=True)).
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class DelayedNesterovState(NamedTuple):
    count: jax.Array  # arrivals so far
    momentum: optax.Updates  # m, moved every N-th arrival
    buffer: optax.Updates  # D, the sum of the pseudo-gradients since the last milestone


def delayed_nesterov(learning_rate: float, momentum: float, buffer_size: int, c: float = 0.0) -> optax.GradientTransformation:
    N = buffer_size

    def init(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return DelayedNesterovState(jnp.zeros([], jnp.int32), zeros, zeros)

    def update(g, state, params=None):
        del params
        milestone = (state.count + 1) % N == 0
        buffer = jax.tree.map(jnp.add, state.buffer, g)
        m = jax.tree.map(lambda m, d: jnp.where(milestone, momentum * m + d / N, m), state.momentum, buffer)
        share = jnp.where(milestone, 1 - c * (N - 1), c)  # of beta m applied at this arrival
        updates = jax.tree.map(lambda m, g: -learning_rate * (share * momentum * m + g / N), m, g)
        buffer = jax.tree.map(lambda d: jnp.where(milestone, jnp.zeros_like(d), d), buffer)
        return updates, DelayedNesterovState(state.count + 1, m, buffer)

    return optax.GradientTransformation(init, update)
