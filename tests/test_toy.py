"""Toy objectives through the real loop (experiments/toy): a peer library's published fixture, a NumPy
transcription of Local SGD on islands with different optima, and exact resume of an objective's data."""
import json

import jax
import numpy as np
import pytest
from conftest import ROOT

from jaximus.build import build, load_config
from jaximus.loop import advance
from train import main

TOY = str(ROOT / "experiments" / "toy" / "config.py")
# torchft/diloco_regression_test.py's mocked Streaming DiLoCo: 2 replicas, 2 fragments of one 1x1 weight each,
# starting at 1.0, a constant gradient 2, inner SGD lr 1, outer plain SGD lr 2, sync_every 6, no delay
TORCHFT = ["model.objective='constant'", "model.layers=2", "model.dim=1", "model.init=1.0", "model.gradient=2.0",
           "optimizer.lr=1.0", "outer.name='streaming_diloco'", "outer.fragments=2", "outer.sync_every=6",
           "outer.overlap_steps=0", "outer.optimizer='sgd'", "outer.lr=2.0", "outer.momentum=0.0",
           "outer.nesterov=False", "parallel.replica=2", "parallel.fsdp=4", "data.batch_size=8", "max_steps=16",
           "eval.every=100", "checkpoint.every=100"]
# torchft syncs its fragment 0 at local steps 3, 9, 15 and fragment 1 at 6, 12; ours syncs fragment p at offset
# p H / P, so fragment 1 (layer 1) at 3, 9, 15 and fragment 0 (layer 0) at 6, 12: torchft's 0 is our layer 1
THEIRS = {0: 1, 1: 0}


def history(tmp_path, overrides):
    """(local weight, global weight) of torchft's fragments 0 and 1 after every step, island 0, step 0 first."""
    cfg, exp = load_config(TOY, [*overrides, f"run.out_dir='{tmp_path}'"])
    with build(cfg, exp) as run:
        state = run.state
        rows = [_weights(state)]
        for step in range(cfg.max_steps):
            state, _, _ = advance(run, state, step)
            rows.append(_weights(state))
    return [({f: local[THEIRS[f]] for f in (0, 1)}, {f: outer[THEIRS[f]] for f in (0, 1)}) for local, outer in rows]


def _weights(state):
    return tuple(np.asarray(tree["blocks"]["w"][0, :, 0]) for tree in (state.islands.params, state.outer.params))


def test_torchft_streaming_diloco_regression_fixture(tmp_path):
    steps = history(tmp_path, [*TORCHFT, "outer.mix_alpha=0.0", "run.name='a0'"])
    local = [(s[0][0], s[0][1]) for s in steps[:10]]
    assert local == [(1, 1), (-1, -1), (-3, -3), (-11, -5), (-13, -7), (-15, -9), (-17, -23), (-19, -25), (-21, -27),
                     (-35, -29)]
    assert [steps[t][1][0] for t in (3, 9)] == [-11, -35] and [steps[t][1][1] for t in (6, 12)] == [-23, -47]
    half = history(tmp_path, [*TORCHFT, "outer.mix_alpha=0.5", "run.name='a5'"])
    assert [half[t][0][0] for t in (3, 9, 15)] == [-8, -24.5, -40.25]
    untouched = history(tmp_path, [*TORCHFT, "outer.mix_alpha=1.0", "run.name='a1'"])
    assert untouched[15][0] == {0: -29, 1: -29}


def test_local_sgd_on_islands_with_different_optima_matches_numpy(tmp_path):
    """Each island: theta <- theta - lr (theta - mean x) on its own rows; every H steps theta <- mean over islands."""
    overrides = ["outer.name='local_sgd'", "outer.sync_every=3", "max_steps=7", "model.spread=2.0", "model.noise=0.5",
                 "optimizer.lr=0.3", f"run.out_dir='{tmp_path}'", "run.name='q'"]
    cfg, exp = load_config(TOY, overrides)
    objective = exp["model"].make_objective(cfg)
    R = cfg.parallel.replica
    theta = np.full((R, cfg.model.layers * cfg.model.dim), cfg.model.init, np.float64)
    for step in range(cfg.max_steps):
        theta -= cfg.optimizer.lr * (theta - np.stack([objective.batch(step, r).mean(0) for r in range(R)]))
        if (step + 1) % cfg.outer.sync_every == 0 or step + 1 == cfg.max_steps:
            theta[:] = theta.mean(0)
    with build(cfg, exp) as run:
        state = run.state
        for step in range(cfg.max_steps):
            state, _, _ = advance(run, state, step)
    got = np.asarray(state.outer.params["blocks"]["w"]).reshape(R, -1)
    np.testing.assert_allclose(got, theta, rtol=1e-5, atol=1e-6)
    assert np.abs(theta[0]).max() > 0.1  # it moved, and not to any island's own optimum: the islands disagree


@pytest.mark.parametrize("scheme", ["diloco", "streaming_diloco"])
def test_a_toy_run_rewound_replays_exactly(tmp_path, scheme):
    """train.py on the toy: metrics and checkpoints as for a language model, and a rewind to step 4 reads the same
    rows again (the objective's loader position is the step)."""
    args = ["--config", TOY, f"outer.name='{scheme}'", "outer.sync_every=4", "max_steps=8", "checkpoint.every=4",
            "eval.every=4", f"run.out_dir='{tmp_path}'", "run.name='toy'"]
    assert main(args) == 0
    run_dir = tmp_path / "toy"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["val/loss"] < summary["val/loss_initial"] and summary["val/bpb"] is None
    first = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final = jax.tree.leaves(_restore(run_dir, 8))
    assert main([*args, "run.resume=4"]) == 0
    again = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    drop = ("perf/",)
    assert [{k: v for k, v in r.items() if not k.startswith(drop)} for r in again] == \
        [{k: v for k, v in r.items() if not k.startswith(drop)} for r in first]
    for a, b in zip(final, jax.tree.leaves(_restore(run_dir, 8)), strict=True):
        np.testing.assert_array_equal(a, b)


def _restore(run_dir, step):
    from jaximus.checkpoint import restore_numpy
    return restore_numpy(run_dir / "checkpoints" / str(step) / "state")



@pytest.mark.parametrize("scheme", ["sync", "diloco", "streaming_diloco"])
def test_inspect_compiles_an_objective_with_an_exact_ledger(scheme):
    """The objective's own rows (here (rows, 16) float32, not tokens) reach the compiled programs, and the
    bytes that cross islands are the ledger's."""
    from jaximus.inspect import inspect_scheme

    cfg, exp = load_config(TOY, [f"outer.name='{scheme}'", "outer.sync_every=4"])
    report = inspect_scheme(cfg, exp)
    events = report["inner"] + report["syncs"]
    assert events and all(e["hlo"] == e["ledger"] for e in events), events
    assert sum(e["ledger"] * e["per_step"] for e in events) > 0  # the 16 weights do cross
