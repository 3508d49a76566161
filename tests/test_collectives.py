"""No hidden communication: the compiled programs move exactly the bytes the ledger states."""
import jax
import numpy as np
import pytest
from conftest import REGISTERED

from jaximus.hlo import collectives, crosses_islands
from jaximus.inspect import inspect_scheme, main
from jaximus.islands import island_mean, tree_bytes
from jaximus.mesh import make_mesh
from jaximus.plan import Event
from jaximus.state import OuterState
from outer_optimizers import SCHEMES, Scheme
from outer_optimizers.base import make_ledger


@pytest.mark.parametrize("name", REGISTERED)
def test_ledger_equals_compiled_cross_island_bytes(nanochat, tiny_cfg, name):
    cfg = tiny_cfg(f"outer.name='{name}'", "outer.sync_every=4")
    report = inspect_scheme(cfg, nanochat)
    for inner in report["inner"]:  # every variant of the inner step: one per set of in-step events
        assert inner["hlo"] == inner["ledger"] and inner["hlo_wire"] == pytest.approx(inner["ledger_wire"]), inner
        if inner["ledger"] == 0:  # a step whose events send nothing compiles no collective across islands
            assert inner["collectives"] == 0, inner
    if name == "sync":
        [inner] = report["inner"]
        assert inner["collectives"] >= 1 and inner["ledger"] == 4 * report["params"] and not report["syncs"]
    else:  # a local-update scheme has inner steps that talk to no other island, and sends its state elsewhere
        assert any(inner["ledger"] == 0 for inner in report["inner"])
        assert any(e["ledger"] > 0 for e in report["inner"] + report["syncs"])
    for event in report["syncs"]:
        if event["groups"] == ["pull"]:  # an asynchronous island takes the outer model from its own copy
            assert event["collectives"] == 0 and event["ledger"] == 0, event
            continue
        assert event["collectives"] >= 1 and event["hlo"] == event["ledger"] > 0, event
        assert event["hlo_wire"] == pytest.approx(event["ledger_wire"]) == 1.5 * event["ledger"]  # ring, R = 4
    if name == "desloc":  # params every 4, first moments every 12, second every 24
        assert {tuple(e["groups"]) for e in report["syncs"]} == {("params",), ("mu", "params"), ("mu", "nu", "params")}


def test_classifier_on_a_known_program():
    """A pmean over replica crosses islands; a sum over fsdp stays inside them (docs/jax_notes.md §4)."""
    mesh = make_mesh(4, 2)
    x = jax.device_put(jax.numpy.ones((4, 2, 16)), jax.NamedSharding(mesh, jax.P("replica", "fsdp")))
    with jax.set_mesh(mesh):
        f = jax.jit(jax.shard_map(lambda a: (jax.lax.pmean(a, "replica"), jax.lax.psum(a, "fsdp")), mesh=mesh,
                                  in_specs=jax.P("replica", "fsdp"), out_specs=jax.P("replica", "fsdp")))
        found = collectives(f.lower(x).compile().as_text(), mesh)
    assert sorted(crosses_islands(c, mesh) for c in found) == [False, True]
    assert all(c.bytes_per_device == 16 * 4 for c in found)


def test_inspect_command_prints_every_scheme(capsys):
    from conftest import NANOCHAT, TINY
    assert main(["--config", NANOCHAT, *TINY, "--schemes", "sync,diloco"]) == 0
    out = capsys.readouterr().out
    assert "sync " in out and "diloco " in out and "FLOPs/token" in out


IN_FLIGHT = Event("in_flight")


class InStepEcho(Scheme):
    """A protocol probe: each inner step issues the island mean of lm_head and consumes last step's (tau = 1)."""
    name = "in_step_echo"

    def init(self, params):
        return OuterState(params, (), {"in_flight": params["lm_head"]})

    def plan(self, clock):
        return clock.plan(events={IN_FLIGHT})

    def in_step(self, island, outer, step, events):
        arrived, issued = outer.buffers["in_flight"], island_mean(island.params["lm_head"])
        return island, OuterState({**outer.params, "lm_head": arrived}, outer.opt_state, {"in_flight": issued})

    def ledger(self):
        return make_ledger({IN_FLIGHT: self.all_reduce(tree_bytes(self.island.params["lm_head"]))}, {})


def test_a_scheme_can_talk_inside_the_inner_step(nanochat, tiny_cfg, tmp_path, monkeypatch):
    """The in-step hook: its collective is compiled into the inner step (ledger = HLO), its buffer is carried
    in the state from one step to the next, and the loop runs it with no special case."""
    from test_outer import drive
    monkeypatch.setitem(SCHEMES, InStepEcho.name, InStepEcho)
    cfg = tiny_cfg(f"outer.name='{InStepEcho.name}'", f"run.out_dir='{tmp_path}'", "max_steps=3")
    [inner] = inspect_scheme(cfg, nanochat)["inner"]
    assert inner["events"] == ["in_flight"] and inner["collectives"] == 1 and inner["hlo"] == inner["ledger"] > 0
    _, history = drive(nanochat, cfg, 3)
    for before, now in zip(history, history[1:]):
        mean_before = np.mean(np.asarray(before.islands.params["lm_head"], np.float64), axis=0)
        mean_now = np.mean(np.asarray(now.islands.params["lm_head"], np.float64), axis=0)
        for r in range(4):
            np.testing.assert_allclose(now.outer.buffers["in_flight"][r], mean_now, rtol=1e-5, atol=1e-8)
            np.testing.assert_allclose(now.outer.params["lm_head"][r], mean_before, rtol=1e-5, atol=1e-8)


def test_in_flight_buffers_resume_exactly(tmp_path, monkeypatch, capsys):
    """Stopped at step 2 with a payload in flight and resumed, the run ends bitwise where an unbroken one does."""
    import orbax.checkpoint as ocp
    from conftest import NANOCHAT, TINY

    from train import main
    monkeypatch.setitem(SCHEMES, InStepEcho.name, InStepEcho)
    run = [*TINY, f"outer.name='{InStepEcho.name}'", f"run.out_dir='{tmp_path}'", "optimizer.warmdown_frac=0.0",
           "checkpoint.every=2", "optimizer.schedule_steps=4"]
    assert main(["--config", NANOCHAT, *run, "max_steps=4", "run.name='whole'"]) == 0
    assert main(["--config", NANOCHAT, *run, "max_steps=2", "run.name='broken'"]) == 0
    assert main(["--config", NANOCHAT, *run, "max_steps=4", "run.name='broken'"]) == 0
    assert "resuming from step 2" in capsys.readouterr().out
    whole, broken = (ocp.StandardCheckpointer().restore(tmp_path / name / "checkpoints" / "4" / "state")
                     for name in ("whole", "broken"))
    assert np.any(whole["outer"]["buffers"]["in_flight"])
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(broken), strict=True):
        np.testing.assert_array_equal(a, b)
