"""Sweeps: the grid, the manifest, skipping finished points and resuming unfinished ones with real runs."""
import json
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, TINY

from analysis.sweep import expand, main, point_name, split_values
from jaximus import UserError

DILOCO = "experiments/diloco_nanochat/config.py"


def test_values_split_on_top_level_commas_only():
    assert split_values("sync,diloco") == ["sync", "diloco"]
    assert split_values("[1,2],(3,4),'a,b'") == ["[1,2]", "(3,4)", "'a,b'"]


def test_positional_axes_multiply_and_grids_add():
    assert expand(["outer.name=sync,diloco", "outer.sync_every=10,50"], []) == [
        ["outer.name=sync", "outer.sync_every=10"], ["outer.name=sync", "outer.sync_every=50"],
        ["outer.name=diloco", "outer.sync_every=10"], ["outer.name=diloco", "outer.sync_every=50"]]
    points = expand(["max_steps=8"], ["outer.name=sync", "outer.name=diloco outer.sync_every=10,20", "outer.name=sync"])
    assert points == [["outer.name=sync", "max_steps=8"], ["outer.name=diloco", "outer.sync_every=10", "max_steps=8"],
                      ["outer.name=diloco", "outer.sync_every=20", "max_steps=8"]]
    assert point_name(points[1], {"outer.name", "outer.sync_every"}) == "diloco_sync_every-10"


def test_bad_sweep_arguments(tmp_path, capsys):
    with pytest.raises(UserError, match="run.name: set by the sweep"):
        expand(["run.name=x"], [])
    with pytest.raises(UserError, match="expected key=value"):
        expand(["outer.name"], [])
    out = tmp_path / "sweep"
    assert main(["--config", DILOCO, "--out", str(out), "outer.nmae=sync,diloco"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "outer.nmae" in err and "point outer.nmae=sync" in err
    assert main(["--config", DILOCO, "--out", str(out), "outer.name=sync", "max_steps=8,0"]) == 2
    assert "max_steps=0" in capsys.readouterr().err
    assert not out.exists()  # every point is checked before anything is written


def sweep(out, *args):
    return subprocess.run([sys.executable, "-m", "analysis.sweep", "--config", DILOCO, "--out", str(out), *TINY,
                           "max_steps=4", "outer.sync_every=2", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def test_sweep_runs_points_in_parallel_and_skips_finished_ones(tmp_path):
    out = tmp_path / "sweep"
    first = sweep(out, "outer.name=sync,diloco", "--parallel", "2")
    assert first.returncode == 0, first.stdout + first.stderr
    manifest = json.loads((out / "sweep.json").read_text())
    assert [p["name"] for p in manifest["points"]] == ["sync", "diloco"]
    assert {n: s["state"] for n, s in manifest["status"].items()} == {"sync": "done", "diloco": "done"}
    summaries = {n: json.loads((out / n / "summary.json").read_text()) for n in ("sync", "diloco")}
    assert summaries["sync"]["comm/syncs"] == 4 and summaries["diloco"]["comm/syncs"] == 2
    assert (out / "logs" / "diloco.log").is_file()

    again = sweep(out, "outer.name=sync,diloco")
    assert again.returncode == 0 and again.stdout.count("finished earlier, skipped") == 2

    other = subprocess.run([sys.executable, "-m", "analysis.sweep", "--config", "experiments/nanochat/config.py",
                            "--out", str(out), "outer.name=sync"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert other.returncode == 2 and "belongs to a sweep of" in other.stderr


def test_an_interrupted_sweep_resumes_when_run_again(tmp_path):
    out = tmp_path / "sweep"
    command = [sys.executable, "-m", "analysis.sweep", "--config", DILOCO, "--out", str(out), *TINY,
               "max_steps=150", "eval.every=50", "checkpoint.every=1000", "outer.name=sync,diloco"]
    sweep_process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "logs" / "sync.log"
    deadline = time.monotonic() + 300
    while not (log.is_file() and "tokens_per_sec" in log.read_text()):  # sync has finished a step
        assert time.monotonic() < deadline and sweep_process.poll() is None
        time.sleep(0.2)
    sweep_process.send_signal(signal.SIGINT)
    stdout, stderr = sweep_process.communicate(timeout=120)
    assert sweep_process.returncode == 130, stdout + stderr
    assert "run the same command again" in stderr
    status = json.loads((out / "sweep.json").read_text())["status"]
    assert status["sync"]["state"] == "interrupted" and "diloco" not in status
    assert not (out / "sync" / "summary.json").exists()

    resumed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming from step" in log.read_text()
    assert {s["state"] for s in json.loads((out / "sweep.json").read_text())["status"].values()} == {"done"}


def test_a_failing_point_is_reported_and_the_rest_still_run(tmp_path):
    result = sweep(tmp_path / "sweep", "--grid", "outer.name=sync",
                   "--grid", "outer.name=diloco data.source=files data.files=/nonexistent/*.txt")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 of 2 points failed: diloco_source-files_files-_nonexistent_.txt" in result.stderr
    assert "failed (exit 2): error: data.files=" in result.stdout
    status = json.loads((tmp_path / "sweep" / "sweep.json").read_text())["status"]
    failed = status["diloco_source-files_files-_nonexistent_.txt"]
    assert status["sync"]["state"] == "done" and (failed["state"], failed["exit_code"]) == ("failed", 2)
