"""run.start_from: a fresh run starts from another run's trained global model, under any scheme or island count."""
import json

import pytest
from conftest import DILOCO, TINY

from jaximus import UserError
from jaximus.build import load_config
from train import main

RUN = [*TINY, "outer.sync_every=2", "checkpoint.every=4"]


def evals(run_dir) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["val/loss"] for r in rows if "val/loss" in r}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    out = tmp_path_factory.mktemp("warm")
    assert main(["--config", DILOCO, *RUN, f"run.out_dir={out}", "run.name=pre"]) == 0
    return out


@pytest.mark.parametrize("start,at,continued", [
    ("pre", 8, ("outer.name=sync", "parallel.replica=2", "parallel.fsdp=4")),
    ("pre/checkpoints/4", 4, ("outer.name=diloco", "parallel.replica=4", "parallel.fsdp=2"))])
def test_the_first_evaluation_scores_the_weights_started_from(pretrained, start, at, continued, capsys):
    """DiLoCo pretrained on 4 islands; continued as sync DP or DiLoCo on another island count: its step-0
    evaluation is the evaluation the first run logged at the checkpoint's step, not a fresh initialization's."""
    assert main(["--config", DILOCO, *RUN, *continued, f"run.out_dir={pretrained}", f"run.name=go{at}",
                 f"run.start_from={pretrained / start}", "max_steps=2"]) == 0
    before, after = evals(pretrained / "pre"), evals(pretrained / f"go{at}")
    assert after[0] == pytest.approx(before[at], rel=1e-5) and abs(before[at] - before[0]) > 0.05
    # its checkpoints keep run.start_from: a rerun that names other weights is refused, not silently mixed
    assert main(["--config", DILOCO, *RUN, *continued, f"run.out_dir={pretrained}", f"run.name=go{at}",
                 f"run.start_from={pretrained / 'pre' / 'checkpoints' / '6'}", "max_steps=2"]) == 2
    assert "changed: run.start_from" in capsys.readouterr().err


@pytest.mark.parametrize("override,needle", [
    ("model.depth=3", "its model differs from this run's: model.depth (2 there, 3 here)"),
    ("run.start_from={out}/nowhere", "no config.json in"),
    ("run.start_from={out}/pre/checkpoints/6", "no checkpoint at step 6 in"),
    ("run.name=pre", "is this run's own directory"),
])
def test_bad_start_points_are_one_line(pretrained, override, needle):
    overrides = [*RUN, f"run.out_dir={pretrained}", "run.name=bad", "run.resume=fresh",
                 f"run.start_from={pretrained / 'pre'}", override.format(out=pretrained)]
    with pytest.raises(UserError, match=needle.replace("(", r"\(").replace(")", r"\)")) as e:
        load_config(DILOCO, overrides)
    assert "\n" not in str(e.value)
