"""Exact resume after SIGKILL (also mid-save), interrupts, config changes, corrupt and unwritable checkpoints."""
import json
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import DILOCO, REGISTERED, ROOT, TINY, config_for

from jaximus.build import load_config
from jaximus.inspect import timeline
from outer_optimizers import SCHEMES
from train import main

RUN = [*TINY, "max_steps=12", "eval.every=6", "outer.sync_every=3", "outer.first_moment_every=3",
       "outer.second_moment_every=6", "data.tokenizer_train_chars=2000000"]


def start(out_dir, name, *overrides, config=config_for("diloco")):
    cmd = [sys.executable, "train.py", "--config", config, *RUN, f"run.out_dir='{out_dir}'", f"run.name='{name}'",
           *overrides]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(predicate, proc, timeout=180):
    deadline = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def logged(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(m["step"], m.get("train/loss"), m.get("val/bpb"),
             *((m["comm/cross_island_bytes"], m["comm/wire_bytes"]) if "train/loss" in m else ())) for m in rows]


def final_state(run_dir, step=12):
    return jax.tree.leaves(ocp.StandardCheckpointer().restore(run_dir / "checkpoints" / str(step) / "state"))


TOPK_EF = ("outer.compress.format='topk'", "outer.compress.error_feedback=True", "outer.compress.ef_decay=0.95",
           "outer.compress.k=16", "outer.compress.stochastic=True")


SPEEDS = ("islands.step_s=(1.0, 1.5, 2.0, 4.0)", "islands.jitter=0.3", "islands.straggler_prob=0.2")


ASYNC_EXTRA = {  # asynchronous schemes resume with updates in flight, their optimizers and merges at work
    "async_diloco": ("outer.optimizer='delayed_nesterov'", "outer.staleness='sqrt'", "outer.grace_s=0.5", *TOPK_EF),
    "quorum_diloco": ("outer.quorum=2", "outer.grace_s=2.0")}


@pytest.mark.parametrize("scheme,mid_save,extra", [*((s, s == "diloco", ASYNC_EXTRA.get(s, ())) for s in REGISTERED),
                                                   ("diloco", False, TOPK_EF),
                                                   ("diloco", False, ("islands.local_steps=(3, 3, 2, 1)",))])
