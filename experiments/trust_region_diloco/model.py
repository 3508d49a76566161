"""The nanochat model, unchanged: the scheme changes how islands synchronize, not what they train."""
from experiments.nanochat.model import flops_per_token, init_model_weights, make_model_features, make_model_forward

__all__ = ["flops_per_token", "init_model_weights", "make_model_features", "make_model_forward"]
