"""The simulated clock (jaximus/clock.py) against an event-driven transcription, its speed model's draws,
and one-line errors for bad speed settings."""
import heapq
import json
import math

import numpy as np
import pytest

from jaximus.clock import NS, IslandClock, Speeds
from jaximus.plan import Event
from jaximus.state import Progress
from outer_optimizers.base import PARAMS
from train import main

LEDGER = {"step": {Event("grads"): 4000}, "sync": {PARAMS: 4000},
          "wire": {"step": {Event("grads"): 6000.0}, "sync": {PARAMS: 6000.0}}}
LINK = ("islands.gbps=0.000001", "islands.latency_ms=5")  # 6000 bytes: 48 s on the wire, 6 x 5 ms of latency


def durations(cfg, steps):
    speeds = Speeds(cfg)
    return [[speeds.step_ns(r, k) for r in range(cfg.parallel.replica)] for k in range(1, steps + 1)]


def local_update_oracle(step_ns, H, link_ns):
    """Event-driven: each island runs its steps on its own; at every H-th step (and the last) it arrives at the
    sync, which starts when the last island arrives and ends link_ns later, when every island starts again."""
    R, steps = len(step_ns[0]), len(step_ns)
    queue = [(step_ns[0][r], r, 1) for r in range(R)]
    arrived, applies, waits = {}, [], [0] * R
    while queue:
        t, r, k = heapq.heappop(queue)
        if k % H and k != steps:
            heapq.heappush(queue, (t + step_ns[k][r], r, k + 1))
            continue
        arrived[r] = t
        if len(arrived) == R:
            start = max(arrived.values())
            applies.append(start + link_ns)
            for q, at in arrived.items():
                waits[q] += start - at
                if k < steps:
                    heapq.heappush(queue, (start + link_ns + step_ns[k][q], q, k + 1))
            arrived = {}
    return applies, waits


@pytest.mark.parametrize("speeds", [("islands.step_s=(0.58, 0.75, 1.51, 3.33)",),
                                    ("islands.step_s=(1.0,)", "islands.jitter=0.5"),
                                    ("islands.step_s=(1, 2, 1, 2)", "islands.jitter=0.1", "islands.straggler_prob=0.3")])
def test_local_updates_wait_for_the_slowest_island(tiny_cfg, speeds):
    cfg = tiny_cfg("max_steps=23", "outer.sync_every=5", *LINK, *speeds)
    clock, steps = IslandClock(cfg, LEDGER, 0.0, Progress()), durations(cfg, 23)
    events = []
    for k in range(1, 24):
        events += clock.advance(clock.clock(k).plan(groups={PARAMS} if k % 5 == 0 or k == 23 else ()))
    link = round(8 * 6000 / 1e3 * NS) + 6 * 5_000_000
    applies, waits = local_update_oracle(steps, 5, link)
    assert sorted({round(e["start_s"] * NS) for e in events if e["kind"] == "apply"}) == applies
    summary = clock.summary()
    assert summary["time/sim_s"] == applies[-1] / NS and summary["time/outer_versions"] == 5
    total = applies[-1]
    np.testing.assert_allclose(summary["time/island_busy"], np.sum(steps, axis=0) / total, rtol=1e-12)
    np.testing.assert_allclose(summary["time/island_wait"], np.array(waits) / total, rtol=1e-12)
    assert summary["time/goodput"] == pytest.approx(np.sum(steps) / (4 * total), rel=1e-12)
    computed = sorted(e["end_s"] - e["start_s"] for e in events if e["kind"] == "compute")
    np.testing.assert_allclose(computed, sorted(np.ravel(steps) / NS), rtol=1e-9)


def test_an_in_step_mean_waits_for_the_slowest_and_hides_behind_its_backward(tiny_cfg):
    """Sync DP: every step the islands meet; the gradient mean hides behind 2/3 of the slowest island's step."""
    cfg = tiny_cfg("max_steps=6", *LINK, "islands.step_s=(10, 20, 40, 80)")
    clock = IslandClock(cfg, LEDGER, 2 / 3, Progress())
    for k in range(1, 7):
        clock.advance(clock.clock(k).plan(events={Event("grads")}))
    link_s = 48 + 0.03
    assert clock.now_s() == pytest.approx(6 * (80 + max(0.0, link_s - 2 / 3 * 80)), rel=1e-12)


def test_dropped_islands_neither_wait_nor_send(tiny_cfg):
    cfg = tiny_cfg("max_steps=4", "outer.sync_every=2", *LINK, "islands.step_s=(1, 2, 3, 4)", "faults.island_dropout=0.5")
    clock, checked = IslandClock(cfg, LEDGER, 0.0, Progress()), 0
    for k in range(1, 5):
        present = clock.clock(k).present
        before = list(clock.state["ns"])
        clock.advance(clock.clock(k).plan(groups={PARAMS} if k % 2 == 0 else ()))
        if k % 2 == 0 and any(present) and not all(present):
            here = [before[r] + (r + 1) * NS for r in range(4) if present[r]]
            for r in range(4):
                expected = max(here) + round(48.03 * NS) if present[r] else before[r] + (r + 1) * NS
                assert clock.state["ns"][r] == expected
            checked += 1
    assert checked  # seed 0 drops some, not all, islands from a sync


def test_speed_draws_are_seeded_lognormal_with_stragglers(tiny_cfg, tmp_path):
    cfg = tiny_cfg("islands.step_s=(2.0,)", "islands.jitter=0.25", "islands.straggler_prob=0.1",
                   "islands.straggler_slowdown=10")
    speeds = Speeds(cfg)
    seconds = np.array([[speeds.step_ns(r, k) / NS for r in range(4)] for k in range(1, 2001)])
    assert np.array_equal(seconds, [[Speeds(cfg).step_ns(r, k) / NS for r in range(4)] for k in range(1, 2001)])
    stragglers = seconds > 2.0 * math.exp(3 * 0.25)  # beyond three sigmas of jitter: a straggler's step
    assert 0.08 < stragglers.mean() < 0.12
    logs = np.log(seconds[~stragglers] / 2.0)
    assert abs(np.median(logs)) < 0.02 and abs(logs.std() - 0.25) < 0.02
    assert not np.array_equal(seconds[:, 0], seconds[:, 1])  # each island draws its own
    measured = tmp_path / "times.json"
    measured.write_text(json.dumps([[0.5, 1, 1.5, 2], [1, 1, 1, 1]]))
    replay = Speeds(tiny_cfg(f"islands.step_times='{measured}'"))
    assert [replay.step_ns(3, k) for k in (1, 2, 3)] == [2 * NS, NS, 2 * NS]  # cyclic


@pytest.mark.parametrize("override,message", [
    ("islands.step_s=(1, -1, 1, 1)", "islands.step_s=(1, -1, 1, 1): give one positive number of seconds, or 4"),
    ("islands.step_s=(1, 2)", "islands.step_s=(1, 2): give one positive number of seconds, or 4 (one per island"),
    ("islands.jitter=-0.1", "islands.jitter=-0.1: must be a number >= 0"),
    ("islands.straggler_slowdown=0.5", "islands.straggler_slowdown=0.5: must be a number >= 1"),
    ("islands.step_times='/nonexistent/times.json'", "islands.step_times=/nonexistent/times.json: No such file"),
])
def test_bad_speed_settings_are_one_line(capsys, override, message):
    from conftest import DILOCO, TINY
    assert main(["--config", DILOCO, *TINY, override]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
