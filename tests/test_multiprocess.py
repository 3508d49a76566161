"""Two processes x 4 fake CPU devices on loopback jax.distributed, each case in subprocesses with a timeout."""
import json
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import ROOT, TINY

from jaximus.launch import free_port, without_gloo_notices
from train import main as train_main

DILOCO = "experiments/diloco_nanochat/config.py"
LAUNCH = [sys.executable, "-m", "jaximus.launch", "--processes", "2", "--grace", "5", "--"]
RUN = [*TINY, "outer.sync_every=2", "checkpoint.every=4"]
TIMEOUT = 300
# Gloo sums in another order than the in-process all-reduce: equal to float32 rounding, not bitwise
RTOL = 1e-5


def launch(*args, timeout=TIMEOUT):
    return subprocess.run([*LAUNCH, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def metrics(run_dir, timings=True):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return rows if timings else [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("two")
    results = {}
    for scheme in ("sync", "diloco"):
        result = launch("train.py", "--config", DILOCO, *RUN, f"outer.name={scheme}", f"run.out_dir={out}",
                        f"run.name={scheme}")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        results[scheme] = (out / scheme, result.stdout)
    return results


@pytest.mark.parametrize("scheme", ["sync", "diloco"])
def test_two_processes_log_what_one_process_logs(scheme, two_process_runs, tmp_path):
    """Sync DP runs on one island of 8 devices in one process: its global batch depends on neither mesh nor processes."""
    run_dir, stdout = two_process_runs[scheme]
    mesh = ["parallel.replica=1", "parallel.fsdp=8"] if scheme == "sync" else []
    assert train_main(["--config", DILOCO, *RUN, f"outer.name={scheme}", *mesh, f"run.out_dir={tmp_path}",
                       "run.name=one"]) == 0
    one, two = metrics(tmp_path / "one"), metrics(run_dir)
    assert [r["step"] for r in one] == [r["step"] for r in two] and len(one) > 8
    for a, b in zip(one, two):
        for key in [k for k in a if k.startswith(("train/loss", "val/"))]:
            assert b[key] == pytest.approx(a[key], rel=RTOL), (a["step"], key)
        if not mesh:
            assert [a.get(k) for k in ("comm/cross_island_bytes", "comm/syncs")] == \
                [b.get(k) for k in ("comm/cross_island_bytes", "comm/syncs")]
    assert "[p0] jaximus: done" in stdout and "Gloo" not in stdout
    said = [line for line in stdout.splitlines() if line.startswith("[p1]") and "jaximus" in line]
    assert len(said) == 1 and "process 1 of 2 joining 127.0.0.1:" in said[0]  # and nothing after it


def test_gloo_notices_are_dropped_even_when_two_interleave():
    """Lines as a two-process launch printed them: jaxlib writes each notice in pieces from several threads."""
    notice = b" is connected to 1 peer ranks. Expected number of connected peer ranks is : 1"
    bar = b"diloco_nanochat:   0%|          | 0/2 [00:00<?, ?it/s]"
    assert without_gloo_notices(b"[Gloo] Rank 1[Gloo] Rank 0" + notice) is None
    assert without_gloo_notices(notice) is None
    assert without_gloo_notices(b"[Gloo] Rank " + b"3" + notice.replace(b"1", b"3")) is None
    assert without_gloo_notices(bar + b"[Gloo] Rank 1" + notice) == bar
    assert without_gloo_notices(b"") == b"" and without_gloo_notices(b"jaximus: done | 3 syncs") == b"jaximus: done | 3 syncs"


def test_a_two_process_run_resumes_exactly(two_process_runs, tmp_path):
    """Rewind the finished 2-process DiLoCo run to its step-4 checkpoint and replay: identical to the first time."""
    run_dir, _ = two_process_runs["diloco"]
    first = metrics(run_dir, timings=False)
    copy = tmp_path / "diloco"
    subprocess.run(["cp", "-r", str(run_dir), str(copy)], check=True)
    result = launch("train.py", "--config", DILOCO, *RUN, "outer.name=diloco", f"run.out_dir={tmp_path}",
                    "run.name=diloco", "run.resume=4")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "[p0] jaximus: resuming from step 4" in result.stdout
    assert metrics(copy, timings=False) == first  # both processes restored their own shards and loader positions


def test_cross_island_collectives_run_across_processes(tmp_path):
    report = tmp_path / "inspect.json"
    result = launch("-m", "jaximus.inspect", "--config", DILOCO, *TINY, "--schemes", "sync,diloco",
                    "--json", str(report))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    sync, diloco = json.loads(report.read_text())
    [sync_inner], [diloco_inner] = sync["inner"], diloco["inner"]
    assert sync_inner["collectives"] >= 1 and sync_inner["processes"] == 2  # gradients cross processes
    assert sync_inner["hlo"] == sync_inner["ledger"]
    assert diloco_inner["collectives"] == 0 and diloco_inner["processes"] == 0  # nothing leaves an island
    assert [(e["processes"], e["hlo"] == e["ledger"]) for e in diloco["syncs"]] == [(2, True)]


def test_killing_one_process_stops_the_launch_with_a_clear_message(tmp_path):
    name = f"victim{time.monotonic_ns()}"
    command = [*LAUNCH, "train.py", "--config", DILOCO, *TINY, "max_steps=100000", "eval.every=100000",
               "checkpoint.every=100000", f"run.out_dir={tmp_path}", f"run.name={name}"]
    launcher = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(launcher.stdout), daemon=True)
    reader.start()
    deadline, log = time.monotonic() + TIMEOUT, tmp_path / name / "metrics.jsonl"
    while not (log.is_file() and log.read_text().count("\n") >= 2):  # both processes are training
        assert time.monotonic() < deadline and launcher.poll() is None, "".join(lines)
        time.sleep(0.2)
    pid = subprocess.run(["pgrep", "-f", f"run.name={name} .*distributed.process_id=1"], capture_output=True,
                         text=True).stdout.split()
    assert len(pid) == 1
    killed = time.monotonic()
    subprocess.run(["kill", "-KILL", pid[0]], check=True)
    stderr = launcher.stderr.read()
    code = launcher.wait(timeout=60)
    assert time.monotonic() - killed < 30  # SIGTERM to the survivor, SIGKILL after the 5 s grace
    assert code == 137
    assert "launch: failed: process 1 of 2, killed by SIGKILL" in stderr
    assert subprocess.run(["pgrep", "-f", f"run.name={name}"], capture_output=True).returncode == 1  # none left


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGSTOP], ids=["dead", "stalled"])
def test_a_lost_peer_of_a_run_joined_by_hand_is_named_within_the_timeout(tmp_path, how):
    """No launcher to stop the survivor: its own watch sees the peer's beats stop and ends it in one line."""
    timeout_s = 10
    command = [sys.executable, "train.py", "--config", DILOCO, *TINY, "max_steps=100000", "eval.every=100000",
               "checkpoint.every=100000", f"run.out_dir={tmp_path}", "run.name=peers", "distributed.num_processes=2",
               f"distributed.coordinator=127.0.0.1:{free_port()}", f"distributed.timeout_s={timeout_s}"]
    logs = [open(tmp_path / f"p{i}.err", "w") for i in range(2)]
    procs = [subprocess.Popen([*command, f"distributed.process_id={i}"], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=logs[i]) for i in range(2)]
    try:
        deadline, log = time.monotonic() + TIMEOUT, tmp_path / "peers" / "metrics.jsonl"
        while not (log.is_file() and log.read_text().count("\n") >= 3):  # both processes are training
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), (tmp_path / "p0.err").read_text()
            time.sleep(0.2)
        procs[1].send_signal(how)
        killed = time.monotonic()
        assert procs[0].wait(timeout=3 * timeout_s) == 2
        assert time.monotonic() - killed < timeout_s
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for f in logs:
            f.close()
    err = (tmp_path / "p0.err").read_text()
    errors = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err[-3000:]
    assert errors[0].startswith(f"error: distributed: process 1 of 2 stopped responding (silent for {timeout_s / 2:g} s")
    steps = errors[0].split("last step each reported: ")[1].split(".")[0]
    p0, p1 = (int(part.split()[1]) for part in steps.split(", "))
    assert p0 >= 3 and 0 <= p1 <= p0  # p0 logged step 2 a step late; p1's is its last beat's (1 s = timeout_s / 10)


