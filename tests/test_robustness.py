"""What a long campaign meets: damaged files, a full disk, twin runs, divergence, bad flags. Each case ends in
one `error:` line naming the file or key, exit code 2, no traceback, and nothing written or changed."""
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import NANOCHAT, ROOT, TINY

from analysis.compare import main as compare_main
from analysis.sweep import main as sweep_main
from jaximus import UserError
from jaximus.checkpoint import Checkpointer
from jaximus.export import main as export_main
from jaximus.files import append_line
from jaximus.guard import Diverged, DivergenceGuard
from train import main

LLAMA = str(ROOT / "experiments" / "llama" / "config.py")
HF = ROOT / "tests" / "fixtures" / "hf" / "llama"
SMALL = ["data.seq_len=12", "data.batch_size=8", "eval.tokens=96", "optimizer.ns_dtype='float32'", "data.prefetch=1",
         "data.tokenizer_train_chars=100000"]
TOOLS = ["analysis.compare", "analysis.sweep", "analysis.reproduce", "analysis.network", "jaximus.export",
         "jaximus.inspect", "jaximus.bench", "jaximus.launch"]  # every command-line tool but train.py
HIGH_LR = [f"optimizer.{k}=10" for k in ("matrix_lr", "embedding_lr", "unembedding_lr")]


def one_error(err: str, needle: str, alone: bool = True) -> str:
    """The single `error:` line; `alone`: nothing else on stderr (else a progress bar may precede it)."""
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and needle in errors[0], lines
    assert "Traceback" not in err and (not alone or lines == errors), lines
    return errors[0]


