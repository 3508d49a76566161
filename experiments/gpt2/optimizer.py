"""nanochat's optimizer with GPT-2's names routed: block matrices to Muon, embeddings, LayerNorms and biases to AdamW."""
import jax

from experiments.nanochat import optimizer as nanochat


def param_labels(weights) -> dict:
    def label(path, leaf):
        top, name = path[0].key, path[-1].key
        if top in ("wte", "wpe"):
            return "embedding"
        return "muon" if top == "blocks" and not name.endswith("bias") and not name.startswith("ln") else "vector"

    return jax.tree_util.tree_map_with_path(label, weights)


def make_optimizer(cfg):
    return nanochat.make_optimizer(cfg, param_labels, vectors=True)
