"""nanochat's optimizer with the Llama names routed (norm gains and biases to AdamW), or AdamW for everything."""
import jax
import optax

from experiments.nanochat import optimizer as nanochat
from jaximus.optim.schedules import lr_multiplier


def param_labels(weights) -> dict:
    """Block matrices to Muon; wte, lm_head and every vector (norm gains, biases) to AdamW groups."""
    def label(path, leaf):
        top, name = path[0].key, path[-1].key
        if top in ("wte", "lm_head"):
            return "embedding" if top == "wte" else "unembedding"
        return "muon" if top == "blocks" and not name.endswith(("norm", "bias")) else "vector"

    return jax.tree_util.tree_map_with_path(label, weights)


def make_optimizer(cfg):
    o = cfg.optimizer
    if o.kind == "nanochat":
        return nanochat.make_optimizer(cfg, param_labels, vectors=True)
    lrm = lr_multiplier(o.schedule_steps, o.warmup_steps, o.warmdown_frac, o.final_lr_frac)
    tx = optax.chain(optax.scale_by_adam(b1=o.adam_b1, b2=o.adam_b2, eps=o.adam_eps),
                     optax.add_decayed_weights(o.weight_decay),
                     optax.scale_by_learning_rate(lambda step: o.adamw_lr * lrm(step)))
    return tx, {"lrs": {"adamw": o.adamw_lr}}, {"lrm": lrm, "adamw": lambda s: o.adamw_lr * lrm(s)}