def test_sigkill_then_resume_is_exact(tmp_path, capsys, scheme, mid_save, extra):
    """A run under a speed model with jitter and stragglers, killed and resumed, trains bitwise like one in
    lockstep at equal speeds (the clock never reaches the math) and ends at the simulated time of the
    dry run's schedule (the clock resumes exactly). An asynchronous scheme's schedule is the speeds', so
    its whole run has them too: killed after step 6, its islands are at different local steps, mid-round."""
    # streaming: H = 4, P = 2, tau = 1, so the checkpoint after step 6 holds fragment 1 taken but not yet issued
    outer = (f"outer.name='{scheme}'", *(["outer.sync_every=4"] if scheme == "streaming_diloco" else []), *extra)
    config = config_for(scheme)  # a fresh process knows a plug-in scheme through its own experiment
    outer = (*outer, *SPEEDS) if SCHEMES[scheme].asynchronous else outer
    assert main(["--config", config, *RUN, *outer, f"run.out_dir='{tmp_path}'", "run.name='whole'"]) == 0
    outer = outer if SCHEMES[scheme].asynchronous else (*outer, *SPEEDS)
    proc = start(tmp_path, "killed", *outer, "checkpoint.every=1", config=config)
    ckpts = tmp_path / "killed" / "checkpoints"
    if mid_save:  # kill while an asynchronous save is being written
        wait_for(lambda: ckpts.is_dir() and any(p.name.endswith("tmp") for p in ckpts.iterdir()
                                                  if p.name.split(".")[0] not in ("0", "1")), proc)
    else:
        wait_for(lambda: (ckpts / "6").is_dir(), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert main(["--config", config, *RUN, *outer, f"run.out_dir='{tmp_path}'", "run.name='killed'",
                 "checkpoint.every=1"]) == 0
    assert "resuming from step" in capsys.readouterr().out
    assert logged(tmp_path / "whole") == logged(tmp_path / "killed")  # no duplicate or missing step, same losses
    for a, b in zip(final_state(tmp_path / "whole"), final_state(tmp_path / "killed"), strict=True):
        np.testing.assert_array_equal(a, b)  # bitwise
    cfg, exp = load_config(config, [*RUN, *outer, f"run.out_dir='{tmp_path}'", "run.name='killed'"])
    simulated = timeline(cfg, exp)[1]
    summary = json.loads((tmp_path / "killed" / "summary.json").read_text())
    assert {k: summary[k] for k in simulated} == simulated and simulated["time/sim_s"] > 12
    if "outer.compress.error_feedback=True" in extra:  # the error-feedback buffers are part of the state, and hold something
        state = ocp.StandardCheckpointer().restore(tmp_path / "killed" / "checkpoints" / "12" / "state")
        assert any(np.any(e) for e in jax.tree.leaves(state["outer"]["buffers"]["error"]))


def test_interrupt_saves_and_exits_cleanly(tmp_path):
    proc = start(tmp_path, "int", "max_steps=400", "eval.every=400", "checkpoint.every=400")
    wait_for(lambda: (tmp_path / "int" / "metrics.jsonl").exists()
             and len((tmp_path / "int" / "metrics.jsonl").read_text().splitlines()) >= 3, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "SIGINT at step" in err and "Traceback" not in err
    step = int(err.split("SIGINT at step ")[1].split(":")[0])
    assert (tmp_path / "int" / "checkpoints" / str(step)).is_dir()
    assert max(m[0] for m in logged(tmp_path / "int")) == step


def test_resume_rules(tmp_path, capsys):
    base = ["--config", DILOCO, *RUN, f"run.out_dir='{tmp_path}'", "run.name='r'", "max_steps=6", "checkpoint.every=3",
            "checkpoint.keep=3"]
    assert main(base) == 0
    capsys.readouterr()
    assert main([*base, "model.depth=3", "data.seq_len=16"]) == 2  # shapes and data order are frozen
    err = capsys.readouterr().err
    assert "changed: data.seq_len (32 -> 16); model.depth (2 -> 3)" in err and len(err.strip().splitlines()) == 1
    assert main([*base, "max_steps=9"]) == 2  # extending would restart the lr schedule: refused, with the way on
    err = capsys.readouterr().err
    assert "schedule over 6 steps" in err and "optimizer.schedule_steps=6" in err and len(err.strip().splitlines()) == 1
    extend = [*base, "optimizer.schedule_steps=6"]
    assert main([*extend, "max_steps=9", "eval.every=2"]) == 0  # horizon and cadence may change
    assert "resuming from step 6" in capsys.readouterr().out
    assert [m[0] for m in logged(tmp_path / "r") if m[1] is not None] == list(range(1, 10))
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    lrm = [m["lr/lrm"] for m in rows if "lr/lrm" in m]
    assert len(lrm) == 9 and lrm[4] > 0 and lrm == sorted(lrm, reverse=True)  # the warmdown is never undone
    # a corrupt newest checkpoint is skipped with a warning, in favour of the one before
    for f in (tmp_path / "r" / "checkpoints" / "9" / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    assert main([*extend, "max_steps=12"]) == 0
    captured = capsys.readouterr()
    assert "checkpoint" in captured.err and "unreadable" in captured.err and "resuming from step 6" in captured.out
    assert main([*base, "max_steps=12", "run.resume=fresh"]) == 0
    assert "resuming" not in capsys.readouterr().out
    assert main([*base, "max_steps=12", "run.resume=4"]) == 2 and "run.resume=4: no checkpoint" in capsys.readouterr().err


def test_unwritable_checkpoint_directory(tmp_path, capsys):
    (tmp_path / "u").mkdir()
    (tmp_path / "u" / "checkpoints").write_text("a file where the checkpoint directory should be")
    assert main(["--config", DILOCO, *RUN, f"run.out_dir='{tmp_path}'", "run.name='u'"]) == 2
    assert "not a writable directory" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "u").iterdir()) == ["checkpoints"]


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, capsys):
    rc = main(["--config", DILOCO, *RUN, f"run.out_dir='{tmp_path}'", "run.name='nan'", "checkpoint.every=1",
               "optimizer.matrix_lr=1e38", "optimizer.embedding_lr=1e38"])
    err = capsys.readouterr().err  # the progress bar shares stderr; the error is its last line
    assert rc == 2 and "non-finite" in err.splitlines()[-1] and "Traceback" not in err
    bad_step = int(err.splitlines()[-1].split("step ")[1].split(":")[0])
    saved = sorted(int(p.name) for p in (tmp_path / "nan" / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and saved[-1] < bad_step
    assert all(np.isfinite(x).all() for x in final_state(tmp_path / "nan", saved[-1]))


def test_second_signal_exits_at_once(tmp_path):
    # steps of ~1 s, so the second signal surely lands before the step boundary where the first would save
    proc = start(tmp_path, "twice", "max_steps=400", "eval.every=400", "checkpoint.every=400", "model.depth=4",
                 "data.seq_len=256", "eval.tokens=4096")
    wait_for(lambda: (tmp_path / "twice" / "metrics.jsonl").exists()
             and len((tmp_path / "twice" / "metrics.jsonl").read_text().splitlines()) >= 2, proc)
    proc.send_signal(signal.SIGTERM)
    seen = ""
    while "stopping at the next step boundary" not in seen:  # the first signal was handled
        char = proc.stderr.read(1)
        assert char, f"process ended before handling the signal: {seen[-500:]}"
        seen += char
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert not list((tmp_path / "twice" / "checkpoints").glob("[0-9]*"))  # gone without the step-boundary save
