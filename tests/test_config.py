"""Every key of the default configs is checked for type and range before JAX starts: one line, exit 2."""
import pytest
from conftest import NANOCHAT, ROOT, TINY

from jaximus.build import full_schema, load_config
from jaximus.config import load_experiment
from jaximus.schema import flatten
from train import main

DILOCO = str(ROOT / "experiments" / "diloco_nanochat" / "config.py")


def schema_of(config_path):
    return full_schema(load_experiment(config_path))


def wrong_value(spec) -> str:
    """An override of another type than the spec allows."""
    if spec.kind == "str":
        return "12345"
    if spec.kind == "strs":
        return "3.5"
    if spec.kind == "dict":
        return "3"
    if spec.also:  # an integer or a word (run.resume)
        return "2.5"
    return "'abc'"  # numbers, integers, flags


def default_keys(config_path):
    cfg, _ = load_config(config_path, [])
    return sorted(flatten(cfg.to_dict()))


@pytest.mark.parametrize("config_path", [NANOCHAT, DILOCO])
def test_every_default_key_has_a_spec(config_path):
    missing = set(default_keys(config_path)) - set(schema_of(config_path))
    assert not missing, f"keys without a type and range: {sorted(missing)}"


@pytest.mark.parametrize("key", default_keys(DILOCO))
def test_every_key_rejects_a_wrong_type(tmp_path, capsys, key):
    value = wrong_value(schema_of(DILOCO)[key])
    rc = main(["--config", DILOCO, *TINY, f"run.out_dir='{tmp_path}'", f"{key}={value}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and key in err[0], err
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("overrides,expected", [
    (["model.depth=0"], "error: model.depth=0: must be an integer >= 1"),
    (["max_steps=abc"], "error: max_steps='abc': must be an integer >= 1"),
    (["model.depth='four'"], "error: model.depth='four': must be an integer >= 1"),
    (["model.depth=4", "model.n_kv_head=3"], "error: model.n_kv_head=3: must divide model.n_head=2"),
    (["outer.nam=diloco"], "error: config: Unknown override key 'outer.nam'; did you mean: outer.name"),
    (["faults.island_dropout=1.0"], "error: faults.island_dropout=1.0: must be a number in [0, 1)"),
    (["run.resume=-1"], "error: run.resume=-1: must be an integer >= 0 (or 'auto' or 'fresh')"),
    (["outer.compress.format='int3'"], "error: outer.compress.format='int3': choose one of none, int8, int4"),
    (["outer.compress.format='topk'", "outer.compress.k=100", "outer.compress.chunk=8"],
     "error: outer.compress.k=100 is larger than a chunk (outer.compress.chunk=8: 64 entries); choose k <= 64"),
    (["outer.compress.block=0"], "error: outer.compress.block=0: must be an integer >= 1"),
    (["outer.compress.format='int8'", "outer.name='local_sgd'"],
     "error: outer.compress.format=int8 with outer.name=local_sgd: compression applies to pseudo-gradients"),
    (["outer.compress.format='randk'"], "error: outer.compress.value_bits=2 with outer.compress.format=randk"),
])
def test_bad_values_name_the_key_and_the_fix(tmp_path, capsys, overrides, expected):
    rc = main(["--config", DILOCO, *TINY, f"run.out_dir='{tmp_path}'", *overrides])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith(expected), err
    assert not list(tmp_path.iterdir())


def test_provenance_tells_a_dirty_tree_and_which_difference(tmp_path):
    """config.json's git fields, on a real repository: clean, changed, changed otherwise, an untracked file."""
    import subprocess

    from jaximus.log import git_provenance

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "code.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "first")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert git_provenance(tmp_path / "pkg") == {"git_commit": head, "git_dirty": False, "git_diff_sha256": None}
    seen = set()
    for change in ("x = 2\n", "x = 3\n"):
        (tmp_path / "pkg" / "code.py").write_text(change)
        p = git_provenance(tmp_path / "pkg")
        assert p["git_commit"] == head and p["git_dirty"] and p["git_diff_sha256"] not in seen
        seen.add(p["git_diff_sha256"])
    assert git_provenance(tmp_path / "pkg")["git_diff_sha256"] in seen  # the same difference, the same hash
    (tmp_path / "pkg" / "code.py").write_text("x = 1\n")
    (tmp_path / "notes.txt").write_text("a file git does not track yet")
    untracked = git_provenance(tmp_path / "pkg")
    assert untracked["git_dirty"] and untracked["git_diff_sha256"] not in seen
    (tmp_path / "notes.txt").write_text("another text")
    assert git_provenance(tmp_path / "pkg")["git_diff_sha256"] != untracked["git_diff_sha256"]
    outside = tmp_path.parent / "not-a-repository"
    outside.mkdir()
    assert git_provenance(outside) == {"git_commit": None, "git_dirty": None, "git_diff_sha256": None}


@pytest.mark.parametrize("config_path", sorted(str(p) for p in (ROOT / "experiments").glob("*/config.py")))
def test_help_lists_every_key_with_its_type_and_meaning(config_path, capsys):
    """python train.py --help [--config ...]: exit 0, one line per key of the finalized config, none without a
    type or a meaning, and the overrides applied to the values shown."""
    assert main(["--help", "--config", config_path, "seed=7"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python train.py --config experiments/<exp>/config.py [key=value ...]")
    rows = {cols[0]: cols for cols in (line.strip().split("  ") for line in out.splitlines() if line.startswith("  "))}
    rows = {k: [c.strip() for c in v if c.strip()] for k, v in rows.items()}
    cfg, _ = load_config(config_path, ["seed=7"])
    keys = list(flatten(cfg.to_dict()))
    assert sorted(rows) == sorted(keys)
    missing = [k for k, cols in rows.items() if len(cols) < 4]  # key, value, type and range, meaning
    assert not missing, missing
    assert rows["seed"][1] == "7"
