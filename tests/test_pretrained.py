"""Hugging Face checkpoints: logits of tiny random Llama, Qwen2 and GPT-2 checkpoints against transformers'
(fixtures made by tests/fixtures/make_hf_fixtures.py), loading onto a mesh, export -> import, bad input."""
import json
import shutil

import jax
import numpy as np
import pytest
from conftest import REGISTERED, ROOT

from jaximus.build import load_config
from jaximus.export import main as export_main
from jaximus.inspect import inspect_scheme
from jaximus.mesh import island_shardings, make_mesh
from jaximus.pretrained import load_params
from train import main as train_main

FIXTURES = ROOT / "tests" / "fixtures" / "hf"
LLAMA, GPT2 = (str(ROOT / "experiments" / name / "config.py") for name in ("llama", "gpt2"))
EXPERIMENT = {"llama": LLAMA, "qwen2": LLAMA, "gpt2": GPT2}
SMALL = ["data.seq_len=12", "data.batch_size=8", "eval.tokens=96", "eval.every=2", "optimizer.ns_dtype='float32'",
         "data.prefetch=1", "data.tokenizer_train_chars=100000"]


def imported(name, islands=4, fsdp=2):
    """The fixture's weights loaded onto an islands x fsdp mesh (or one device), with the config they imply."""
    cfg, exp = load_config(EXPERIMENT[name], [f"model.init_from='{FIXTURES / name}'", *SMALL])
    shapes = jax.eval_shape(lambda k: exp["model"].init_model_weights(cfg, k), jax.random.key(0))
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct((islands, *x.shape), x.dtype), shapes)
    if islands * fsdp == 1:
        shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), abstract)
    else:
        shardings = island_shardings(abstract, make_mesh(islands, fsdp), "fsdp")
    params = load_params(cfg.model.init_from, exp["model"].pretrained_sources(cfg), abstract, shardings)
    return cfg, exp, jax.tree.map(np.asarray, params)


@pytest.mark.parametrize("name", ["llama", "qwen2", "gpt2"])
def test_logits_match_transformers(name):
    cfg, exp, params = imported(name, 1, 1)
    reference = np.load(FIXTURES / name / "reference.npz")
    one = jax.tree.map(lambda x: x[0], params)
    logits = jax.jit(exp["model"].make_model_forward(cfg))(reference["tokens"], one)
    np.testing.assert_allclose(logits, reference["logits"], rtol=1e-5, atol=2e-5)


def test_loading_onto_a_mesh_gives_the_one_device_weights():
    """Each device reads only its shard; the assembled weights, every island's copy, are the same bits."""
    _, _, one = imported("llama", 1, 1)
    _, _, mesh = imported("llama", 4, 2)
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(mesh), strict=True):
        for r in range(4):
            np.testing.assert_array_equal(a[0], b[r])


@pytest.mark.parametrize("scheme", REGISTERED)
def test_every_scheme_compiles_on_llama_with_an_exact_ledger(nanochat, scheme):
    cfg, exp = load_config(LLAMA, [*SMALL, "model.depth=2", "model.width=32", "model.n_head=2", "model.n_kv_head=1",
                                   "model.head_dim=16", "model.ffn_dim=64", "model.vocab_size=512",
                                   "model.qkv_bias=True", f"outer.name='{scheme}'", "outer.sync_every=4"])
    report = inspect_scheme(cfg, exp)
    for event in report["inner"] + report["syncs"]:
        assert event["hlo"] == event["ledger"], event


def test_continued_pretraining_then_export_round_trips(tmp_path, capsys):
    """DiLoCo from an imported checkpoint: every island starts from its weights; the exported run imports back
    bitwise, with the files, tensor names and config fields transformers expects."""
    run = [f"model.init_from='{FIXTURES / 'qwen2'}'", *SMALL, "max_steps=2", "outer.name='diloco'", "outer.sync_every=2",
           f"run.out_dir='{tmp_path}'", "run.name='cpt'"]
    assert train_main(["--config", LLAMA, *run]) == 0
    out = tmp_path / "hf"
    assert export_main([str(tmp_path / "cpt"), "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "tokenizer.json"}
    ours, theirs = (json.loads((d / "config.json").read_text()) for d in (out, FIXTURES / "qwen2"))
    fields = ["architectures", "model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads", "num_key_value_heads", "vocab_size", "rms_norm_eps", "tie_word_embeddings",
              "rope_parameters", "max_position_embeddings"]
    assert {k: ours[k] for k in fields} == {k: theirs[k] for k in fields}
    from safetensors.numpy import load_file
    exported, fixture = load_file(out / "model.safetensors"), load_file(FIXTURES / "qwen2" / "model.safetensors")
    assert set(exported) == set(fixture)
    assert any(not np.array_equal(exported[k], fixture[k]) for k in fixture)  # it trained
    cfg, exp = load_config(LLAMA, [f"model.init_from='{out}'", *SMALL])
    shapes = jax.eval_shape(lambda k: exp["model"].init_model_weights(cfg, k), jax.random.key(0))
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct((1, *x.shape), x.dtype), shapes)
    single = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), abstract)
    back = load_params(str(out), exp["model"].pretrained_sources(cfg), abstract, single)
    from jaximus.checkpoint import global_params, restore_numpy
    trained = global_params(restore_numpy(tmp_path / "cpt" / "checkpoints" / "2" / "state"))
    for a, b in zip(jax.tree.leaves(trained), jax.tree.leaves(back), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b)[0])


def _bad_copy(tmp_path, change):
    bad = tmp_path / "bad"
    shutil.copytree(FIXTURES / "llama", bad)
    config = json.loads((bad / "config.json").read_text())
    change(config)
    (bad / "config.json").write_text(json.dumps(config))
    return bad


@pytest.mark.parametrize("case,needle", [
    ("missing", "no such directory"),
    ("architecture", "architecture GPT2LMHeadModel is not one experiments/llama runs"),
    ("shape", "input_layernorm.weight has shape [16] but the model needs [24]"),
    ("override", "model.width=32 (checkpoint: 16)"),
])
def test_bad_checkpoints_are_one_line(tmp_path, capsys, case, needle):
    init_from = {"missing": tmp_path / "nowhere", "architecture": FIXTURES / "gpt2"}.get(case)
    if case == "shape":
        init_from = _bad_copy(tmp_path, lambda c: c.update(hidden_size=24, head_dim=6))
    extra = ["model.width=32"] if case == "override" else []
    rc = train_main(["--config", LLAMA, f"model.init_from='{init_from or FIXTURES / 'llama'}'", *SMALL, *extra,
                     f"run.out_dir='{tmp_path / 'runs'}'"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and needle in err[0], err


def test_inspect_prints_the_parameter_tree(capsys):
    from jaximus.inspect import main
    assert main(["--config", LLAMA, f"model.init_from='{FIXTURES / 'llama'}'", *SMALL, "--params"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows["blocks.q"][1:4] == ["(2,", "16,", "16)"] and rows["lm_head"][-1] == f"{16 * 300:,}"
    assert int(rows["total"][-1].replace(",", "")) == 15_056  # the fixture's parameter count
