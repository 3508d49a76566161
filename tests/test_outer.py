"""Outer schemes: equivalences, schedules, a NumPy Nesterov reference, identical starts, bad input."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaximus import UserError
from jaximus.mesh import batch_sharding, make_mesh
from jaximus.outer import make_sync_step
from jaximus.state import init_state
from jaximus.step import make_train_step
from outer_optimizers import make_scheme
from outer_optimizers.diloco import make_outer_optimizer


def simulate(nanochat, cfg, steps, tx=None, seed=0, present=None):
    """The training loop's composition (inner step, then a sync when due) on fixed random batches."""
    R = cfg.parallel.replica
    mesh = make_mesh(R, cfg.parallel.fsdp)
    tx = tx or nanochat["optimizer"].make_optimizer(cfg)[0]
    scheme = make_scheme(cfg, tx)
    rows = np.random.default_rng(seed).integers(0, 512, (steps, cfg.data.batch_size, 33), dtype=np.int32)
    with jax.set_mesh(mesh):
        init = lambda k: nanochat["model"].init_model_weights(cfg, k)  # noqa: E731
        state, shardings = init_state(init, tx, mesh, cfg.parallel.strategy, jax.random.key(0), scheme.init_outer)
        scheme.check_inner_state(jax.tree.map(lambda x: x[0], state["islands"]["opt_state"]))
        train = make_train_step(nanochat["model"].make_model_forward(cfg), tx, mesh, shardings["islands"],
                                grad_hook=scheme.grad_hook)
        sync = make_sync_step(scheme, mesh, shardings)
        history = []
        for i in range(steps):
            islands, _ = train(state["islands"], jax.device_put(rows[i].reshape(R, -1, 33), batch_sharding(mesh)))
            state = {**jax.block_until_ready({"islands": islands}), "outer": state["outer"]}
            groups = scheme.due(i + 1)
            if groups:
                weights = np.full(R, 1 / R) if present is None else present(i + 1)
                islands, outer, _ = jax.block_until_ready(sync(state["islands"], state["outer"], groups, weights))
                state = {"islands": islands, "outer": outer}
            history.append(jax.device_get(state["islands"]["params"]))
        return jax.device_get(state), history


def assert_trees_close(a, b, **tol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol)


def test_diloco_h1_plain_outer_equals_sync_dp(nanochat, tiny_cfg):
    sgd = optax.sgd(0.05)
    outer = ["outer.sync_every=1", "outer.lr=1.0", "outer.momentum=0.0"]
    diloco, _ = simulate(nanochat, tiny_cfg("outer.name='diloco'", *outer), 4, tx=sgd)
    sync, _ = simulate(nanochat, tiny_cfg("outer.name='sync'"), 4, tx=sgd)
    assert_trees_close(diloco["islands"]["params"], sync["islands"]["params"], rtol=1e-4, atol=1e-6)
    assert_trees_close(diloco["outer"]["params"], sync["islands"]["params"], rtol=1e-4, atol=1e-6)


def test_one_island_diloco_equals_plain_training(nanochat, tiny_cfg):
    one = ["parallel.replica=1", "parallel.fsdp=8"]
    diloco, _ = simulate(nanochat, tiny_cfg(*one, "outer.name='diloco'", "outer.sync_every=3", "outer.lr=1.0",
                                            "outer.momentum=0.0"), 6)
    plain, _ = simulate(nanochat, tiny_cfg(*one, "outer.name='sync'"), 6)
    assert_trees_close(diloco["islands"]["params"], plain["islands"]["params"], rtol=1e-4, atol=1e-6)


def test_islands_diverge_between_syncs_and_agree_after(nanochat, tiny_cfg):
    state, history = simulate(nanochat, tiny_cfg("outer.name='diloco'", "outer.sync_every=3"), 6)
    for step, params in enumerate(history, start=1):
        head = params["lm_head"]
        same = all(np.array_equal(head[0], head[r]) for r in range(1, 4))
        assert same == (step % 3 == 0), step
    np.testing.assert_array_equal(history[-1]["wte"][0], state["outer"]["params"]["wte"][0])