def test_distributed_keys_are_checked(tmp_path, capsys):
    assert train_main(["--config", DILOCO, *TINY, "distributed.num_processes=2", "distributed.process_id=0"]) == 2
    assert "distributed.coordinator" in capsys.readouterr().err
    assert train_main(["--config", DILOCO, *TINY, "distributed.num_processes=2", "distributed.process_id=2",
                       "distributed.coordinator=127.0.0.1:1"]) == 2
    assert "0 <= process_id < num_processes" in capsys.readouterr().err


def test_an_island_may_not_straddle_processes(tmp_path):
    result = launch("train.py", "--config", DILOCO, *TINY, "parallel.replica=1", "parallel.fsdp=8",
                    f"run.out_dir={tmp_path}", timeout=120)
    assert result.returncode == 2
    assert "[p0] error: parallel.replica=1 islands do not divide evenly over 2 processes" in result.stderr
    assert "error:" not in result.stdout and "launch: failed: process" in result.stderr


def test_launcher_usage_errors():
    result = subprocess.run([sys.executable, "-m", "jaximus.launch", "--processes", "2", "train.py"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr == ("error: python -m jaximus.launch: train.py is not a launcher flag; put the command after "
                             "--, as in python -m jaximus.launch --processes 2 -- train.py --config ...; see python -m "
                             "jaximus.launch --help\n")


def test_sigint_to_the_launcher_saves_on_every_process_and_exits_130(tmp_path):
    command = [*LAUNCH, "train.py", "--config", DILOCO, *TINY, "max_steps=100000", "eval.every=100000",
               "checkpoint.every=100000", "outer.name=diloco", f"run.out_dir={tmp_path}", "run.name=stop"]
    launcher = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    threading.Thread(target=lambda: lines.extend(launcher.stdout), daemon=True).start()
    deadline, log = time.monotonic() + TIMEOUT, tmp_path / "stop" / "metrics.jsonl"
    while not (log.is_file() and log.read_text().count("\n") >= 2):  # both processes are in the training loop
        assert time.monotonic() < deadline and launcher.poll() is None, "".join(lines)
        time.sleep(0.2)
    launcher.send_signal(signal.SIGINT)
    stderr = launcher.stderr.read()
    assert launcher.wait(timeout=120) == 130, stderr
    saved = [p.name for p in (tmp_path / "stop" / "checkpoints").iterdir() if p.name.isdigit()]
    assert len(saved) == 1  # one checkpoint, at the step both processes agreed on
