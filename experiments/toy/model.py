"""Toy objectives on synthetic data (the objective hook: jaximus/objective.py), what outer optimizers are tested on.

The weights are one vector theta of layers x dim entries, stored as {"blocks": {"w": (layers, dim)}}: stacked
on a layer axis as the schemes expect, so Streaming DiLoCo has layers to deal to its fragments.

    quadratic  loss = 1/2 |theta - x|^2 over island r's rows x ~ N(c_r, noise^2); the islands' optima differ,
               c_r = spread (r - (R - 1) / 2) in every entry, and the global optimum is their mean, 0
    linear     loss = 1/2 (<theta, x> - y)^2, y = <theta*, x> + noise, x ~ N(0, 1): one theta* for all islands
    constant   loss = gradient x sum(theta): every weight's gradient is `gradient`, whatever the data
               (torchft's mocked Streaming DiLoCo regression, replayed in tests/test_toy.py)
"""
import jax.numpy as jnp
import numpy as np

from jaximus.objective import Objective

VALIDATION = 2**31 - 1  # the step index of the held-out rows: a stream no training step reads


def init_model_weights(cfg, key):
    m = cfg.model
    return {"blocks": {"w": jnp.full((m.layers, m.dim), m.init, jnp.float32)}}


def make_model_forward(cfg):
    """<theta, x> per row: the linear model's prediction (the contract's forward)."""
    def forward(x, weights, mask=None):
        return x @ weights["blocks"]["w"].reshape(-1)

    return forward


def make_objective(cfg) -> Objective:
    m, R, rows = cfg.model, cfg.parallel.replica, cfg.data.batch_size // cfg.parallel.replica
    n, forward = m.layers * m.dim, make_model_forward(cfg)
    target = np.random.default_rng([cfg.seed, VALIDATION + 1]).normal(size=n).astype(np.float32)  # linear's theta*

    def sample(step: int, island: int) -> np.ndarray:
        rng = np.random.default_rng([cfg.seed, step, island])  # a function of the step and island only
        if m.objective == "quadratic":
            return (m.spread * (island - (R - 1) / 2) + m.noise * rng.normal(size=(rows, n))).astype(np.float32)
        x = rng.normal(size=(rows, n)).astype(np.float32)
        y = x @ target + m.noise * rng.normal(size=rows).astype(np.float32)
        return np.concatenate([x, y[:, None]], axis=1)  # constant: rows unused

    def loss(params, batch):
        theta = params["blocks"]["w"].reshape(-1)
        if m.objective == "quadratic":
            return 0.5 * jnp.mean(jnp.sum((theta - batch) ** 2, axis=-1))
        if m.objective == "linear":
            return 0.5 * jnp.mean((forward(batch[:, :-1], params) - batch[:, -1]) ** 2)
        return m.gradient * jnp.sum(theta)

    return Objective(loss=loss, batch=sample, val_batch=lambda island: sample(VALIDATION, island),
                     description=f"toy {m.objective} objective ({n} weights, {rows} rows per island and step)")