def files(directory) -> dict:
    """Every file under `directory` with its bytes: 'nothing changed' is this, equal before and after."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished")
    args = ["--config", LLAMA, f"model.init_from='{HF}'", *SMALL, "max_steps=4", "checkpoint.every=4", "eval.every=4",
            f"run.out_dir='{out}'", "run.name='r'"]  # an experiment with a Hugging Face architecture, for export
    assert main(args) == 0
    return out / "r", args


def copy_of(finished_run, tmp_path):
    run_dir, args = finished_run
    shutil.copytree(run_dir, tmp_path / "r")
    return tmp_path / "r", [a.replace(str(run_dir.parent), str(tmp_path)) for a in args]


BINARY = bytes(range(128, 256)) * 8  # no UTF-8 text starts with a continuation byte


@pytest.mark.parametrize("name,content,needle", [
    ("empty.jsonl", b"", "empty.jsonl is empty"),
    ("binary.txt", BINARY, "binary.txt is not UTF-8 text"),
    ("binary.jsonl", BINARY, "binary.jsonl is not UTF-8 text"),
    ("prose.jsonl", b"plain prose, not JSON\n", "prose.jsonl: the first line is not a JSON object"),
])
def test_damaged_data_files(tmp_path, capsys, name, content, needle):
    (tmp_path / name).write_bytes(content)
    rc = main(["--config", NANOCHAT, *TINY, "data.source='files'", f"data.files=['{tmp_path / name}']",
               f"run.out_dir='{tmp_path / 'runs'}'"])
    assert rc == 2
    one_error(capsys.readouterr().err, needle)
    assert not (tmp_path / "runs").exists()


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage,needle", [
    (lambda d: _truncate(d / "model-00002-of-00002.safetensors"), "model-00002-of-00002.safetensors is not a readable"),
    (lambda d: (d / "config.json").write_text("{'hidden_size': 16,"), "config.json: not valid JSON"),
])
def test_damaged_init_from(tmp_path, capsys, damage, needle):
    shutil.copytree(HF, tmp_path / "hf")
    damage(tmp_path / "hf")
    rc = main(["--config", LLAMA, f"model.init_from='{tmp_path / 'hf'}'", *SMALL, f"run.out_dir='{tmp_path / 'runs'}'"])
    assert rc == 2
    assert "model.init_from" in one_error(capsys.readouterr().err, needle)
    assert not (tmp_path / "runs").exists()


def test_damaged_tokenizer_path(tmp_path, capsys):
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    rc = main(["--config", NANOCHAT, *TINY, f"data.tokenizer_path='{tmp_path / 'tokenizer.json'}'",
               f"run.out_dir='{tmp_path / 'runs'}'"])
    assert rc == 2
    one_error(capsys.readouterr().err, f"data.tokenizer_path={tmp_path / 'tokenizer.json'}: not a readable tokenizer")
    assert not (tmp_path / "runs").exists()


def test_config_with_a_syntax_error(tmp_path, capsys):
    shutil.copytree(ROOT / "experiments" / "nanochat", tmp_path / "exp")
    config = tmp_path / "exp" / "config.py"
    config.write_text(config.read_text().replace("def get_config(", "def get_config(:", 1))
    assert main(["--config", str(config)]) == 2
    line = one_error(capsys.readouterr().err, f"{config}:")
    assert ": syntax error (" in line and line.endswith("fix the file")


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs a /proc, where no directory can be made")
def test_out_dir_that_cannot_be_created(capsys):
    assert main(["--config", NANOCHAT, *TINY, "run.out_dir='/proc/jaximus-runs'"]) == 2
    one_error(capsys.readouterr().err, "run.out_dir=/proc/jaximus-runs")


def test_damaged_run_config_on_resume(finished_run, tmp_path, capsys):
    run_dir, args = copy_of(finished_run, tmp_path)
    (run_dir / "config.json").write_text('{"seed": 0, "model": {')
    before = files(run_dir)
    assert main(args) == 2  # the same command again: a resume
    one_error(capsys.readouterr().err, f"{run_dir / 'config.json'}: not valid JSON")
    assert files(run_dir) == before


def test_export_of_a_damaged_checkpoint(finished_run, tmp_path, capsys):
    run_dir, _ = copy_of(finished_run, tmp_path)
    for path in (run_dir / "checkpoints" / "4" / "state").rglob("*"):
        if path.is_file():
            _truncate(path)
    assert export_main([str(run_dir), "--out", str(tmp_path / "hf")]) == 2
    one_error(capsys.readouterr().err, f"{run_dir / 'checkpoints' / '4'}: unreadable")
    assert not (tmp_path / "hf").exists()
    with pytest.raises(SystemExit) as stop:
        export_main([str(run_dir), "--step", "abc", "--out", str(tmp_path / "hf")])
    assert stop.value.code == 2
    one_error(capsys.readouterr().err, "--step: invalid int value: 'abc'")


def test_truncated_sweep_manifest(finished_run, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    copy_of(finished_run, sweep)
    (sweep / "sweep.json").write_text('{"config": "experiments/nanochat/config.py", "points": [')
    before = files(sweep)
    assert sweep_main(["--config", LLAMA, "--out", str(sweep), "--inline", *SMALL, "max_steps=2,4"]) == 2
    one_error(capsys.readouterr().err, f"{sweep / 'sweep.json'}: not valid JSON")
    assert compare_main([str(sweep), "--out", str(tmp_path / "results")]) == 2
    one_error(capsys.readouterr().err, f"{sweep / 'sweep.json'}: not valid JSON")
    assert files(sweep) == before and not (tmp_path / "results").exists()


def test_compare_refuses_what_it_cannot_use(finished_run, tmp_path, capsys):
    half = tmp_path / "sweep" / "half"  # a run killed before its first step: config.json, no metrics
    half.mkdir(parents=True)
    shutil.copy(finished_run[0] / "config.json", half / "config.json")
    assert compare_main([str(tmp_path / "sweep"), "--out", str(tmp_path / "results")]) == 2
    one_error(capsys.readouterr().err, "no run with metrics to compare")
    assert not (tmp_path / "results").exists()
    (tmp_path / "a_file").write_text("kept")
    assert compare_main([str(finished_run[0]), "--out", str(tmp_path / "a_file")]) == 2
    one_error(capsys.readouterr().err, f"--out {tmp_path / 'a_file'}: a file is there")
    assert (tmp_path / "a_file").read_text() == "kept"
    with pytest.raises(SystemExit) as stop:
        compare_main([str(finished_run[0]), "--out", str(tmp_path / "results"), "--step-time", "-1"])
    assert stop.value.code == 2
    one_error(capsys.readouterr().err, "argument --step-time: must be > 0 seconds per inner step")


@pytest.mark.parametrize("module", TOOLS)
def test_every_tool_answers_a_bad_flag_in_one_line(module, capsys):
    with pytest.raises(SystemExit) as stop:
        importlib.import_module(module).main(["--no-such-flag"])
    assert stop.value.code == 2
    line = one_error(capsys.readouterr().err, f"error: python -m {module}: ")
    assert "--no-such-flag" in line or "required" in line


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of the given size (root only; skipped with the reason elsewhere), unmounted afterwards."""
    mounted = []

    def mount(size: str):
        if os.geteuid() != 0:
            pytest.skip("a small tmpfs needs root to mount")
        path = tmp_path / f"disk{len(mounted)}"
        path.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                              text=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=True)


