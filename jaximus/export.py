"""Write a run's outer parameters as a Hugging Face checkpoint that transformers loads.

    python -m jaximus.export <run dir> [--step N] --out <dir>

Reads the run's config.json (its experiment and model.* keys), the checkpoint at step N (the newest by
default) and the run's tokenizer.json; writes model.safetensors, config.json and tokenizer.json. The
global model is the outer parameters (the islands' own for sync DP, whose islands never differ); under
eager updates, where islands briefly hold different outer copies, island 0's.
"""
import sys
from pathlib import Path
from types import SimpleNamespace

from jaximus import UserError, first_line
from jaximus.checkpoint import global_params, restore_numpy, saved_step
from jaximus.cli import ArgumentParser
from jaximus.config import load_experiment
from jaximus.files import read_json
from jaximus.pretrained import save_checkpoint


def _namespace(d):
    return SimpleNamespace(**{k: _namespace(v) if isinstance(v, dict) and k != "rope_scaling" else v
                              for k, v in d.items()})


def export(run_dir, out, step: int | None = None) -> list[Path]:
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise UserError(f"{run_dir}: no config.json; give a run directory that train.py wrote")
    saved = read_json(run_dir / "config.json", "the run directory is damaged; a run's config.json is rewritten "
                      "when it resumes")
    exp = load_experiment(saved["resolved"]["experiment"])
    model = exp["model"]
    if not hasattr(model, "pretrained_config"):
        raise UserError(f"{run_dir}: its experiment ({saved['resolved']['experiment']}) has no Hugging Face "
                        "architecture; export runs of experiments/llama or experiments/gpt2")
    step, steps = saved_step(run_dir, step, "python -m jaximus.export")
    try:
        state = restore_numpy(run_dir / "checkpoints" / str(step) / "state")
    except Exception as e:  # orbax, tensorstore: whatever a damaged checkpoint raises
        raise UserError(f"{run_dir / 'checkpoints' / str(step)}: unreadable ({first_line(e)}); export another step "
                        f"with --step (have {steps})") from None
    cfg = _namespace(saved)
    tokenizer = run_dir / "tokenizer.json"
    return save_checkpoint(out, global_params(state), model.pretrained_sources(cfg), model.pretrained_config(cfg),
                           tokenizer if tokenizer.is_file() else None)


def main(argv=None) -> int:
    ap = ArgumentParser(prog="python -m jaximus.export", description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", help="a run directory train.py wrote (of experiments/llama or experiments/gpt2)")
    ap.add_argument("--step", type=int, help="the checkpoint to export (default: the newest)")
    ap.add_argument("--out", required=True, help="directory for model.safetensors, config.json and tokenizer.json")
    args = ap.parse_args(argv)
    try:
        written = export(args.run_dir, args.out, args.step)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