def test_desloc_with_equal_periods_equals_local_adam(nanochat, tiny_cfg):
    adamw = optax.adamw(0.01, b1=0.8, b2=0.95)
    periods = ["outer.sync_every=2", "outer.first_moment_every=2", "outer.second_moment_every=2"]
    desloc, _ = simulate(nanochat, tiny_cfg("outer.name='desloc'", *periods), 4, tx=adamw)
    local_adam, _ = simulate(nanochat, tiny_cfg("outer.name='local_adam'", "outer.sync_every=2"), 4, tx=adamw)
    assert_trees_close(desloc["islands"], local_adam["islands"], rtol=1e-6, atol=1e-8)
    # and differs once the moment periods differ
    slow, _ = simulate(nanochat, tiny_cfg("outer.name='desloc'", "outer.sync_every=2"), 4, tx=adamw)
    assert not np.allclose(slow["islands"]["opt_state"][0].nu["wte"], local_adam["islands"]["opt_state"][0].nu["wte"],
                           rtol=1e-3, atol=0)


def test_local_sgd_averages_parameters(nanochat, tiny_cfg):
    state, history = simulate(nanochat, tiny_cfg("outer.name='local_sgd'", "outer.sync_every=2"), 3)
    before_sync = simulate(nanochat, tiny_cfg("outer.name='local_sgd'", "outer.sync_every=100"), 2)[1][-1]
    np.testing.assert_allclose(history[1]["lm_head"][2], before_sync["lm_head"].mean(0), rtol=1e-5, atol=1e-7)


def test_sync_schedules(tiny_cfg):
    tx = optax.adamw(1e-3)
    diloco = make_scheme(tiny_cfg("outer.name='diloco'", "outer.sync_every=3"), tx)
    assert [s for s in range(1, 13) if diloco.due(s)] == [3, 6, 9, 12]
    desloc = make_scheme(tiny_cfg("outer.name='desloc'", "outer.sync_every=2"), tx)
    desloc.check_inner_state(tx.init({"w": jnp.zeros(3)}))
    due = {s: sorted(desloc.due(s)) for s in range(1, 25) if desloc.due(s)}
    assert [s for s, g in due.items() if "params" in g] == list(range(2, 25, 2))  # K_x = 2
    assert [s for s, g in due.items() if "mu" in g] == [6, 12, 18, 24]  # K_u = 3 K_x
    assert [s for s, g in due.items() if "nu" in g] == [12, 24]  # K_v = 6 K_x
    assert not make_scheme(tiny_cfg("outer.name='sync'"), tx).due(5)


def test_nesterov_outer_step_matches_numpy(tiny_cfg):
    tx = make_outer_optimizer(tiny_cfg("outer.name='diloco'").outer)  # lr 0.7, momentum 0.9, Nesterov
    theta = {"a": jnp.array([1.0, -2.0]), "b": jnp.array([[0.5]])}
    deltas = [{"a": jnp.array([0.1, 0.2]), "b": jnp.array([[-0.3]])},
              {"a": jnp.array([-0.05, 0.4]), "b": jnp.array([[0.2]])}, {"a": jnp.array([0.3, 0.0]), "b": jnp.array([[0.1]])}]
    state = tx.init(theta)
    ref = {k: np.asarray(v, np.float64) for k, v in theta.items()}
    v = {k: np.zeros_like(x) for k, x in ref.items()}
    for delta in deltas:
        updates, state = tx.update(delta, state, theta)
        theta = optax.apply_updates(theta, updates)
        for k in ref:  # ALGORITHMS.md §2.3: v <- mu v + delta; theta <- theta - lr (delta + mu v)
            d = np.asarray(delta[k], np.float64)
            v[k] = 0.9 * v[k] + d
            ref[k] = ref[k] - 0.7 * (d + 0.9 * v[k])
    for k in ref:
        np.testing.assert_allclose(np.asarray(theta[k]), ref[k], rtol=1e-6)


def test_islands_start_identical(nanochat, tiny_cfg):
    cfg = tiny_cfg("outer.name='diloco'")
    mesh = make_mesh(4, 2)
    tx = nanochat["optimizer"].make_optimizer(cfg)[0]
    with jax.set_mesh(mesh):
        state, _ = init_state(lambda k: nanochat["model"].init_model_weights(cfg, k), tx, mesh, "fsdp",
                              jax.random.key(0), make_scheme(cfg, tx).init_outer)
    for leaf in jax.tree.leaves(jax.device_get(state)):
        for r in range(1, 4):
            np.testing.assert_array_equal(leaf[0], leaf[r])


