"""Asynchronous schemes: the scheduler against an event-driven transcription, Delayed Nesterov against a
NumPy transcription of its rule, equal speeds reducing to synchronous DiLoCo, and one-line errors."""
import heapq
import re

import numpy as np
import optax
import pytest
from test_outer import assert_trees_close, config, drive

from jaximus import UserError
from jaximus.asynchrony import AsyncClock
from jaximus.build import load_config
from jaximus.clock import NS, Speeds
from jaximus.optim.delayed_nesterov import delayed_nesterov
from jaximus.state import Progress
from outer_optimizers.async_diloco import ARRIVE, PULL

LEDGER = {"step": {}, "sync": {ARRIVE: 4000, PULL: 0}, "wire": {"step": {}, "sync": {ARRIVE: 6000.0, PULL: 0.0}}}
LINK = ("islands.gbps=0.000008", "islands.latency_ms=5")  # 4000 bytes: a push or a pull takes 4 s + 5 ms


def reference_schedule(cfg, H, grace_s, quorum, merged, push_ns, count):
    """The issue's rule as a heap of timed events: an island's round ends H[r] steps after its pull, and it
    arrives a push later; the first arrival opens a window that closes grace_s later, or as soon as quorum
    islands (all of them by default) wait; then the waiting pull the latest version, a pull later they start.
    Each arrival is an update, or (merged) the window's arrivals are one at its close. Ties: arrivals
    before closes, lower island first."""
    speeds, R = Speeds(cfg), cfg.parallel.replica
    taken, pulled, version, waiting, window, log, heap = [0] * R, [0] * R, 0, [], 0, [], []

    def start(r, t):
        heapq.heappush(heap, (t + sum(speeds.step_ns(r, k) for k in range(taken[r] + 1, taken[r] + H[r] + 1)) + push_ns,
                              0, r))
        taken[r] += H[r]

    def close(t):
        nonlocal version, waiting, window
        if merged:
            version += 1
            log.append(("arrive", tuple(r for r, _ in waiting), t, version, tuple(s for _, s in waiting)))
        for r, _ in waiting:
            pulled[r] = version
            start(r, t + push_ns)
        log.append(("pull", tuple(r for r, _ in waiting), t, version, ()))
        waiting, window = [], window + 1

    for r in range(R):
        start(r, 0)
    while len(log) < count:
        t, kind, who = heapq.heappop(heap)
        if kind == 1:  # a window's deadline; stale if that window already closed
            if who == window:
                close(t)
            continue
        if not waiting:
            heapq.heappush(heap, (t + round(grace_s * NS), 1, window))
        waiting.append((who, version - pulled[who]))
        if not merged:
            version += 1
            log.append(("arrive", (who,), t, version, (version - 1 - pulled[who],)))
        if len(waiting) == (quorum or R):
            close(t)
    return log


@pytest.mark.parametrize("merged,quorum,extra", [
    (False, None, ("islands.step_s=(0.58, 0.75, 1.51, 3.33)",)),  # Async Local-SGD's notebook speeds
    (False, None, ("islands.step_s=(1.0, 1.0, 2.0, 4.0)", "islands.jitter=0.4", "islands.straggler_prob=0.1")),
    (True, 2, ("islands.step_s=(1.0, 1.5, 2.0, 4.0)", "islands.jitter=0.2")),
    (True, 3, ("islands.dynamic_local_steps=True", "islands.step_s=(1.0, 1.0, 2.0, 4.0)")),
])
def test_scheduler_matches_an_event_driven_transcription(tiny_cfg, merged, quorum, extra):
    """Arrival order, simulated times, versions, staleness and who pulls which version, for unequal speeds."""
    cfg = tiny_cfg("outer.name='quorum_diloco'" if merged else "outer.name='async_diloco'", "outer.sync_every=4",
                   "max_steps=10000", *LINK, *extra)
    grace = 6.0
    clock = AsyncClock(cfg, LEDGER, 0.0, Progress(), grace, quorum, merged)
    got, step = [], 0
    while len(got) < 60:
        step += 1
        c = clock.clock(step)
        assert any(c.active)  # some island always has work
        got += [(e.kind, e.islands, e.time_ns, e.version, e.staleness) for e in c.exchanges]
        clock.advance(c.plan())
    want = reference_schedule(cfg, clock.H, grace, quorum, merged, 4 * NS + 5_000_000, len(got))
    assert got == want[:len(got)]
    assert max(s for e in got for s in e[4]) >= 1  # the speeds made some arrivals stale
    executed = clock.summary()["islands/step_efficiency"]
    assert 0 < executed < 1  # slow islands idle while fast ones take their steps


