"""The inner loop end to end: equal losses across meshes, one compile, a smoke run, every bad input."""
import json
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import DILOCO, NANOCHAT, REGISTERED, ROOT, TINY

from jaximus.build import build, load_config
from jaximus.plan import Clock, Event
from train import main


def run_steps(nanochat, cfg, rows, steps):
    """Mean island loss per step for `rows` (steps, B, T+1) on cfg's mesh, through the built inner step."""
    R = cfg.parallel.replica
    with build(cfg, nanochat, purpose="measure") as run:
        state, losses = run.state, []
        for i in range(steps):
            events = run.scheme.plan(Clock.everyone(i + 1, steps, R)).events
            state, loss = run.step(state, run.batch(rows[i].reshape(R, -1, rows.shape[-1])), events)
            losses.append(float(np.mean(loss)))
        return losses, state.islands, run.step


def test_meshes_agree_and_step_compiles_once(nanochat, tiny_cfg):
    rows = np.repeat(np.random.default_rng(0).integers(0, 512, (1, 16, 33), dtype=np.int32), 4, axis=0)
    a, state_a, step_a = run_steps(nanochat, tiny_cfg("parallel.replica=4", "parallel.fsdp=2"), rows, 4)
    b, state_b, step_b = run_steps(nanochat, tiny_cfg("parallel.replica=1", "parallel.fsdp=8"), rows, 4)
    c, _, _ = run_steps(nanochat, tiny_cfg("parallel.replica=2", "parallel.fsdp=4", "parallel.strategy='dp'"), rows, 4)
    # same global batch, same math: only float32 reduction order differs
    np.testing.assert_allclose(a, b, rtol=1e-5)
    np.testing.assert_allclose(a, c, rtol=1e-5)
    assert a[-1] < a[0]
    islands = np.asarray(state_a.params["lm_head"])
    np.testing.assert_array_equal(islands[0], islands[3])  # sync DP keeps islands identical
    np.testing.assert_allclose(islands[0], np.asarray(state_b.params["lm_head"])[0], atol=1e-5)
    for step in (step_a, step_b):  # one variant of the inner step, compiled once
        grads = (frozenset({Event("grads")}), False)  # its event set, unmasked: every island takes every step
        assert list(step.compiled) == [grads] and step.compiled[grads]._cache_size() == 1
    assert state_a.params["wte"].sharding.spec == jax.P("replica", "fsdp", None)  # born sharded


def test_sync_dp_logs_the_same_losses_on_every_mesh(tmp_path):
    """Real data through train.py: the global batch of a step does not depend on how it is split into islands."""
    losses = []
    for replica in (1, 2, 4, 8):
        name = f"mesh{replica}"
        assert main(["--config", NANOCHAT, *TINY, "model.depth=1", "max_steps=20", "eval.every=20", "log.every=1",
                     f"parallel.replica={replica}", f"parallel.fsdp={8 // replica}", f"run.out_dir='{tmp_path}'",
                     f"run.name='{name}'"]) == 0
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        losses.append([r["train/loss"] for r in rows if "train/loss" in r])
    assert len(losses[0]) == 20 and losses[0][-1] < losses[0][0] - 1.0
    for other in losses[1:]:
        np.testing.assert_allclose(other, losses[0], rtol=1e-4)


def test_smoke_run_writes_run_directory(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    rc = main(["--config", NANOCHAT, *TINY, "max_steps=12", f"run.out_dir='{tmp_path}'", "run.name='smoke'"])
    assert rc == 0, capsys.readouterr().err
    run = tmp_path / "smoke"
    config = json.loads((run / "config.json").read_text())
    assert config["max_steps"] == 12 and {"git_commit", "git_dirty", "git_diff_sha256"} <= set(config)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in metrics if "train/loss" in m]
    assert [m["step"] for m in train] == list(range(1, 13))
    assert train[-1]["train/loss"] < train[0]["train/loss"] - 1.0
    for key in ("tokens", "lr/muon", "perf/tokens_per_sec", "perf/mfu", "comm/cross_island_bytes", "comm/syncs"):
        assert key in train[-1]
    # 1 s a step at equal speeds; sync DP's all-reduce of this tiny model hides behind the backward pass
    assert [m["time/sim_s"] for m in train] == [float(k) for k in range(1, 13)]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["val/bpb"] < summary["val/bpb_initial"] and summary["steps"] == 12
    assert [m["step"] for m in metrics if "val/bpb" in m] == [0, 4, 8, 12]
    assert metrics[0] == {"step": 0, "tokens": 0, "time/sim_s": 0.0, "val/loss": metrics[0]["val/loss"],
                          "val/bpb": summary["val/bpb_initial"]}
    assert list((run / "wandb").glob("offline-run-*")), "wandb offline run missing"
    out, err = capsys.readouterr()
    assert "done | val bpb" in out and "Run history" not in out + err  # wandb's sparkline summary stays quiet


