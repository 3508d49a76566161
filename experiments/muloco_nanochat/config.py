"""MuLoCo (arXiv 2505.23725) over the nanochat recipe: the same model and Muon inner optimizer, by import.

DiLoCo's outer Nesterov step with MuLoCo's outer momentum 0.6 and H = 30 (its K = 8, H = 30 setting at
our 4 islands), and pseudo-gradients sent as block-scaled int4 with error feedback ("4-bit is lossless
for MuLoCo", linear quantization; its 2-bit result needs statistical quantization, which we lack).
"""
import sws

from experiments.diloco_nanochat.config import check_config, config_schema
from experiments.diloco_nanochat.config import get_config as diloco_config

__all__ = ["check_config", "config_schema", "get_config"]


def get_config() -> sws.Config:
    c = diloco_config()
    c.outer.sync_every = 30  # H (MuLoCo v1)
    c.outer.lr = 0.7  # the DiLoCo outer lr MuLoCo keeps
    c.outer.momentum = 0.6  # MuLoCo's outer momentum (DiLoCo's 0.9 was tuned for H = 500, M = 8)
    c.outer.compress.format = "int4"
    c.outer.compress.error_feedback = True
    c.run.name = "muloco_nanochat"
    return c
