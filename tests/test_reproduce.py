"""Reproductions: each one runs end to end at a tiny size, its verdict follows its rule, bad input is one line."""
import json

import pytest
from conftest import TINY

from analysis.reproduce import Results, main
from analysis.reproductions import REPRODUCTIONS, VERDICTS, close, combine, judge_compression, lower
from analysis.runs import Run, load_run


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One runs directory for the module, so dp and diloco, which most reproductions share, train once."""
    return tmp_path_factory.mktemp("reproduce")


@pytest.mark.parametrize("name", list(REPRODUCTIONS))
def test_each_reproduction_runs_end_to_end_at_a_tiny_size(shared, name, capsys):
    out, runs = shared / "out", shared / "runs"
    # TINY's 8 steps: H = 10 and longer sync once, at a run's final sync of what is pending
    assert main([name, "--out", str(out), "--runs", str(runs), "--seeds", "1", "--inline", *TINY]) == 0
    verdict = json.loads((out / name / "verdict.json").read_text())
    assert verdict["verdict"] in VERDICTS
    assert (out / name / f"{name}.png").stat().st_size > 10_000
    text = (out / name / "results.md").read_text()
    assert text.startswith(f"# {name}: {verdict['verdict']}")
    for point in REPRODUCTIONS[name].points:  # the table's numbers are the runs' own final evaluations
        final = load_run(runs / point.label).evals[-1]
        assert verdict["bpb"][point.label] == [final["val/bpb"]]
        assert final["step"] == 8 and f"| {point.label} | {point.what} | {final['val/bpb']:.4f} |" in text
    index = (out / "README.md").read_text()
    assert f"[{name}]({name}/results.md)" in index and f"**{verdict['verdict']}**" in index


def _results(bpbs: dict, noise_twin=(2.0, 2.1), wire=None) -> Results:
    def run(label, bpb, seed):
        rows = [{"step": 4, "tokens": 64, "comm/cross_island_bytes": 100.0, "comm/syncs": 1,
                 "comm/wire_bytes": (wire or {}).get(label, 100.0)}, {"step": 4, "tokens": 64, "val/bpb": bpb}]
        return Run(f"{label}-{seed}", None, {"outer": {"name": "diloco"}}, rows, {})
    runs = {label: [run(label, b, 0)] for label, b in bpbs.items()}
    runs["twin"] = [run("twin", b, s) for s, b in enumerate(noise_twin)]
    return Results(runs, noise=max(noise_twin) - min(noise_twin))


def test_a_difference_within_the_seed_spread_is_inconclusive():
    r = _results({"a": 2.00, "b": 2.05, "c": 2.30})  # spread 0.1
    assert lower(r, "a", "b") == 0 and lower(r, "a", "c") == 1 and lower(r, "c", "a") == -1
    assert close(r, "b", "a") == 1 and close(r, "c", "a") == -1  # 0.3 exceeds both 2% and the spread
    assert combine([1, 1]) == VERDICTS[0] and combine([1, 0]) == VERDICTS[2] and combine([0, -1]) == VERDICTS[1]


def test_compression_verdict_follows_its_rule():
    base = {"diloco": 2.0, "int8": 2.01, "fp4": 2.02, "topk": 2.5, "topk_ef": 2.2}
    assert judge_compression(_results(base, (2.0, 2.01)))[1] == VERDICTS[0]
    assert judge_compression(_results({**base, "topk_ef": 2.6}, (2.0, 2.01)))[1] == VERDICTS[1]  # EF worse
    assert judge_compression(_results({**base, "fp4": 2.3}, (2.0, 2.01)))[1] == VERDICTS[1]  # fp4 lossy
    assert judge_compression(_results(base, (2.0, 2.4)))[1] == VERDICTS[2]  # top-k's gap within the spread


def test_bad_reproduce_input_is_one_line(tmp_path, capsys):
    assert main(["scaling_mm", "--runs", str(tmp_path)]) == 2
    assert "scaling_m" in capsys.readouterr().err
    assert main(["sync_every", "--runs", str(tmp_path), "outer.sync_every=7"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "outer.sync_every" in err and "leave it out" in err
    assert main(["dropout", "--runs", str(tmp_path), "model.dpeth=3"]) == 2
    assert "model.dpeth" in capsys.readouterr().err and not any(tmp_path.iterdir())
