"""Outer schemes through the real loop (the Run): equivalences, NumPy and PyTorch-rule oracles, resets, dropout."""
import re
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaximus import UserError
from jaximus.build import build, load_config
from jaximus.clock import present_islands
from jaximus.loop import advance
from jaximus.plan import Clock
from jaximus.state import IslandState
from outer_optimizers import make_scheme
from outer_optimizers.base import MU, NU, PARAMS


def drive(nanochat, cfg, steps, tx=None):
    """The real loop's step (inner step, then the scheme's sync when due) on the real data: (state, history)."""
    exp = nanochat if tx is None else {**nanochat, "optimizer": SimpleNamespace(make_optimizer=lambda c: (tx, {}, {}))}
    with build(cfg, exp) as run:
        state, history = run.state, []
        for step in range(steps):
            state, _, _ = advance(run, state, step)
            history.append(jax.device_get(state))
    return history[-1], history


def config(tmp_path, tiny, *overrides):
    return tiny(f"run.out_dir='{tmp_path}'", *overrides)


def assert_trees_close(a, b, **tol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol)


def test_diloco_h1_plain_outer_equals_sync_dp(nanochat, tiny_cfg, tmp_path):
    sgd = optax.sgd(0.05)
    outer = ["outer.sync_every=1", "outer.lr=1.0", "outer.momentum=0.0", "max_steps=4"]
    diloco, _ = drive(nanochat, config(tmp_path, tiny_cfg, "outer.name='diloco'", "run.name='d'", *outer), 4, tx=sgd)
    sync, _ = drive(nanochat, config(tmp_path, tiny_cfg, "outer.name='sync'", "run.name='s'", "max_steps=4"), 4, tx=sgd)
    assert_trees_close(diloco.islands.params, sync.islands.params, rtol=1e-4, atol=1e-6)
    assert_trees_close(diloco.outer.params, sync.islands.params, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["diloco", "local_sgd"])
def test_one_island_equals_plain_training(nanochat, tiny_cfg, tmp_path, name):
    """M = 1: DiLoCo with a plain outer step, and parameter averaging, are plain training; nothing is sent.
    Inner SGD: Muon's Newton-Schulz would amplify the outer step's float32 rounding past any tight tolerance."""
    one = ["parallel.replica=1", "parallel.fsdp=8", "max_steps=5", "outer.sync_every=2", "outer.lr=1.0",
           "outer.momentum=0.0"]
    sgd = optax.sgd(0.05)
    local, _ = drive(nanochat, config(tmp_path, tiny_cfg, *one, f"outer.name='{name}'", "run.name='a'"), 5, tx=sgd)
    plain, _ = drive(nanochat, config(tmp_path, tiny_cfg, *one, "outer.name='sync'", "run.name='b'"), 5, tx=sgd)
    assert_trees_close(local.islands.params, plain.islands.params, rtol=1e-4, atol=1e-6)


def test_islands_diverge_between_syncs_and_agree_after(nanochat, tiny_cfg, tmp_path):
    cfg = config(tmp_path, tiny_cfg, "outer.name='diloco'", "outer.sync_every=3", "max_steps=7")
    state, history = drive(nanochat, cfg, 7)
    for step, s in enumerate(history, start=1):
        head = s.islands.params["lm_head"]
        same = all(np.array_equal(head[0], head[r]) for r in range(1, 4))
        assert same == (step % 3 == 0 or step == 7), step  # step 7: the run's final sync
        assert int(s.step[0]) == step
    np.testing.assert_array_equal(history[-1].islands.params["wte"][0], state.outer.params["wte"][0])


def test_desloc_moment_syncs_match_numpy_means(nanochat, tiny_cfg, tmp_path):
    """First moments averaged at K_u = 4, second moments left alone, against a run that never syncs them."""
    adamw = optax.adamw(0.01, b1=0.8, b2=0.95)
    base = ["outer.name='desloc'", "outer.sync_every=2", "max_steps=4"]
    synced, _ = drive(nanochat, config(tmp_path, tiny_cfg, *base, "outer.first_moment_every=4",
                                       "outer.second_moment_every=8", "run.name='a'"), 4, tx=adamw)
    local, _ = drive(nanochat, config(tmp_path, tiny_cfg, *base, "outer.first_moment_every=100",
                                      "outer.second_moment_every=100", "run.name='b'"), 4, tx=adamw)
    mu, nu = synced.islands.opt_state[0].mu, synced.islands.opt_state[0].nu
    local_mu, local_nu = local.islands.opt_state[0].mu, local.islands.opt_state[0].nu
    for name in ("wte", "lm_head"):
        expected = np.mean(np.asarray(local_mu[name], np.float64), axis=0)
        for r in range(4):
            np.testing.assert_allclose(mu[name][r], expected, rtol=1e-5, atol=1e-9)
        np.testing.assert_array_equal(nu[name], local_nu[name])  # K_v = 8: not yet synced
        assert not np.allclose(local_nu[name][0], local_nu[name][1])  # islands' second moments do differ
    assert_trees_close(synced.islands.params, local.islands.params, rtol=1e-6, atol=1e-8)  # same until now