def test_a_full_disk_stops_the_run_in_one_line(small_disk, tmp_path, capsys):
    disk = small_disk("1m")  # config, tokenizer and metrics fit; the first checkpoint (18 MB) does not
    rc = main(["--config", NANOCHAT, *TINY, "checkpoint.every=4", f"run.out_dir='{disk}'", "run.name='full'"])
    assert rc == 2
    line = one_error(capsys.readouterr().err, f"{disk / 'full' / 'checkpoints'}: disk full (needed ", alone=False)
    assert "free); free space there or set run.out_dir" in line
    assert not list((disk / "full" / "checkpoints").iterdir())  # no temporary checkpoint left behind
    rows = [json.loads(line) for line in (disk / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4]  # each line whole, none after the save


def test_a_metrics_line_is_written_whole_or_not_at_all(small_disk):
    path = small_disk("64k") / "metrics.jsonl"
    written = 0
    with open(path, "ab", buffering=0) as f, pytest.raises(UserError, match=f"{path.parent}: disk full"):
        while True:
            append_line(f, json.dumps({"step": written, "pad": "x" * 300}))
            written += 1
    text = path.read_text()
    assert text.endswith("\n") and [json.loads(line)["step"] for line in text.splitlines()] == list(range(written))


def test_a_checkpoint_that_fails_mid_write_leaves_nothing(small_disk, monkeypatch):
    """Orbax runs out of room in its writer threads (the free-space estimate said it fits): one line, no tmp dir."""
    import jax.numpy as jnp
    import numpy as np

    disk = small_disk("2m")
    monkeypatch.setattr("jaximus.checkpoint.free_bytes", lambda path: 1 << 40)
    checkpointer = Checkpointer(disk / "checkpoints", keep=2)
    state = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(1024, 1024)), jnp.float32)}  # 4 MiB
    with pytest.raises(UserError, match=f"{disk / 'checkpoints'}: disk full \\(needed 4,194,304 bytes, "):
        checkpointer.save(1, state, {"progress": {}})
        checkpointer.wait()
    checkpointer.close()
    assert list((disk / "checkpoints").iterdir()) == []


def test_a_second_run_of_one_directory_is_refused_and_a_dead_runs_lock_taken_over(tmp_path, capsys):
    args = ["--config", NANOCHAT, *TINY, "eval.every=1000", "checkpoint.every=1000", f"run.out_dir='{tmp_path}'",
            "run.name='twin'"]
    first = subprocess.Popen([sys.executable, "train.py", *args, "max_steps=100000"], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        log, deadline = tmp_path / "twin" / "metrics.jsonl", time.monotonic() + 120
        while not (log.is_file() and log.read_text().count("\n") >= 2):  # it is training
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.2)
        lock = (tmp_path / "twin" / "run.lock").read_text()
        assert json.loads(lock)["pid"] == first.pid
        assert main([*args, "max_steps=100000"]) == 2  # the same command again
        one_error(capsys.readouterr().err, f"{tmp_path / 'twin'}: in use by pid {first.pid} on ")
        assert (tmp_path / "twin" / "run.lock").read_text() == lock
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert main([*args, "max_steps=2"]) == 0  # the dead run's lock is stale
    assert f"taking over the lock of pid {first.pid}" in capsys.readouterr().err
    assert (tmp_path / "twin" / "run.lock").read_text() == ""  # released at the end


def test_the_divergence_guard_counts_consecutive_steps(tiny_cfg):
    guard = DivergenceGuard(tiny_cfg("guard.loss_margin=1.0", "guard.patience=3"), reference=6.0)
    for step, loss in enumerate([6.5, 7.5, 7.2, 6.9, 7.1, 8.0], 1):  # above 7 at 2, 3, then again from 5
        guard.check(step, loss)
    with pytest.raises(Diverged) as stop:
        guard.check(7, float("inf"))
    assert (stop.value.first, stop.value.step) == (5, 7)
    off = DivergenceGuard(tiny_cfg("guard.patience=0"), reference=6.0)
    for step in range(1, 10):
        off.check(step, 100.0)


def test_a_diverging_run_stops_and_keeps_its_last_good_checkpoint(tmp_path, capsys):
    args = ["--config", NANOCHAT, *TINY, "checkpoint.every=2", "checkpoint.keep=10", "optimizer.schedule_steps=16",
            f"run.out_dir='{tmp_path}'", "run.name='div'"]
    assert main([*args, "max_steps=4"]) == 0  # a healthy start
    capsys.readouterr()
    assert main([*args, "max_steps=16", *HIGH_LR]) == 2  # then every learning rate at 10: the loss climbs to 17
    line = one_error(capsys.readouterr().err, "training diverged: the loss has stayed above the step-0 validation loss",
                     alone=False)
    first = int(line.split(" since step ")[1].split()[0])
    kept = sorted(int(p.name) for p in (tmp_path / "div" / "checkpoints").iterdir())
    assert 4 in kept and max(kept) < first and f"the checkpoint at step {max(kept)} is kept" in line
    assert main([*args, "max_steps=16"]) == 0  # at the old learning rates a rerun resumes from it and trains on
    assert f"resuming from step {max(kept)}" in capsys.readouterr().out


@pytest.mark.parametrize("module", TOOLS)
def test_every_tool_explains_every_flag(module, capsys):
    with pytest.raises(SystemExit) as stop:
        importlib.import_module(module).main(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m {module}")
    lines, section = out.splitlines(), None
    for i, line in enumerate(lines):
        if line and not line.startswith(" "):
            section = line
        elif section in ("positional arguments:", "options:") and re.match(r"  \S", line):  # one argument's line
            explained = "  " in line.strip() or (i + 1 < len(lines) and lines[i + 1].startswith("    "))
            assert explained, f"{module}: {line.strip()} has no help text"
