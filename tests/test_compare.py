"""analysis.compare on small hand-made run directories: the table's numbers, the flags, bad input."""
import json

import pytest

from analysis.compare import Cluster, compute_s, main
from analysis.network import Link
from analysis.runs import find_runs, load_run
from jaximus import UserError

MiB = 2**20
# 100 MiB between 2 islands on a ring: each sends 100 MiB = 838.86 Mbit; at this bandwidth it takes 1 s
ONE_SECOND_GBPS = 8 * 100 * MiB / 1e9


def write_run(path, scheme, final_bpb, every=1, steps=4, tokens_per_step=1000, finished=True, partial_line=False,
              seq_len=256, overlap_steps=None, wire=None, sim_step_s=None):
    """A run directory as train.py writes it: per-step rows with the cumulative ledger, then evals."""
    path.mkdir(parents=True)
    per_step = scheme == "sync"
    config = {"seed": 0, "max_steps": steps, "data": {"seq_len": seq_len, "cache_dir": str(path)},
              "parallel": {"replica": 2, "fsdp": 1},
              "outer": {"name": scheme, "sync_every": every}, "run": {"name": path.name},
              "resolved": {"flops_per_token": 6e6,
                           "ledger": {"step": {"grads": 100 * MiB}, "sync": {}} if per_step
                           else {"step": {}, "sync": {"params": 100 * MiB}}}}
    if overlap_steps is not None:  # as the scheme records it; older runs have none
        config["resolved"]["overlap_steps"] = overlap_steps
    (path / "config.json").write_text(json.dumps(config))
    simulated = {} if sim_step_s is None else {"time/sim_s": 0.0}  # runs from before the simulated clock: none
    lines, syncs = [{"step": 0, "tokens": 0, "val/loss": 1.0, "val/bpb": final_bpb + steps * 0.1, **simulated}], 0
    for step in range(1, steps + 1):
        syncs += 1 if per_step or step % every == 0 else 0
        lines.append({"step": step, "tokens": step * tokens_per_step, "train/loss": 3.0,
                      "comm/cross_island_bytes": syncs * 100 * MiB, "comm/syncs": syncs,
                      "perf/tokens_per_sec": tokens_per_step / 2.0,
                      **({"comm/wire_bytes": syncs * wire} if wire is not None else {})})
        if step % 2 == 0:
            lines.append({"step": step, "tokens": step * tokens_per_step, "val/loss": 1.0,
                          "val/bpb": final_bpb + (steps - step) * 0.1,
                          **({} if sim_step_s is None else {"time/sim_s": step * sim_step_s})})
    text = "".join(json.dumps(line) + "\n" for line in lines)
    (path / "metrics.jsonl").write_text(text + ('{"step": 5, "tok' if partial_line else ""))
    if finished:
        (path / "summary.json").write_text(json.dumps({"perf/step_s": 2.0, "val/bpb": final_bpb}))
    return path


def table_rows(report: str) -> dict[str, dict]:
    lines = [line for line in report.splitlines() if line.startswith("|")]
    header = [h.strip() for h in lines[0].strip("|").split("|")]
    rows = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]
    return {row["run"]: row for row in rows}


