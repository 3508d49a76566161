"""DiLoCo over the nanochat recipe, sized for CPU simulation: 4 islands x 2 fsdp fake devices.

Every nanochat key is inherited (experiments/nanochat/config.py); this file changes only what the
comparison sweeps. `outer.name=sync` turns the same run into synchronous data-parallel.
"""
import sws

from experiments.nanochat.config import check_config, config_schema
from experiments.nanochat.config import get_config as nanochat_config

__all__ = ["check_config", "config_schema", "get_config"]


def get_config() -> sws.Config:
    c = nanochat_config()
    c.outer.name = "diloco"
    c.outer.sync_every = 10  # H; the paper's 500 is for 88k-step runs, our CPU horizon is 80 steps
    c.outer.lr = 0.7  # DiLoCo paper (2311.08105): Nesterov, lr 0.7, momentum 0.9
    c.outer.momentum = 0.9
    c.parallel.replica = 4
    c.parallel.fsdp = 2
    c.run.name = "diloco_nanochat"
    return c
