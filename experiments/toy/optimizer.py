"""Plain SGD inside the islands: the toy's updates are then the papers' formulas with nothing in between."""
import optax


def make_optimizer(cfg):
    lr = cfg.optimizer.lr
    return optax.sgd(lr), {"inner": "sgd", "lr": lr}, {"sgd": lambda step: lr}
