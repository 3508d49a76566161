"""The nanochat model: parameter count, FLOPs, causality, init statistics, GQA, bf16, a NumPy reference."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaximus.config import finalize_config


def d20(nanochat):
    return finalize_config(nanochat["config"], ["model.depth=20", "model.vocab_size=65536", "data.seq_len=2048"])


def test_d20_parameter_count_and_flops(nanochat):
    cfg = d20(nanochat)
    shapes = jax.eval_shape(lambda k: nanochat["model"].init_model_weights(cfg, k), jax.random.key(0))
    assert sum(x.size for x in jax.tree.leaves(shapes)) == 560_988_160  # docs/nanochat.md §10
    assert shapes["wte"].shape == (65536, 1280) and shapes["lm_head"].shape == (1280, 65536)
    assert cfg.model.n_head == 10 and cfg.model.head_dim == 128
    assert nanochat["model"].flops_per_token(cfg) == 3_491_758_080


def test_init_statistics(nanochat):
    for dist in ("normal", "uniform"):
        w = nanochat["model"].init_model_weights(finalize_config(nanochat["config"], [
            "model.depth=4", f"model.init_dist='{dist}'"]), jax.random.key(0))  # width 256
        c_fc = np.asarray(w["blocks"]["mlp"]["c_fc"])
        std = 1 / math.sqrt(256) * min(1.0, math.sqrt(1024 / 256))  # fan_in 256, fan_out 1024
        assert abs(c_fc.mean()) < 3e-4 and c_fc.std() == pytest.approx(std, rel=0.01)
        assert c_fc.min() < 0 < c_fc.max()  # symmetric, not U[0, b)
        c_q = np.asarray(w["blocks"]["attn"]["c_q"])
        assert c_q.std() == pytest.approx(1 / 16, rel=0.01)  # nanochat: 1/sqrt(1280) at d20
        assert np.asarray(w["wte"]).std() == pytest.approx(1.0, rel=0.01)
        for zero in (w["lm_head"], w["blocks"]["attn"]["c_proj"], w["blocks"]["mlp"]["c_proj"]):
            assert not np.any(np.asarray(zero))


def _random_weights(model, cfg, key=1):
    w = model.init_model_weights(cfg, jax.random.key(0))
    leaves, tree = jax.tree.flatten(w)
    keys = jax.random.split(jax.random.key(key), len(leaves))
    return jax.tree.unflatten(tree, [0.1 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


def test_causal(nanochat, tiny_cfg):
    cfg = tiny_cfg()
    forward = nanochat["model"].make_model_forward(cfg)
    w = _random_weights(nanochat["model"], cfg)
    x = jax.random.randint(jax.random.key(2), (2, 16), 0, 512)
    y = x.at[:, 9:].set((x[:, 9:] + 7) % 512)  # change every position from 9 on
    a, b = forward(x, w), forward(y, w)
    np.testing.assert_array_equal(np.asarray(a[:, :9]), np.asarray(b[:, :9]))
    assert not np.allclose(np.asarray(a[:, 9:]), np.asarray(b[:, 9:]))


def _numpy_forward(w, x, n_head, n_kv_head, softcap=15.0, base=10000.0):
    """nanochat's forward written directly in NumPy (float64)."""
    w = jax.tree.map(lambda a: np.asarray(a, np.float64), w)

    def norm(h):
        return h / np.sqrt(np.mean(h * h, -1, keepdims=True) + np.finfo(np.float32).eps)

    B, T = x.shape
    K = w["blocks"]["attn"]["c_q"].shape[-1] // n_head
    inv = base ** (-np.arange(0, K, 2) / K)
    ang = np.outer(np.arange(T), inv)
    cos = np.asarray(jnp.asarray(np.cos(ang)).astype(jnp.bfloat16).astype(jnp.float32), np.float64)
    sin = np.asarray(jnp.asarray(np.sin(ang)).astype(jnp.bfloat16).astype(jnp.float32), np.float64)

    def rope(t):
        a, b = t[..., :K // 2], t[..., K // 2:]
        c, s = cos[None, :, None], sin[None, :, None]
        return np.concatenate([a * c + b * s, b * c - a * s], -1)

    h = norm(w["wte"][x])
    for i in range(w["blocks"]["attn"]["c_q"].shape[0]):
        at, ml = jax.tree.map(lambda a: a[i], w["blocks"]["attn"]), jax.tree.map(lambda a: a[i], w["blocks"]["mlp"])
        u = norm(h)
        q = norm(rope((u @ at["c_q"]).reshape(B, T, n_head, K)))
        k = norm(rope((u @ at["c_k"]).reshape(B, T, n_kv_head, K)))
        v = (u @ at["c_v"]).reshape(B, T, n_kv_head, K)
        k, v = np.repeat(k, n_head // n_kv_head, 2), np.repeat(v, n_head // n_kv_head, 2)
        s = np.einsum("bthk,bshk->bhts", q, k) / np.sqrt(K) + np.triu(np.full((T, T), -np.inf), 1)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        h = h + np.einsum("bhts,bshk->bthk", p, v).reshape(B, T, -1) @ at["c_proj"]
        h = h + np.maximum(norm(h) @ ml["c_fc"], 0) ** 2 @ ml["c_proj"]
    logits = norm(h) @ w["lm_head"]
    return softcap * np.tanh(logits / softcap)


@pytest.mark.parametrize("heads", [(2, 2), (2, 1)])  # MHA and MQA
def test_matches_numpy_reference(nanochat, tiny_cfg, heads):
    cfg = tiny_cfg(f"model.n_head={heads[0]}", f"model.n_kv_head={heads[1]}", "model.head_dim=32")
    w = _random_weights(nanochat["model"], cfg)
    x = np.asarray(jax.random.randint(jax.random.key(3), (2, 12), 0, 512))
    ours = np.asarray(nanochat["model"].make_model_forward(cfg)(jnp.asarray(x), w))
    ref = _numpy_forward(w, x, *heads)
    np.testing.assert_allclose(ours, ref, rtol=2e-4, atol=2e-4)


def test_bf16_compute_close_to_f32(nanochat, tiny_cfg):
    cfg32, cfg16 = tiny_cfg(), tiny_cfg("model.compute_dtype='bfloat16'")
    w = _random_weights(nanochat["model"], cfg32)
    x = jax.random.randint(jax.random.key(4), (2, 16), 0, 512)
    a = nanochat["model"].make_model_forward(cfg32)(x, w)
    b = nanochat["model"].make_model_forward(cfg16)(x, w)
    assert b.dtype == jnp.float32 and jax.tree.leaves(w)[0].dtype == jnp.float32
    assert 0 < float(jnp.mean(jnp.abs(a - b))) < 0.05 * float(jnp.mean(jnp.abs(a)))  # bf16 rounding, no more