@pytest.mark.parametrize("overrides,needle", [
    (["outer.name='fedfoo'"], "sync, diloco, local_sgd, local_adam, desloc"),
    (["outer.name='diloco'", "outer.sync_every=0"], "outer.sync_every=0"),
    (["outer.name='local_sgd'", "outer.sync_every=-3"], "outer.sync_every=-3"),
    (["outer.name='diloco'", "outer.lr=-0.1"], "outer.lr=-0.1"),
    (["outer.name='desloc'", "outer.first_moment_every=2.5"], "outer.first_moment_every=2.5"),
    (["outer.name='desloc'", "outer.second_moment_every=0"], "outer.second_moment_every=0"),
    (["outer.name='diloco'", "outer.optimizer='nosuch'"], "outer.optimizer='nosuch'"),
])
def test_bad_outer_config(tiny_cfg, overrides, needle):
    with pytest.raises(UserError, match=needle.replace("(", r"\(")) as err:
        make_scheme(tiny_cfg(*overrides), optax.adamw(1e-3))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["local_adam", "desloc"])
def test_moment_schemes_need_moments(tiny_cfg, name):
    scheme = make_scheme(tiny_cfg(f"outer.name='{name}'"), optax.sgd(0.1))
    with pytest.raises(UserError, match=f"outer.name={name}: syncs optimizer moment buffers"):
        scheme.check_inner_state(optax.sgd(0.1).init({"w": jnp.zeros(3)}))
    make_scheme(tiny_cfg("outer.name='diloco'"), optax.sgd(0.1)).check_inner_state(())  # DiLoCo needs none


def test_local_sgd_reset_inner_optimizer(nanochat, tiny_cfg):
    kept, _ = simulate(nanochat, tiny_cfg("outer.name='local_sgd'", "outer.sync_every=2"), 2)
    reset, _ = simulate(nanochat, tiny_cfg("outer.name='local_sgd'", "outer.sync_every=2", "outer.reset_inner_opt=True"), 2)
    momentum = lambda s: s["islands"]["opt_state"].inner_states["muon"].inner_state[0].momentum  # noqa: E731
    assert all(not np.any(x) for x in jax.tree.leaves(momentum(reset)))  # Photon's reset: fresh state
    assert any(np.any(x) for x in jax.tree.leaves(momentum(kept)))
    assert np.any(kept["islands"]["opt_state"].inner_states["unembedding"].inner_state[0].mu["lm_head"])
    assert not np.any(reset["islands"]["opt_state"].inner_states["unembedding"].inner_state[0].mu["lm_head"])
    assert_trees_close(reset["islands"]["params"], kept["islands"]["params"], rtol=1e-6)


def test_dropout_mean_uses_only_present_islands(nanochat, tiny_cfg):
    cfg = tiny_cfg("outer.name='local_sgd'", "outer.sync_every=2")
    _, history = simulate(nanochat, cfg, 2, present=lambda step: np.array([1, 1, 0, 1]) / 3)
    before = simulate(nanochat, tiny_cfg("outer.name='local_sgd'", "outer.sync_every=100"), 2)[1][-1]
    expected = before["lm_head"][[0, 1, 3]].mean(0)
    for r in range(4):  # the absent island re-joins from the mean of the others
        np.testing.assert_allclose(history[-1]["lm_head"][r], expected, rtol=1e-5, atol=1e-7)
    assert not np.allclose(before["lm_head"].mean(0), expected, rtol=1e-3, atol=0)


def test_sync_weights_seeded():
    from outer_optimizers import sync_weights
    np.testing.assert_array_equal(sync_weights(0, 5, 4, 0.0), np.full(4, 0.25))
    draws = [sync_weights(7, s, 4, 0.5) for s in range(1, 200)]
    assert [None if d is None else d.tolist() for d in draws] == \
        [None if d is None else d.tolist() for d in (sync_weights(7, s, 4, 0.5) for s in range(1, 200))]
    present = [int((d > 0).sum()) for d in draws if d is not None]
    assert 1.5 < np.mean(present) < 2.5 and any(d is None for d in draws)  # about half; sometimes nobody
    assert all(abs(d.sum() - 1) < 1e-12 for d in draws if d is not None)