def test_diloco_run_logs_outer_metrics_and_ledger(tmp_path, capsys):
    rc = main(["--config", DILOCO, *TINY, "max_steps=8", "outer.sync_every=4", f"run.out_dir='{tmp_path}'",
               "run.name='d'"])
    assert rc == 0, capsys.readouterr().err
    metrics = [json.loads(line) for line in (tmp_path / "d" / "metrics.jsonl").read_text().splitlines()]
    syncs = [m for m in metrics if "outer/drift" in m]
    assert [m["step"] for m in syncs] == [4, 8]
    lr = load_config(DILOCO, [])[0].outer.lr
    for m in syncs:
        assert m["outer/drift"] > 0 and m["outer/pseudo_grad_norm"] > 0 and m["outer/lr"] == lr
        assert m["outer/drift_max"] >= m["outer/drift"]
    train = [m for m in metrics if "train/loss" in m]
    assert all(f"train/island_loss/{r}" in train[-1] for r in range(4))
    summary = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert summary["comm/syncs"] == 2
    assert summary["comm/cross_island_bytes"] == 2 * summary["ledger"]["sync"]["params"] == 2 * 4 * summary["params"]
    assert [m["comm/cross_island_bytes"] for m in train][3:5] == [summary["ledger"]["sync"]["params"]] * 2


def test_diloco_trains_through_island_dropout(tmp_path, capsys):
    rc = main(["--config", DILOCO, *TINY, "max_steps=16", "outer.sync_every=2", "faults.island_dropout=0.5",
               f"run.out_dir='{tmp_path}'", "run.name='drop'"])
    assert rc == 0, capsys.readouterr().err
    metrics = [json.loads(line) for line in (tmp_path / "drop" / "metrics.jsonl").read_text().splitlines()]
    present = [m["outer/present"] for m in metrics if "outer/present" in m]
    assert len(present) == 8 and any(p != "1111" for p in present)
    assert all(m["outer/islands_present"] == m["outer/present"].count("1") for m in metrics if "outer/present" in m)
    summary = json.loads((tmp_path / "drop" / "summary.json").read_text())
    assert summary["val/bpb"] < summary["val/bpb_initial"] - 0.2
    # an island that dropped out of a sync sent nothing: the ledger counts the islands present
    per_sync = summary["ledger"]["sync"]["params"]
    assert summary["comm/island_bytes"] == [per_sync * sum(p[r] == "1" for p in present) for r in range(4)]
    assert summary["comm/cross_island_bytes"] == pytest.approx(per_sync * sum(p.count("1") for p in present) / 4)


@pytest.mark.parametrize("scheme", REGISTERED)
def test_one_island_trains_and_sends_nothing(tmp_path, capsys, scheme):
    """M = 1, the case the DiLoCo scaling-laws paper shows beating data-parallel."""
    rc = main(["--config", DILOCO, *TINY, "parallel.replica=1", "parallel.fsdp=8", "max_steps=4", "outer.sync_every=4",
               f"outer.name='{scheme}'", f"run.out_dir='{tmp_path}'", "run.name='one'"])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert summary["val/bpb"] < summary["val/bpb_initial"]
    assert summary["comm/cross_island_bytes"] == 0 and summary["comm/island_bytes"] == [0]


