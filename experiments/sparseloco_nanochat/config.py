"""SparseLoCo (arXiv 2508.15706, rule as restated in 2603.08163) over the nanochat recipe, by import.

Each island sends TopK_chunk(beta e + delta) with 2-bit values: k = 64 of every 64 x 64 tile (4,096
entries of a vector), 1.56% density, and keeps e <- beta e + delta - sent with beta = 0.95. The decayed
error buffer replaces DiLoCo's outer momentum: the outer step is plain SGD with lr 1. H = 30. The
paper's inner optimizer is AdamW; this preset keeps nanochat's Muon + AdamW so it compares with the
other presets on the same inner optimizer.
"""
import sws

from experiments.diloco_nanochat.config import check_config, config_schema
from experiments.diloco_nanochat.config import get_config as diloco_config

__all__ = ["check_config", "config_schema", "get_config"]


def get_config() -> sws.Config:
    c = diloco_config()
    c.outer.sync_every = 30  # H (SparseLoCo)
    c.outer.optimizer = "sgd"
    c.outer.lr = 1.0  # alpha = 1 (0.65 late in the Covenant-72B run)
    c.outer.momentum = 0.0  # no outer momentum: the decayed error feedback takes its place
    c.outer.nesterov = False
    c.outer.compress.format = "topk"
    c.outer.compress.chunk = 64
    c.outer.compress.k = 64
    c.outer.compress.value_bits = 2
    c.outer.compress.error_feedback = True
    c.outer.compress.ef_decay = 0.95
    c.run.name = "sparseloco_nanochat"
    return c
