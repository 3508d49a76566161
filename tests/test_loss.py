"""The chunked, fused head: loss, gradients and per-token nats against NumPy and autodiff of the plain formula."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaximus import loss
from jaximus.islands import per_island
from jaximus.mesh import make_mesh

R, N, D, V = 2, 96, 16, 40  # 48 rows per device under fsdp 4; CHUNK_LOGITS below makes chunks of 12 rows


def _numpy_nats(h, w, t, softcap):
    """-log softmax(softcap * tanh(h w / softcap))[t] in float64."""
    z = h.astype(np.float64) @ w.astype(np.float64)
    z = z if softcap is None else softcap * np.tanh(z / softcap)
    lse = np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1)) + z.max(-1)
    return lse - z[np.arange(len(t)), t]


def _plain_loss(h, w, t, softcap):
    z = (h @ w).astype(jnp.float32)
    z = z if softcap is None else softcap * jnp.tanh(z / softcap)
    return jnp.mean(jax.nn.logsumexp(z, -1) - jnp.take_along_axis(z, t[:, None], -1)[:, 0])


@pytest.mark.parametrize("fsdp", [1, 4])
@pytest.mark.parametrize("softcap", [2.0, None])
def test_fused_head_matches_numpy_and_autodiff(monkeypatch, fsdp, softcap):
    monkeypatch.setattr(loss, "CHUNK_LOGITS", 12 * V)  # several chunks per device, so the loop is exercised
    rng = np.random.default_rng(0)
    h, w = rng.normal(size=(R, N, D)).astype(np.float32), rng.normal(size=(R, D, V)).astype(np.float32)
    t = rng.integers(0, V, (R, N)).astype(np.int32)
    mesh = make_mesh(R, fsdp) if R * fsdp == 8 else jax.sharding.Mesh(
        np.array(jax.devices()[:R]).reshape(R, 1), ("replica", "fsdp"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    with jax.set_mesh(mesh):
        hs, ws, ts = (jax.device_put(x, NamedSharding(mesh, spec)) for x, spec in
                      ((h, P("replica", "fsdp")), (w, P("replica", None, "fsdp")), (t, P("replica", "fsdp"))))

        def both(fn):
            return jax.jit(per_island(jax.value_and_grad(lambda h, w, t: fn(h, w, t, softcap), argnums=(0, 1)), mesh))

        (ours, (dh, dw)) = both(loss.head_loss)(hs, ws, ts)
        (plain, (dh_ref, dw_ref)) = both(_plain_loss)(hs, ws, ts)
        nats = jax.jit(per_island(lambda h, w, t: loss.head_nats(h, w, t, softcap), mesh))(hs, ws, ts)
    expected = np.stack([_numpy_nats(h[r], w[r], t[r], softcap) for r in range(R)])
    np.testing.assert_allclose(np.asarray(nats), expected, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(np.asarray(ours), expected.mean(-1), rtol=2e-5)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(plain), rtol=2e-6)
    np.testing.assert_allclose(np.asarray(dh), np.asarray(dh_ref), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(np.asarray(dw), np.asarray(dw_ref), rtol=1e-4, atol=1e-7)


def test_fused_head_never_holds_the_logits():
    """The compiled loss and gradient need less scratch than one float32 copy of the (tokens, vocab) logits."""
    n, d, v = 4096, 64, 8192
    args = (jax.ShapeDtypeStruct((n, d), jnp.float32), jax.ShapeDtypeStruct((d, v), jnp.float32),
            jax.ShapeDtypeStruct((n,), jnp.int32))
    logits_bytes = n * v * 4

    def scratch(fn):
        grad = jax.jit(jax.value_and_grad(lambda h, w, t: fn(h, w, t, 15.0), argnums=(0, 1)))
        return grad.lower(*args).compile().memory_analysis().temp_size_in_bytes

    assert scratch(_plain_loss) > logits_bytes  # the oracle: the plain formula does hold them
    assert scratch(loss.head_loss) < logits_bytes / 2


def test_bf16_head_close_to_float32():
    rng = np.random.default_rng(1)
    h, w = rng.normal(size=(64, D)).astype(np.float32), 0.3 * rng.normal(size=(D, V)).astype(np.float32)
    t = rng.integers(0, V, 64).astype(np.int32)
    grad = jax.jit(jax.value_and_grad(loss.head_loss, argnums=(0, 1)), static_argnums=3)
    (l16, (dh16, dw16)), (l32, (dh32, dw32)) = (grad(h.astype(dt), w.astype(dt), t, 15.0)
                                                for dt in (jnp.bfloat16, jnp.float32))
    assert dh16.dtype == jnp.bfloat16 and dw16.dtype == jnp.bfloat16
    assert abs(float(l16) - float(l32)) < 0.02 * float(l32)
    for a, b in ((dh16, dh32), (dw16, dw32)):
        assert np.abs(np.asarray(a, np.float32) - np.asarray(b)).max() < 0.05 * np.abs(np.asarray(b)).max()


@pytest.mark.parametrize("experiment", ["nanochat", "llama", "gpt2"])
def test_objective_equals_the_logits_path(experiment):
    """make_objective's fused head (make_model_features) and the fallback from make_model_forward's logits agree
    in loss, per-token nats and every gradient leaf, with random weights (nanochat's zero lm_head made nonzero)."""
    from types import SimpleNamespace

    from conftest import ROOT, TINY

    from jaximus.build import load_config
    from jaximus.step import make_objective
    small = {"llama": ["model.width=32", "model.n_head=2", "model.n_kv_head=1", "model.head_dim=16",
                       "model.ffn_dim=64"], "gpt2": ["model.width=32", "model.n_head=2"], "nanochat": []}[experiment]
    cfg, exp = load_config(str(ROOT / "experiments" / experiment / "config.py"), [*TINY, *small])
    model = exp["model"]
    w = model.init_model_weights(cfg, jax.random.key(0))
    leaves, tree = jax.tree.flatten(w)
    w = jax.tree.unflatten(tree, [x + 0.05 * jax.random.normal(jax.random.key(i), x.shape) for i, x in enumerate(leaves)])
    batch = jax.random.randint(jax.random.key(9), (4, 33), 0, cfg.model.vocab_size)
    fused_loss, fused_nats = make_objective(model, cfg)
    plain_loss, plain_nats = make_objective(SimpleNamespace(make_model_forward=model.make_model_forward), cfg)
    (a, ga), (b, gb) = (jax.jit(jax.value_and_grad(f))(w, batch) for f in (fused_loss, plain_loss))
    np.testing.assert_allclose(float(a), float(b), rtol=1e-5)
    for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(np.asarray(fused_nats(w, batch[:, :-1], batch[:, 1:])),
                               np.asarray(plain_nats(w, batch[:, :-1], batch[:, 1:])), rtol=1e-5, atol=1e-5)