def test_equal_speeds_take_every_step_and_arrive_together(tiny_cfg):
    cfg = tiny_cfg("outer.name='async_diloco'", "outer.sync_every=3", "max_steps=9")
    clock = AsyncClock(cfg, LEDGER, 0.0, Progress(), 0.0, None, False)
    for step in range(1, 10):
        c = clock.clock(step)
        assert all(c.active)
        kinds = [(e.kind, e.islands, e.staleness) for e in c.exchanges]
        assert kinds == ([] if step % 3 else [*(("arrive", (r,), (r,)) for r in range(4)), ("pull", (0, 1, 2, 3), ())])
        clock.advance(c.plan())


def numpy_delayed_nesterov(grads, lr, beta, N, c):
    """2401.09135's Delayed Nesterov, transcribed: theta, m and the buffer as float64 arrays."""
    theta, m, D = np.zeros_like(grads[0]), np.zeros_like(grads[0]), np.zeros_like(grads[0])
    out = []
    for t, g in enumerate(grads):
        D = D + g
        if (t + 1) % N == 0:
            m = beta * m + D / N
            theta = theta - lr * ((1 - c * (N - 1)) * beta * m + g / N)
            D = np.zeros_like(D)
        else:
            theta = theta - lr * (c * beta * m + g / N)
        out.append(theta)
    return out


@pytest.mark.parametrize("N,c", [(3, 0.0), (3, 0.1), (4, 0.05)])
def test_delayed_nesterov_matches_numpy(N, c):
    grads = [np.random.default_rng(i).standard_normal(5) for i in range(11)]
    tx = delayed_nesterov(0.7, 0.9, N, c)
    params, state, got = np.zeros(5, np.float32), tx.init(np.zeros(5, np.float32)), []
    for g in grads:
        updates, state = tx.update(np.float32(g), state, params)
        params = optax.apply_updates(params, updates)
        got.append(np.asarray(params, np.float64))
    np.testing.assert_allclose(got, numpy_delayed_nesterov(grads, 0.7, 0.9, N, c), rtol=1e-5, atol=1e-6)


def test_delayed_nesterov_with_a_buffer_of_one_is_nesterov():
    """N = 1: optax.sgd(nesterov=True), PyTorch's SGD(nesterov=True) rule with dampening 0."""
    grads = [np.random.default_rng(i).standard_normal(5).astype(np.float32) for i in range(7)]
    a, b = delayed_nesterov(0.3, 0.9, 1), optax.sgd(0.3, momentum=0.9, nesterov=True)
    pa = pb = np.zeros(5, np.float32)
    sa, sb = a.init(pa), b.init(pb)
    for g in grads:
        ua, sa = a.update(g, sa, pa)
        ub, sb = b.update(g, sb, pb)
        pa, pb = optax.apply_updates(pa, ua), optax.apply_updates(pb, ub)
        np.testing.assert_allclose(pa, pb, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name,extra", [("async_diloco", ("outer.optimizer='delayed_nesterov'",)),
                                        ("quorum_diloco", ())])
def test_equal_speeds_with_a_long_grace_window_equal_synchronous_diloco(nanochat, tiny_cfg, tmp_path, name, extra):
    """Every island arrives at once and waits for the others: Delayed Nesterov with N = R (c = 0) takes one
    Nesterov step on the mean, as a quorum of all islands does, so both are DiLoCo (2401.09135, ASYNC §3)."""
    sgd = optax.sgd(0.05)  # Muon's Newton-Schulz would amplify float32 rounding past a tight tolerance
    common = ["outer.sync_every=2", "max_steps=6", "outer.lr=0.7", "outer.momentum=0.9"]
    sync, _ = drive(nanochat, config(tmp_path, tiny_cfg, "outer.name='diloco'", "run.name='s'", *common), 6, tx=sgd)
    late, _ = drive(nanochat, config(tmp_path, tiny_cfg, f"outer.name='{name}'", "outer.grace_s=100.0", "run.name='a'",
                                     *common, *extra), 6, tx=sgd)
    assert_trees_close(late.outer.params, sync.outer.params, rtol=1e-5, atol=1e-6)
    assert_trees_close(late.islands.params, sync.islands.params, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("overrides,needle", [
    (["outer.name='quorum_diloco'", "outer.quorum=5"], "outer.quorum=5: more than the 4 islands"),
    (["outer.name='async_diloco'", "outer.grace_s=-1.0"], "outer.grace_s=-1.0: must be a number >= 0"),
    (["outer.name='async_diloco'", "outer.staleness='linear'"], "outer.staleness='linear': choose one of none, sqrt"),
    (["outer.name='async_diloco'", "outer.optimizer='delayed_nesterov'", "outer.momentum=0.0"], "delays a momentum"),
    (["outer.name='async_diloco'", "outer.dn_buffer=0"], "outer.dn_buffer=0"),
    (["outer.name='async_diloco'", "faults.island_dropout=0.2"], "an asynchronous island is never dropped"),
])
def test_bad_async_settings(overrides, needle):
    from conftest import NANOCHAT, TINY
    with pytest.raises(UserError, match=re.escape(needle)) as err:
        load_config(NANOCHAT, [*TINY, *overrides])
    assert "\n" not in str(err.value)