def test_run_ends_with_a_sync_of_what_is_pending(tmp_path, capsys):
    """max_steps = 4 with H = 3: step 4's local progress reaches the outer model that is evaluated."""
    rc = main(["--config", DILOCO, *TINY, "max_steps=4", "outer.sync_every=3", f"run.out_dir='{tmp_path}'",
               "run.name='tail'"])
    assert rc == 0, capsys.readouterr().err
    metrics = [json.loads(line) for line in (tmp_path / "tail" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "outer/groups" in m] == [3, 4]
    summary = json.loads((tmp_path / "tail" / "summary.json").read_text())
    assert summary["comm/syncs"] == 2 and summary["comm/cross_island_bytes"] == 2 * summary["ledger"]["sync"]["params"]
    saved = ocp.StandardCheckpointer().restore(tmp_path / "tail" / "checkpoints" / "4" / "state")
    for outer, island in zip(jax.tree.leaves(saved["outer"]["params"]), jax.tree.leaves(saved["islands"]["params"])):
        np.testing.assert_array_equal(island, outer)  # every island restarted from the final outer step


def test_default_desloc_stays_stable(tmp_path, capsys):
    """DES-LOC averages first moments at step 6 without second moments; AdamW divides the averaged mu by an
    island's zero nu on embedding rows it never saw (|wte| 4.6 -> 1e6); the default inner ADOPT does not."""
    rc = main(["--config", DILOCO, *TINY, "outer.name='desloc'", "outer.sync_every=2", "max_steps=12",
               "checkpoint.every=6", f"run.out_dir='{tmp_path}'", "run.name='desloc'"])
    assert rc == 0, capsys.readouterr().err
    metrics = [json.loads(line) for line in (tmp_path / "desloc" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if m.get("outer/groups") == "mu,params"] == [6]
    train = [m["train/loss"] for m in metrics if "train/loss" in m]
    assert all(np.isfinite(train)) and train[-1] < train[0] - 0.5
    initial = ocp.StandardCheckpointer().restore(tmp_path / "desloc" / "checkpoints" / "6" / "state")
    wte = ocp.StandardCheckpointer().restore(tmp_path / "desloc" / "checkpoints" / "12" / "state")["islands"]["params"]["wte"]
    assert np.abs(wte).max() < 2 * np.abs(initial["outer"]["params"]["wte"]).max()


BAD_INPUTS = [
    (["bogus.key=1"], "bogus.key"),
    (["parallel.replica=2", "parallel.fsdp=2"], "parallel.replica x parallel.fsdp"),
    (["data.batch_size=12"], "data.batch_size=12"),
    (["data.seq_len=4096"], "data.seq_len=4096"),
    (["model.vocab_size=100"], "model.vocab_size=100"),
    (["data.source='hf'", "data.hf_name=['nosuch/dataset', None]"], "data.hf_name"),
    (["run.out_dir='{tmp}/a_file/runs'"], "run.out_dir"),
    (["parallel.strategy='tp'"], "parallel.strategy"),
    (["outer.name='fedfoo'"], "outer.name='fedfoo'"),
    (["outer.name='diloco'", "outer.sync_every=0"], "outer.sync_every=0"),
    (["outer.name='diloco'", "faults.island_dropout=1.5"], "faults.island_dropout=1.5"),
    (["checkpoint.every=0"], "checkpoint.every=0"),
    (["run.resume='sometimes'"], "run.resume='sometimes'"),
]


@pytest.mark.parametrize("overrides,needle", BAD_INPUTS, ids=[b[1] for b in BAD_INPUTS])
def test_bad_input_one_line_nothing_written(tmp_path, capsys, overrides, needle):
    (tmp_path / "a_file").write_text("a file where a directory is needed")
    overrides = [o.replace("{tmp}", str(tmp_path)) for o in overrides]
    rc = main(["--config", NANOCHAT, *TINY, f"run.out_dir='{tmp_path}'", *overrides])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and needle in err[0] and err[0].startswith("error: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]  # no run directory


def test_missing_experiment_file_and_function(tmp_path, capsys):
    assert main(["--config", str(tmp_path / "nope.py")]) == 2
    assert "nope.py: no such file" in capsys.readouterr().err
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "config.py").write_text("def get_config():\n    pass\n")
    assert main(["--config", str(exp / "config.py")]) == 2
    assert "model.py: missing" in capsys.readouterr().err
    (exp / "model.py").write_text("def init_model_weights(c, k):\n    pass\n")
    (exp / "optimizer.py").write_text("def make_optimizer(c):\n    pass\n")
    assert main(["--config", str(exp / "config.py")]) == 2
    assert "no function make_model_forward()" in capsys.readouterr().err


def test_cli_error_is_one_line_without_traceback():
    out = subprocess.run([sys.executable, "train.py", "--config", NANOCHAT, "max_stepz=3"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [out.stderr.strip()] and "max_stepz" in out.stderr
    assert "Traceback" not in out.stderr