def compare(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_table_numbers_from_hand_made_runs(tmp_path, capsys):
    write_run(tmp_path / "sweep" / "sync", "sync", 2.0)
    write_run(tmp_path / "sweep" / "diloco", "diloco", 2.1, every=2)
    code, out, err = compare(capsys, tmp_path / "sweep", "--out", tmp_path / "report", "--step-time", "1",
                             "--gbps", ONE_SECOND_GBPS, "--latency-ms", "0")
    assert code == 0, err
    rows = table_rows(out)
    sync, diloco = rows["sync"], rows["diloco"]
    assert (sync["val bpb"], sync["vs sync"], sync["MiB sent per island"], sync["syncs"]) == ("2.0000", "—", "400", "4")
    assert (diloco["val bpb"], diloco["vs sync"], diloco["MiB sent per island"]) == ("2.1000", "+0.1000", "200")
    assert (diloco["reduction"], diloco["syncs"], diloco["H"], diloco["tokens"]) == ("2x", "2", "2", "4,000")
    assert sync["peak MiB in a step"] == diloco["peak MiB in a step"] == "100"
    # sync: 4 s compute + 4 all-reduces of 1 s; overlapped, each hides behind the 2/3 s backward pass
    assert (sync["projected time, blocking"], sync["CU"], sync["CU, overlapped"]) == ("8 s", "50.0%", "75.0%")
    # diloco: 4 s + 2 blocking syncs of 1 s; overlapped, each hides behind one whole inner step
    assert (diloco["projected time, blocking"], diloco["CU"], diloco["CU, overlapped"]) == ("6 s", "66.7%", "100.0%")
    assert sync["flags"] == diloco["flags"] == ""
    assert (tmp_path / "report" / "results.md").read_text() in out
    # the scheme's own overlap, as recorded: a blocking sync program hides nothing, tau = 2 hides two steps
    write_run(tmp_path / "own" / "sync", "sync", 2.0)
    write_run(tmp_path / "own" / "blocking", "diloco", 2.1, every=2, overlap_steps=0.0)
    write_run(tmp_path / "own" / "streaming", "streaming_diloco", 2.1, every=2, overlap_steps=2.0)
    code, out, err = compare(capsys, tmp_path / "own", "--out", tmp_path / "own_report", "--step-time", "1",
                             "--gbps", ONE_SECOND_GBPS, "--latency-ms", "0")
    rows = table_rows(out)
    assert rows["blocking"]["CU, overlapped"] == rows["blocking"]["CU"] == "66.7%"
    assert rows["streaming"]["CU, overlapped"] == "100.0%"
    for name in ("bpb_vs_tokens", "bpb_vs_bytes", "bpb_vs_wallclock", "utilization_vs_bandwidth"):
        assert (tmp_path / "report" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "report" / "bpb_vs_simulated_time.png").exists()  # no run had a simulated clock
    write_run(tmp_path / "sim" / "fast", "diloco", 2.1, every=2, sim_step_s=1.0)
    write_run(tmp_path / "sim" / "straggling", "diloco", 2.1, every=2, sim_step_s=4.0)
    assert compare(capsys, tmp_path / "sim", "--out", tmp_path / "sim_report", "--step-time", "1")[0] == 0
    assert (tmp_path / "sim_report" / "bpb_vs_simulated_time.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_wire_bytes_drive_the_reduction_and_the_projection(tmp_path, capsys):
    """A compressed run is timed by what it puts on the wire, not by its payload (2 islands: ring factor 1)."""
    write_run(tmp_path / "sweep" / "sync", "sync", 2.0, wire=100 * MiB)
    write_run(tmp_path / "sweep" / "int8", "diloco", 2.1, every=2, wire=25 * MiB)
    code, out, err = compare(capsys, tmp_path / "sweep", "--out", tmp_path / "report", "--step-time", "1",
                             "--gbps", ONE_SECOND_GBPS, "--latency-ms", "0")
    assert code == 0, err
    row = table_rows(out)["int8"]
    assert (row["wire MiB"], row["reduction"]) == ("50", "8x")  # 2 syncs of 25 MiB vs sync's 4 x 100 MiB
    assert (row["projected time, blocking"], row["CU"]) == ("4.5 s", "88.9%")  # 4 s + 2 x 0.25 s


def test_step_time_from_flops_or_measured(tmp_path, capsys):
    run = load_run(write_run(tmp_path / "sync", "sync", 2.0))
    # 6e6 FLOPs/token x 500 tokens per island step, on 1 A100 (312 TFLOP/s) at 50% MFU
    assert compute_s(run, Cluster(Link(1.0), "A100", 0.5)) == pytest.approx(6e6 * 500 / (312e12 * 0.5))
    assert compute_s(run, Cluster(Link(1.0), step_s="measured")) == 2.0
    code, out, _ = compare(capsys, tmp_path / "sync", "--out", tmp_path / "b", "--step-time", "measured",
                           "--gbps", ONE_SECOND_GBPS, "--latency-ms", "0")
    assert table_rows(out)["sync"]["projected time, blocking"] == "12 s"  # 4 steps of the measured 2 s + 4 x 1 s


def test_runs_too_small_for_the_projected_accelerator_are_said_to_be(tmp_path, capsys):
    """6e6 FLOPs/token x 500 tokens on an H100 at 40% MFU is 8 us a step: CU is ~0 at any bandwidth, and
    the warning names the flag that projects the run's own step time instead."""
    write_run(tmp_path / "sync", "sync", 2.0)
    code, _, err = compare(capsys, tmp_path / "sync", "--out", tmp_path / "a")
    assert code == 0 and "every run computes for under 1 ms per inner step" in err and "--step-time measured" in err
    code, _, err = compare(capsys, tmp_path / "sync", "--out", tmp_path / "b", "--step-time", "measured")
    assert code == 0 and "under 1 ms" not in err


def test_mismatched_runs_are_flagged_not_silently_compared(tmp_path, capsys):
    write_run(tmp_path / "sync", "sync", 2.0)
    write_run(tmp_path / "short", "diloco", 2.1, every=2, tokens_per_step=500)
    write_run(tmp_path / "other_data", "diloco", 2.1, every=2, seq_len=128)
    code, out, err = compare(capsys, tmp_path / "sync", tmp_path / "short", tmp_path / "other_data",
                             "--out", tmp_path / "r")
    assert code == 0
    rows = table_rows(out)
    assert "tokens differ (2,000 vs 4,000)" in rows["short"]["flags"]
    assert "config differs: data.seq_len (256 vs 128)" in rows["other_data"]["flags"]
    assert "warning: short: tokens differ" in err and "warning: other_data: config differs" in err


def test_a_run_in_progress_is_read_as_far_as_it_goes(tmp_path, capsys):
    write_run(tmp_path / "sync", "sync", 2.0)
    write_run(tmp_path / "live", "diloco", 2.3, every=2, finished=False, partial_line=True)
    assert load_run(tmp_path / "live").steps == 4  # the half-written line is ignored
    code, out, err = compare(capsys, tmp_path / "sync", tmp_path / "live", "--out", tmp_path / "r",
                             "--step-time", "measured")
    assert code == 0
    assert "in progress (step 4 of 4)" in table_rows(out)["live"]["flags"]


def test_no_sync_run_leaves_differences_blank(tmp_path, capsys):
    write_run(tmp_path / "a", "diloco", 2.0, every=2)
    code, out, err = compare(capsys, tmp_path / "a", "--out", tmp_path / "r")
    assert code == 0 and table_rows(out)["a"]["vs sync"] == "—" and "no `sync` run" in err


def test_bad_directories_give_one_line_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, out, err = compare(capsys, tmp_path / "empty", "--out", tmp_path / "r")
    assert code == 2 and err.strip().count("\n") == 0 and "neither a run directory" in err
    run = write_run(tmp_path / "nometrics", "sync", 2.0)
    (run / "metrics.jsonl").unlink()
    code, out, err = compare(capsys, run, "--out", tmp_path / "r")
    assert code == 2 and "has no metrics yet" in err and str(run) in err
    code, out, err = compare(capsys, tmp_path / "missing", "--out", tmp_path / "r")
    assert code == 2 and "does not exist" in err
    assert not (tmp_path / "r" / "results.md").exists()


def test_a_sweep_skips_runs_without_metrics_and_keeps_its_order(tmp_path):
    sweep = tmp_path / "sweep"
    write_run(sweep / "b_sync", "sync", 2.0)
    write_run(sweep / "a_diloco", "diloco", 2.1, every=2)
    (sweep / "c_starting").mkdir()
    (sweep / "c_starting" / "config.json").write_text("{}")
    (sweep / "sweep.json").write_text(json.dumps({"config": "x", "points": [{"name": "b_sync"}, {"name": "a_diloco"}]}))
    runs, warnings = find_runs([sweep])
    assert [r.name for r in runs] == ["b_sync", "a_diloco"]
    assert len(warnings) == 1 and "c_starting" in warnings[0]
    with pytest.raises(UserError, match="not a run directory"):
        load_run(sweep)
