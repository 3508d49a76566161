"""Streaming DiLoCo and eager updates: DiLoCo at P = 1, fragments partition the weights, overlap and eager
against NumPy oracles, the in-flight fragment in the inner step's HLO, bad input."""
import json
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from conftest import NANOCHAT, TINY
from test_outer import config, drive

from jaximus import UserError
from jaximus.build import build, load_config
from jaximus.inspect import inspect_scheme
from jaximus.loop import advance
from jaximus.state import IslandState
from train import main

STREAM = "outer.name='streaming_diloco'"


def test_one_fragment_without_overlap_is_diloco(nanochat, tiny_cfg, tmp_path):
    common = ["outer.sync_every=3", "max_steps=7", "outer.fragments=1", "outer.overlap_steps=0"]
    _, streaming = drive(nanochat, config(tmp_path, tiny_cfg, STREAM, *common, "run.name='s'"), 7)
    _, diloco = drive(nanochat, config(tmp_path, tiny_cfg, "outer.name='diloco'", *common, "run.name='d'"), 7)
    for s, d in zip(streaming, diloco, strict=True):  # step for step, bitwise
        for a, b in zip(jax.tree.leaves(s.islands.params), jax.tree.leaves(d.islands.params), strict=True):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(jax.tree.leaves(s.outer.params), jax.tree.leaves(d.outer.params), strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("layout,fragment_of_layer", [("strided", [0, 1, 2, 0, 1, 2]),
                                                      ("sequential", [0, 0, 1, 1, 2, 2])])
def test_fragments_partition_the_parameters(tiny_cfg, nanochat, layout, fragment_of_layer):
    cfg = tiny_cfg(STREAM, "model.depth=6", "outer.fragments=3", "outer.sync_every=6",
                   f"outer.fragment_layout='{layout}'")
    with build(cfg, nanochat, purpose="compile") as run:
        scheme, params = run.scheme, jax.tree.map(lambda x: jnp.zeros(x.shape[1:], jnp.int32), run.state.islands.params)
        counts = params
        for p in range(3):  # mark fragment p's slices: every element must be marked exactly once
            ones = tuple(jnp.ones(x.shape, jnp.int32) for x in scheme.take(params, p))
            counts = jax.tree.map(np.add, counts, scheme.put(params, p, ones))
            layers = scheme.put(params, p, ones)["blocks"]["mlp"]["c_fc"][:, 0, 0]
            assert list(np.flatnonzero(layers)) == [i for i, f in enumerate(fragment_of_layer) if f == p]
        assert all(np.all(np.asarray(c) == 1) for c in jax.tree.leaves(counts))
        assert [p for p in range(3) if any(x.shape == params["wte"].shape for x in scheme.take(params, p))] == [0]
        last = fragment_of_layer[-1]  # the head goes with the last layer, the embedding with the first
        assert [p for p in range(3) if any(x.shape == params["lm_head"].shape for x in scheme.take(params, p))] == [last]
        # fragment p is taken every H = 6 steps at offset p H / P = 2p
        assert {p: [s for s in range(1, 19) if scheme.fragment_due(s) == p] for p in range(3)} == \
            {0: [6, 12, 18], 1: [2, 8, 14], 2: [4, 10, 16]}


def test_overlapped_fragment_lands_tau_steps_later(nanochat, tiny_cfg, tmp_path):
    """H = 4, P = 2, tau = 1, alpha = 0.5: fragment 1 (layer 1 and the head) is taken after step 2 and lands at
    the end of step 3: a Nesterov step on the island mean of theta_outer - theta_island, then the merge."""
    common = [STREAM, "outer.fragments=2", "outer.overlap_steps=1", "max_steps=10"]
    _, stream = drive(nanochat, config(tmp_path, tiny_cfg, *common, "outer.sync_every=4", "outer.mix_alpha=0.5",
                                       "run.name='s'"), 3)
    _, alone = drive(nanochat, config(tmp_path, tiny_cfg, *common, "outer.sync_every=1000", "run.name='a'"), 3)
    init = alone[0].outer.params  # nothing has synced in the run without syncs
    slices = {0: lambda t: [t["wte"]] + [x[:, 0] for x in jax.tree.leaves(t["blocks"])],
              1: lambda t: [t["lm_head"]] + [x[:, 1] for x in jax.tree.leaves(t["blocks"])]}
    for step in (0, 1):  # until it lands, the streaming run is the run without syncs
        for a, b in zip(jax.tree.leaves(stream[step].islands.params), jax.tree.leaves(alone[step].islands.params)):
            np.testing.assert_array_equal(a, b)
    for theta0, island2, local3, outer3, island3 in zip(*(slices[1](t) for t in (
            init, alone[1].islands.params, alone[2].islands.params, stream[2].outer.params, stream[2].islands.params))):
        g = np.mean(np.asarray(theta0[0], np.float64)[None] - np.asarray(island2, np.float64), axis=0)
        expected = theta0[0] - 0.7 * (g + 0.9 * g)  # first Nesterov step: buf = g; theta -= lr (g + mu buf)
        for r in range(4):
            np.testing.assert_allclose(outer3[r], expected, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(island3[r], 0.5 * np.asarray(local3[r], np.float64) + 0.5 * expected,
                                       rtol=1e-5, atol=1e-6)
    for theta0, local3, outer3, island3 in zip(*(slices[0](t) for t in (
            init, alone[2].islands.params, stream[2].outer.params, stream[2].islands.params))):
        np.testing.assert_array_equal(outer3, theta0)  # fragment 0 is not due before step 4
        np.testing.assert_array_equal(island3, local3)


def test_inner_step_carries_exactly_the_in_flight_fragment(nanochat, tiny_cfg):
    cfg = tiny_cfg(STREAM, "outer.sync_every=4", "outer.fragments=2", "outer.overlap_steps=1")
    report = inspect_scheme(cfg, nanochat)
    params = jax.eval_shape(lambda k: nanochat["model"].init_model_weights(cfg, k), jax.random.key(0))
    blocks = sum(x.size * 4 for x in jax.tree.leaves(params["blocks"]))
    fragment = {"0": params["wte"].size * 4 + blocks // 2, "1": params["lm_head"].size * 4 + blocks // 2}
    for variant in report["inner"]:
        issued = [e.split(":")[1] for e in variant["events"] if e.startswith("issue:")]
        assert variant["hlo"] == variant["ledger"] == sum(fragment[p] for p in issued), variant
        assert (variant["collectives"] > 0) == bool(issued)
    assert sorted(e for v in report["inner"] for e in v["events"] if e.startswith("issue")) == ["issue:0", "issue:1"]
    assert not report["syncs"]  # with overlap, only the run's final sync is a sync program


@pytest.mark.parametrize("overrides,needle", [
    (["outer.sync_every=5"], "outer.sync_every=5 is not divisible by outer.fragments=2"),
    (["outer.sync_every=4", "outer.overlap_steps=2"], "outer.overlap_steps=2: must be below"),
    (["outer.fragments=3", "outer.sync_every=6"], "outer.fragments=3: fragment 2 holds no parameters"),
    (["outer.mix_alpha=1.5"], "outer.mix_alpha=1.5: must be a number in [0, 1]"),
    (["outer.fragments=0"], "outer.fragments=0: must be an integer >= 1"),
    (["faults.island_dropout=0.1", "outer.sync_every=4"], "cannot leave an island out yet; use outer.overlap_steps=0"),
    (["outer.sync_every=4", "outer.eager=True"], "outer.eager=true needs the whole round overlapped"),
    (["outer.name='local_sgd'", "outer.eager=True"], "outer.eager=true with outer.name=local_sgd"),
])
def test_bad_streaming_config(nanochat, overrides, needle):
    with pytest.raises(UserError) as err:
        cfg, exp = load_config(NANOCHAT, [*TINY, STREAM, *overrides])
        build(cfg, exp, purpose="compile")
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("lr,mu", [(0.7, 0.9), (1.0, 0.0)])
def test_eager_updates_match_the_formula_over_two_rounds_and_the_final_sync(nanochat, tiny_cfg, tmp_path, lr, mu):
    """Eager DiLoCo (H = 2, M = 4, 4 steps) with the inner step frozen (lr 0) and island weights set by hand before
    each take: each island's outer step uses mean^(t-1) + (delta_m^(t) - delta_m^(t-1)) / M (2502.12996), through
    the real loop's inner steps (the mean of round 1 is issued inside step 3). The last step is a take, so the
    run ends by applying round 2's mean without the island's own share, which its eager step already applied:
    every round's mean reaches every island exactly once, and with plain outer SGD the islands end on one model."""
    frozen = {**nanochat, "optimizer": SimpleNamespace(make_optimizer=lambda c: (optax.sgd(0.0), {}, {}))}
    cfg = config(tmp_path, tiny_cfg, "outer.name='diloco'", "outer.eager=True", "outer.sync_every=2", "max_steps=4",
                 f"outer.lr={lr}", f"outer.momentum={mu}")
    rng, M = np.random.default_rng(0), 4
    with build(cfg, frozen) as run:
        state = run.state
        theta = np.asarray(jax.device_get(state.outer.params["lm_head"]), np.float64)  # (M, ...) identical copies
        buf = np.zeros_like(theta)
        stale_mean, stale_own = np.zeros_like(theta[0]), np.zeros_like(theta)
        for step in range(4):
            if step in (1, 3):  # before the take at steps 2 and 4: these are the islands' local weights
                local = rng.normal(size=theta.shape).astype(np.float32)
                head = jax.device_put(local, state.islands.params["lm_head"].sharding)
                state = state.replace(islands=IslandState({**state.islands.params, "lm_head": head},
                                                          state.islands.opt_state))
            state, _, _ = advance(run, state, step)
            if step in (1, 3):
                fresh = theta - local.astype(np.float64)
                updates = [stale_mean[None] + (fresh - stale_own) / M]
                if step == 3:  # the final sync: round 2's mean, less the own share applied a moment ago
                    updates.append(fresh.mean(axis=0)[None] - fresh / M)
                for update in updates:
                    buf = mu * buf + update
                    theta = theta - lr * (update + mu * buf)
                stale_mean, stale_own = fresh.mean(axis=0), fresh
                got = jax.device_get(state.outer.params["lm_head"])
                np.testing.assert_allclose(got, theta, rtol=1e-5, atol=1e-6)
                np.testing.assert_array_equal(jax.device_get(state.islands.params["lm_head"]), got)
                if step == 1:
                    assert not np.allclose(theta[0], theta[1])  # workers briefly hold different outer models
    if mu == 0.0:
        assert np.abs(got - got[0]).max() < 1e-5  # the evaluated model is every island's


def test_rewind_to_a_fragment_in_flight_replays_bitwise(tmp_path, capsys):
    """The checkpoint after step 6 holds fragment 1's pseudo-gradient, taken but not yet issued; replaying from
    it gives the same metrics and the same final state bit for bit (tests/test_checkpoint.py adds a SIGKILL)."""
    run = ["--config", NANOCHAT, *TINY, STREAM, "outer.sync_every=4", "max_steps=12", "checkpoint.every=2",
           "checkpoint.keep=10", "optimizer.warmdown_frac=0.0", f"run.out_dir='{tmp_path}'", "run.name='s'"]
    assert main(run) == 0
    saved = tmp_path / "s" / "checkpoints"
    at6 = ocp.StandardCheckpointer().restore(saved / "6" / "state")
    assert all(np.any(x) for x in jax.tree.leaves(at6["outer"]["buffers"]["payload"][1]))  # in flight
    first = (tmp_path / "s" / "metrics.jsonl").read_text()
    final = jax.tree.leaves(ocp.StandardCheckpointer().restore(saved / "12" / "state"))
    assert main([*run, "run.resume=6"]) == 0 and "resuming from step 6" in capsys.readouterr().out
    strip = [{k: v for k, v in json.loads(line).items() if not k.startswith("perf/")} for line in first.splitlines()]
    again = [{k: v for k, v in json.loads(line).items() if not k.startswith("perf/")}
             for line in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()]
    assert again == strip
    for a, b in zip(final, jax.tree.leaves(ocp.StandardCheckpointer().restore(saved / "12" / "state")), strict=True):
        np.testing.assert_array_equal(a, b)
