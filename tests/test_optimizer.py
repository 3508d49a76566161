"""Muon and AdamW against NumPy references; routing; schedules at their turning points; sharded Muon."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaximus.mesh import make_mesh
from jaximus.optim.muon import NS_COEFFS, scale_by_muon
from jaximus.optim.schedules import lr_multiplier, muon_momentum


def numpy_muon_update(g, buf, beta, steps=5, eps=1e-7):
    """nanochat@3a5e0bc Muon on one (in, out) matrix, float64; returns (update before lr, new buf)."""
    a, b, c = NS_COEFFS
    buf = beta * buf + (1 - beta) * g
    x = (1 - beta) * g + beta * buf
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    x = x / (np.linalg.norm(x) + eps)
    for _ in range(steps):
        s = x @ x.T
        x = a * x + (b * s + c * s @ s) @ x
    x = x.T if tall else x
    return x * math.sqrt(max(1.0, g.shape[1] / g.shape[0])), buf


def numpy_adamw_update(g, m, v, t, lr, b1=0.8, b2=0.95, eps=1e-10):
    m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
    return -lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps), m, v


def _grads(weights, seed=0):
    leaves, tree = jax.tree.flatten(weights)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(tree, [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


def test_newton_schulz_singular_values_in_band():
    g = jax.random.normal(jax.random.key(0), (3, 64, 256))
    from jaximus.optim.muon import newton_schulz
    s = np.linalg.svd(np.asarray(newton_schulz(g, 5, dtype=jnp.float32)), compute_uv=False)
    assert s.min() > 0.6 and s.max() < 1.25  # Keller Jordan's coefficients land in (0.68, 1.13)


def test_nanochat_optimizer_matches_numpy(nanochat, tiny_cfg):
    cfg = tiny_cfg("max_steps=100")
    weights = nanochat["model"].init_model_weights(cfg, jax.random.key(0))
    tx, resolved, schedules = nanochat["optimizer"].make_optimizer(cfg)
    state = tx.init(weights)
    np_state = {"bufs": {}, "adam": {}}
    for t in range(2):
        grads = _grads(weights, seed=t)
        updates, state = jax.jit(tx.update)(grads, state, weights)
        beta = 0.85 + 0.1 * t / 300  # nanochat's ramp at optax count t
        for group in ("attn", "mlp"):
            for name, g in grads["blocks"][group].items():
                for layer in range(g.shape[0]):
                    key = (group, name, layer)
                    ref, np_state["bufs"][key] = numpy_muon_update(
                        np.asarray(g[layer], np.float64), np_state["bufs"].get(key, 0.0), beta)
                    got = np.asarray(updates["blocks"][group][name][layer])
                    np.testing.assert_allclose(got, -0.02 * ref, rtol=2e-3, atol=2e-6)
        for name, group in (("wte", "embedding"), ("lm_head", "unembedding")):
            m, v = np_state["adam"].get(name, (0.0, 0.0))
            lr = {"embedding": 0.2, "unembedding": 0.004}[group] * (cfg.model.width / 768) ** -0.5
            ref, m, v = numpy_adamw_update(np.asarray(grads[name], np.float64), m, v, t + 1, lr)
            np_state["adam"][name] = (m, v)
            np.testing.assert_allclose(np.asarray(updates[name]), ref, rtol=1e-4, atol=1e-4 * lr)  # f32 cancellation in m
    assert resolved["lrs"]["muon"] == 0.02


def test_muon_shape_scale_at_d20():
    g = {"c_fc": jnp.ones((1280, 5120)), "c_q": jnp.ones((1280, 1280)), "c_proj": jnp.ones((5120, 1280))}
    tx = scale_by_muon(0.95, ns_dtype=jnp.float32)
    u, _ = tx.update(g, tx.init(g))
    rms = {k: float(jnp.sqrt(jnp.mean(v**2)) * math.sqrt(max(v.shape))) for k, v in u.items()}
    # one orthogonalized direction has RMS 1/sqrt(max dim); the scale multiplies c_fc (fan_out > fan_in) by 2
    assert rms["c_fc"] == pytest.approx(2 * rms["c_proj"], rel=1e-3)


def test_partition_routes_embeddings_to_adamw(nanochat, tiny_cfg):
    weights = nanochat["model"].init_model_weights(tiny_cfg(), jax.random.key(0))
    labels = nanochat["optimizer"].param_labels(weights)
    assert jax.tree.structure(labels) == jax.tree.structure(weights)  # covers every parameter
    assert labels["wte"] == "embedding" and labels["lm_head"] == "unembedding"
    assert set(jax.tree.leaves(labels["blocks"])) == {"muon"}


def test_schedules_turning_points(nanochat, tiny_cfg):
    lrm = lr_multiplier(100, 0, 0.2, 0.0)
    assert [float(lrm(s)) for s in (0, 50, 80, 90, 99)] == pytest.approx([1, 1, 1, 0.5, 0.05])  # nanochat: (N - s) / warmdown
    warm = lr_multiplier(100, 10, 0.2, 0.1)
    assert [float(warm(s)) for s in (0, 4, 9, 10, 80, 90)] == pytest.approx([0.1, 0.5, 1, 1, 1, 0.55])
    mom = muon_momentum(0.85, 0.95, 300)
    assert [float(mom(s)) for s in (0, 150, 300, 1000)] == pytest.approx([0.85, 0.90, 0.95, 0.95])
    # logged = applied: the AdamW step on a constant gradient moves by exactly the scheduled lr
    cfg = tiny_cfg("max_steps=10", "optimizer.warmup_steps=4", "optimizer.warmdown_frac=0.5")
    tx, _, schedules = nanochat["optimizer"].make_optimizer(cfg)
    weights = nanochat["model"].init_model_weights(cfg, jax.random.key(0))
    grads = jax.tree.map(jnp.ones_like, weights)
    state = tx.init(weights)
    for step in range(10):
        updates, state = tx.update(grads, state, weights)
        assert float(-updates["wte"][0, 0]) == pytest.approx(float(schedules["embedding"](step)), rel=1e-5)


def test_muon_on_fsdp_sharded_matrices():
    """Layer-sharded Newton-Schulz on matrices split over fsdp equals the unsharded update."""
    mesh = make_mesh(1, 8)
    g = {"a": jax.random.normal(jax.random.key(0), (3, 64, 128)), "b": jax.random.normal(jax.random.key(1), (2, 64, 128)),
         "c": jax.random.normal(jax.random.key(2), (4, 128, 64))}
    plain = scale_by_muon(0.9, ns_dtype=jnp.float32)
    expected, _ = plain.update(g, plain.init(g))
    sharded_tx = scale_by_muon(0.9, ns_dtype=jnp.float32, shard_axis="fsdp", shard_size=8)
    with jax.set_mesh(mesh):
        gs = jax.device_put(g, NamedSharding(mesh, P(None, "fsdp", None)))
        step = jax.jit(lambda g, s: sharded_tx.update(g, s))
        got, _ = step(gs, sharded_tx.init(gs))
        hlo = step.lower(gs, sharded_tx.init(gs)).compile().as_text()
    for k in g:
        np.testing.assert_allclose(np.asarray(got[k]), np.asarray(expected[k]), rtol=1e-4, atol=1e-6)
    assert "all-to-all" in hlo  # whole matrices moved to devices, not Newton-Schulz on split operands
