"""Toy objectives for outer optimizers (model.py): a quadratic with a different optimum per island, a linear
regression, a constant gradient; plain inner SGD; every run key jaximus reads, at toy sizes.

    python train.py --config experiments/toy/config.py outer.name=diloco model.objective=quadratic
"""
import os

import sws

from jaximus.clock import add_islands_config
from jaximus.distributed import add_distributed_config
from jaximus.guard import add_guard_config
from jaximus.schema import integer, number, text
from outer_optimizers import add_outer_config

OBJECTIVES = ("quadratic", "linear", "constant")


def get_config() -> sws.Config:
    c = sws.Config()
    c.seed = 0
    c.max_steps = 40
    c.model.objective = "quadratic"
    c.model.layers = 2  # Streaming DiLoCo deals layers to fragments
    c.model.dim = 8
    c.model.init = 1.0  # every weight starts here
    c.model.spread = 1.0  # quadratic: the distance between neighbouring islands' optima
    c.model.noise = 0.1  # std of the noise in each row
    c.model.gradient = 2.0  # constant: every weight's gradient (torchft's regression fixture: 2)
    c.optimizer.lr = 0.1  # inner SGD
    c.data.batch_size = 16  # rows per step over all islands
    c.data.seq_len = 1  # a row is one example
    c.data.cache_dir = os.environ.get("JAXIMUS_CACHE", os.path.expanduser("~/.cache/jaximus"))
    c.parallel.replica = 4
    c.parallel.fsdp = 2
    c.parallel.strategy = "fsdp"
    c.parallel.cpu_devices = lambda: c.parallel.replica * c.parallel.fsdp
    c.eval.every = 10
    add_outer_config(c)
    c.outer.name = "diloco"
    c.outer.sync_every = 5
    add_distributed_config(c)
    c.run.out_dir = "runs"
    c.run.name = "toy"
    c.run.resume = "auto"
    c.run.start_from = None
    c.checkpoint.every = 20
    c.checkpoint.keep = 2
    c.log.every = 1
    add_guard_config(c)
    add_islands_config(c)
    c.wandb.mode = "disabled"
    c.wandb.project = "jaximus"
    return c


def config_schema() -> dict:
    return {"model.objective": text(*OBJECTIVES, meaning="quadratic, linear or constant (experiments/toy/model.py)"),
            "model.layers": integer(1, meaning="rows of the weight (Streaming DiLoCo deals them to fragments)"),
            "model.dim": integer(1, meaning="entries per row of the weight"),
            "model.init": number(meaning="every weight's initial value"),
            "model.spread": number(0, meaning="quadratic: the distance between neighbouring islands' optima"),
            "model.noise": number(0, meaning="std of the noise in each row"),
            "model.gradient": number(meaning="constant: every weight's gradient"),
            "optimizer.lr": number(0, meaning="inner SGD's learning rate")}