def test_local_sgd_averages_parameters(nanochat, tiny_cfg, tmp_path):
    averaged, _ = drive(nanochat, config(tmp_path, tiny_cfg, "outer.name='local_sgd'", "outer.sync_every=2",
                                         "max_steps=3", "run.name='a'"), 2)
    alone, _ = drive(nanochat, config(tmp_path, tiny_cfg, "outer.name='local_sgd'", "outer.sync_every=100",
                                      "max_steps=3", "run.name='b'"), 2)
    expected = np.mean(np.asarray(alone.islands.params["lm_head"], np.float64), axis=0)
    for r in range(4):
        np.testing.assert_allclose(averaged.islands.params["lm_head"][r], expected, rtol=1e-5, atol=1e-7)


def test_nesterov_sync_matches_the_pytorch_rule(nanochat, tiny_cfg, tmp_path):
    """The compiled DiLoCo sync on hand-set island weights, three rounds, against torch.optim.SGD(nesterov=True):
    buf = mu buf + g; theta -= lr (g + mu buf), with g the island mean of theta_outer - theta_island."""
    cfg = config(tmp_path, tiny_cfg, "outer.name='diloco'")  # outer lr 0.7, momentum 0.9, Nesterov
    rng = np.random.default_rng(0)
    with build(cfg, nanochat, purpose="measure") as run:
        state = run.state
        theta = np.asarray(state.outer.params["lm_head"][0], np.float64)
        buf = np.zeros_like(theta)
        for _ in range(3):
            islands = rng.normal(size=(4, *theta.shape))
            params = {**state.islands.params, "lm_head": jax.device_put(
                islands.astype(np.float32), state.islands.params["lm_head"].sharding)}
            state = state.replace(islands=IslandState(params, state.islands.opt_state))
            state, _ = run.sync(state, frozenset({PARAMS}), np.full(4, 0.25))
            g = np.mean(theta[None] - islands.astype(np.float32).astype(np.float64), axis=0)
            buf = 0.9 * buf + g
            theta = theta - 0.7 * (g + 0.9 * buf)
            got = jax.device_get(state.outer.params["lm_head"])
            np.testing.assert_allclose(got[0], theta, rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(jax.device_get(state.islands.params["lm_head"]), got)  # islands restart


def test_sync_schedules(tiny_cfg):
    tx = optax.adamw(1e-3)
    island = IslandState({"w": jnp.zeros(3)}, tx.init({"w": jnp.zeros(3)}))
    def due(scheme, step, last_step=100):
        return scheme.plan(Clock.everyone(step, last_step, 4)).groups

    diloco = make_scheme(tiny_cfg("outer.name='diloco'", "outer.sync_every=3"), tx, island, 4)
    assert [s for s in range(1, 13) if due(diloco, s)] == [3, 6, 9, 12]
    assert due(diloco, 13, last_step=13) == {PARAMS}  # a run ends with a sync of what is pending
    desloc = make_scheme(tiny_cfg("outer.name='desloc'", "outer.sync_every=2"), tx, island, 4)
    synced = {s: due(desloc, s) for s in range(1, 25) if due(desloc, s)}
    assert [s for s, g in synced.items() if PARAMS in g] == list(range(2, 25, 2))  # K_x = 2
    assert [s for s, g in synced.items() if MU in g] == [6, 12, 18, 24]  # K_u = 3 K_x
    assert [s for s, g in synced.items() if NU in g] == [12, 24]  # K_v = 6 K_x
    assert due(desloc, 7, last_step=7) == {PARAMS}
    assert not due(make_scheme(tiny_cfg("outer.name='sync'"), tx, island, 4), 5, last_step=5)
    dropped = Clock(3, 100, (True, False, True, False), (True,) * 4, (1.0,) * 4).plan(groups={PARAMS})
    nobody = Clock(3, 100, (False,) * 4, (True,) * 4, (1.0,) * 4)
    assert dropped.syncs[0].weights == (0.5, 0.0, 0.5, 0.0) and nobody.plan(groups={PARAMS}).syncs[0].weights is None


def test_islands_start_identical(nanochat, tiny_cfg):
    with build(tiny_cfg("outer.name='diloco'"), nanochat, purpose="measure") as run:
        leaves = jax.tree.leaves(jax.device_get(run.state))
    for leaf in leaves:
        for r in range(1, 4):
            np.testing.assert_array_equal(leaf[0], leaf[r])


@pytest.mark.parametrize("overrides,needle", [
    (["outer.name='fedfoo'"], "sync, diloco, streaming_diloco, local_sgd, local_adam, desloc"),
    (["outer.name='diloco'", "outer.sync_every=0"], "outer.sync_every=0"),
    (["outer.name='local_sgd'", "outer.sync_every=-3"], "outer.sync_every=-3"),
    (["outer.name='diloco'", "outer.lr=-0.1"], "outer.lr=-0.1"),
    (["outer.name='diloco'", "outer.momentum=1.0"], "outer.momentum=1.0"),
    (["outer.name='desloc'", "outer.first_moment_every=2.5"], "outer.first_moment_every=2.5"),
    (["outer.name='desloc'", "outer.second_moment_every=0"], "outer.second_moment_every=0"),
])
def test_bad_outer_config(overrides, needle):
    from conftest import NANOCHAT, TINY
    with pytest.raises(UserError, match=needle.replace("(", r"\(")) as err:
        load_config(NANOCHAT, [*TINY, *overrides])
    assert "\n" not in str(err.value)


def test_unknown_outer_optimizer(nanochat, tiny_cfg):
    with pytest.raises(UserError, match="outer.optimizer='nosuch'"):
        build(tiny_cfg("outer.name='diloco'", "outer.optimizer='nosuch'"), nanochat, purpose="compile")


@pytest.mark.parametrize("name", ["local_adam", "desloc"])
def test_moment_schemes_need_moments(tiny_cfg, name):
    sgd = optax.sgd(0.1)
    island = IslandState({"w": jnp.zeros(3)}, sgd.init({"w": jnp.zeros(3)}))
    with pytest.raises(UserError, match=f"outer.name={name}: syncs optimizer moment buffers"):
        make_scheme(tiny_cfg(f"outer.name='{name}'"), sgd, island, 4)
    make_scheme(tiny_cfg("outer.name='diloco'"), sgd, island, 4)  # DiLoCo needs none


def test_reset_restarts_moments_but_not_schedules(nanochat, tiny_cfg, tmp_path):
    """Photon's reset at step 2, seen one step later: the lr is the global step's, Adam starts afresh."""
    cfg = config(tmp_path, tiny_cfg, "outer.name='local_sgd'", "outer.sync_every=2", "outer.reset_inner_opt=True",
                 "optimizer.warmup_steps=4", "optimizer.warmdown_frac=0.0", "max_steps=6")
    _, history = drive(nanochat, cfg, 3)
    after_reset, next_step = history[1], history[2]
    muon = after_reset.islands.opt_state.inner_states["muon"].inner_state
    adam = after_reset.islands.opt_state.inner_states["unembedding"].inner_state
    assert not any(np.any(x) for x in jax.tree.leaves(muon[0].momentum)) and not np.any(adam[0].mu["lm_head"])
    assert list(muon[0].count) == [2] * 4 and list(adam[2].count) == [2] * 4  # Muon warmup and lr schedule go on
    assert list(adam[0].count) == [0] * 4  # Adam's bias correction restarts with its moments
    # first Adam step on fresh moments moves a weight by lr x |g| / (|g| + eps): lr, but where g is ~eps
    lr = 0.004 * (128 / 768) ** -0.5 * 0.75  # unembedding lr x width scale x warmup (2 + 1) / 4
    moved = np.abs(next_step.islands.params["lm_head"] - after_reset.islands.params["lm_head"])
    assert np.median(moved) == pytest.approx(lr, rel=1e-4) and moved.max() <= lr * (1 + 1e-4)


def test_dropout_mean_uses_only_present_islands(nanochat, tiny_cfg, tmp_path):
    seed = next(s for s in range(100) if sum(present_islands(s, 2, 4, 0.3)) == 3)
    present = np.array(present_islands(seed, 2, 4, 0.3))
    common = [f"seed={seed}", "outer.name='local_sgd'", "max_steps=3"]
    dropped, _ = drive(nanochat, config(tmp_path, tiny_cfg, *common, "outer.sync_every=2",
                                        "faults.island_dropout=0.3", "run.name='a'"), 2)
    alone, _ = drive(nanochat, config(tmp_path, tiny_cfg, *common, "outer.sync_every=100", "run.name='b'"), 2)
    expected = np.mean(np.asarray(alone.islands.params["lm_head"], np.float64)[present], axis=0)
    for r in range(4):  # the absent island re-joins from the mean of the others
        np.testing.assert_allclose(dropped.islands.params["lm_head"][r], expected, rtol=1e-5, atol=1e-7)


def _three_steps(nanochat, cfg):
    """States, rows and loader positions after each of three steps."""
    with build(cfg, nanochat) as run:
        state, history, rows, positions = run.state, [], [], []
        for step in range(3):
            state, _, metrics = advance(run, state, step)
            history.append(jax.device_get(state))
            rows.append(metrics)
            positions.append(run.loader.state()["positions"])
        return history, rows, positions, run.perf["tokens_per_step"]


def test_local_steps_average_islands_at_their_own_step_counts(nanochat, tiny_cfg, tmp_path):
    """islands.local_steps=(3, 3, 2, 1): the round's average is of each island after its own number of steps,
    and an idle island's parameters, optimizer state and data position stay where they were. Dynamic local
    updates at step_s (1, 1, 1.5, 3) give the same steps (floor(3 x 1 / s)); merging by tokens weights each
    island by its steps, 3 : 3 : 2 : 1."""
    common = ["outer.name='local_sgd'", "max_steps=4"]
    history, rows, positions, tps = _three_steps(nanochat, config(
        tmp_path, tiny_cfg, *common, "outer.sync_every=3", "islands.local_steps=(3, 3, 2, 1)", "run.name='a'"))
    dynamic, _, _, _ = _three_steps(nanochat, config(
        tmp_path, tiny_cfg, *common, "outer.sync_every=3", "islands.dynamic_local_steps=True",
        "islands.step_s=(1.0, 1.0, 1.5, 3.0)", "islands.merge='tokens'", "run.name='c'"))
    alone, _, alone_positions, _ = _three_steps(nanochat, config(
        tmp_path, tiny_cfg, *common, "outer.sync_every=100", "run.name='b'"))
    assert [m.get("islands/active") for m in rows] == [None, "1110", "1100"]
    assert rows[-1]["tokens"] == (3 + 3 + 2 + 1) * tps // 4
    for r, h in enumerate((3, 3, 2, 1)):
        assert positions[-1][r] == alone_positions[h - 1][r]  # an idle island's data waits for it
    idle = [jax.tree.map(lambda x, r=r: np.asarray(x[r]), history[1].islands) for r in range(4)]
    idle_before = [jax.tree.map(lambda x, r=r: np.asarray(x[r]), history[0].islands) for r in range(4)]
    for x, y in zip(jax.tree.leaves(idle[3]), jax.tree.leaves(idle_before[3]), strict=True):
        np.testing.assert_array_equal(x, y)  # island 3 sat out step 2: parameters and optimizer state
    assert not np.array_equal(idle[2].params["lm_head"], idle_before[2].params["lm_head"])  # island 2 did not
    head = np.array([alone[h - 1].islands.params["lm_head"][r] for r, h in enumerate((3, 3, 2, 1))], np.float64)
    by_tokens = np.tensordot(np.array([3, 3, 2, 1]) / 9, head, axes=1)
    assert not np.allclose(by_tokens, head.mean(axis=0), rtol=1e-3)  # the two merges differ measurably
    for r in range(4):
        np.testing.assert_allclose(history[2].islands.params["lm_head"][r], head.mean(axis=0), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(dynamic[2].islands.params["lm_head"][r], by_tokens, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("overrides,needle", [
    (["islands.local_steps=(3, 3, 2)"], "give 4 whole numbers"),
    (["islands.local_steps=(3, 3, 2, 4)"], "each from 1 to outer.sync_every=3"),
    (["islands.local_steps=(3, 3, 2, 0)"], "each from 1 to outer.sync_every=3"),
    (["outer.name='sync'", "islands.local_steps=(3, 3, 2, 1)"], "cannot take part in a collective"),
    (["outer.name='streaming_diloco'", "outer.overlap_steps=1", "islands.local_steps=(3, 3, 2, 1)"],
     "cannot take part in a collective"),
    (["islands.dynamic_local_steps=True", "islands.local_steps=(3, 3, 2, 1)"], "choose one"),
    (["islands.merge='steps'"], "islands.merge='steps': choose one of equal, tokens"),
])
def test_bad_local_steps(overrides, needle):
    from conftest import NANOCHAT, TINY
    with pytest.raises(UserError, match=re.escape(needle)) as err:
        load_config(NANOCHAT, [*TINY, "outer.name='diloco'", "outer.sync_every=3", *overrides])
    assert "\n" not in str(err.value) and "islands." in str(err.value)


def test_present_islands_seeded():
    assert present_islands(0, 5, 4, 0.0) == (True,) * 4
    draws = [present_islands(7, s, 4, 0.5) for s in range(1, 200)]
    assert draws == [present_islands(7, s, 4, 0.5) for s in range(1, 200)]  # a resumed run drops the same ones
    assert 1.5 < np.mean([sum(d) for d in draws]) < 2.5 and any(not any(d) for d in draws)  # about half; sometimes nobody
    plans = [Clock(s, 200, d, (True,) * 4, (1.0,) * 4).plan(groups={PARAMS}) for s, d in enumerate(draws, 1)]
    weights = [p.syncs[0].weights for p in plans]
    assert all(abs(sum(w) - 1) < 1e-12 for w in weights if w is not None)  # a mean over those present


def test_a_plug_in_scheme_clips_the_outer_step_as_its_rule_says(nanochat, tiny_cfg, tmp_path):
    """The worked example (experiments/trust_region_diloco/schemes.py, registered from its folder): with inner
    SGD and a plain outer step (lr 1, no momentum), one round of DiLoCo moves the outer model by -mean delta;
    the trust region scales that to ratio x |theta| when it is longer, and leaves it alone when it is not."""
    sgd = optax.sgd(0.05)
    one_round = ["outer.sync_every=2", "max_steps=2", "outer.lr=1.0", "outer.momentum=0.0", "outer.nesterov=False"]
    outer_of = lambda *o: drive(nanochat, config(tmp_path, tiny_cfg, *one_round, *o), 2, tx=sgd)  # noqa: E731
    _, history = outer_of("outer.name='diloco'", "run.name='d'")
    theta0 = [np.asarray(x[0], np.float64) for x in jax.tree.leaves(history[0].outer.params)]  # before the sync
    moved = [np.asarray(x[0], np.float64) for x in jax.tree.leaves(history[-1].outer.params)]
    delta = [a - b for a, b in zip(theta0, moved)]  # DiLoCo's mean pseudo-gradient, read off its plain step
    norm = lambda xs: np.sqrt(sum(float((x * x).sum()) for x in xs))  # noqa: E731
    ratio = 0.5 * norm(delta) / norm(theta0)  # the region holds half of DiLoCo's step
    for r, scale in ((ratio, 0.5), (100.0, 1.0)):
        state, _ = outer_of("outer.name='trust_region_diloco'", f"outer.trust_ratio={r}", f"run.name='t{scale}'")
        expected = [t - scale * d for t, d in zip(theta0, delta)]  # NumPy: theta0 - min(1, r |theta0| / |delta|) delta
        for got, want in zip(jax.tree.leaves(state.outer.params), expected, strict=True):
            np.testing.assert_allclose(np.asarray(got[0]), want, rtol=1e-4, atol=1e-6)


def test_the_registry_refuses_a_taken_name_and_a_key_declared_twice_differently():
    from jaximus.schema import integer
    from outer_optimizers import SCHEMES, Key, register
    from outer_optimizers.diloco import DiLoCo

    class Impostor(DiLoCo):
        name = "diloco"

    with pytest.raises(UserError, match="outer.name=diloco: taken by outer_optimizers.diloco.DiLoCo"):
        register(Impostor)

    class Redeclares(DiLoCo):
        name = "redeclares"
        keys = {"outer.lr": Key(0.1, integer(1), "another meaning")}

    with pytest.raises(UserError, match="declares outer.lr unlike the scheme that declared it first"):
        register(Redeclares)
    assert SCHEMES["diloco"] is DiLoCo and "redeclares" not in SCHEMES
