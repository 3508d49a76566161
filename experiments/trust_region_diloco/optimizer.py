"""The nanochat inner optimizer (Muon + AdamW), unchanged; the outer optimizer lives in outer_optimizers/."""
from experiments.nanochat.optimizer import make_optimizer, param_labels

__all__ = ["make_optimizer", "param_labels"]
