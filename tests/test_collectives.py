"""No hidden communication: the compiled programs move exactly the bytes the ledger states."""
import jax
import pytest

from jaximus.hlo import collectives, crosses_islands
from jaximus.inspect import inspect_scheme, main
from jaximus.mesh import make_mesh
from outer_optimizers import SCHEMES


@pytest.mark.parametrize("name", list(SCHEMES))
def test_ledger_equals_compiled_cross_island_bytes(nanochat, tiny_cfg, name):
    cfg = tiny_cfg(f"outer.name='{name}'", "outer.sync_every=2")
    report = inspect_scheme(cfg, nanochat)
    inner = report["inner"]
    assert inner["hlo"] == inner["ledger"]
    if name == "sync":
        assert inner["collectives"] >= 1 and inner["ledger"] == 4 * report["params"] and not report["syncs"]
    else:  # a local-update inner step never talks across islands
        assert inner["collectives"] == 0 and inner["ledger"] == 0
        assert report["syncs"]
    for event in report["syncs"]:
        assert event["collectives"] >= 1 and event["hlo"] == event["ledger"] > 0, event
    if name == "desloc":  # params every 2, first moments every 6, second every 12
        assert {tuple(e["groups"]) for e in report["syncs"]} == {("params",), ("mu", "params"), ("mu", "nu", "params")}


def test_classifier_on_a_known_program():
    """A pmean over replica crosses islands; a sum over fsdp stays inside them (JAX_NOTES §4)."""
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
