"""GPT-2 (Radford et al. 2019) as pure functions over a weights pytree, as transformers' GPT2LMHeadModel runs it.

A separate experiment from experiments/llama because it is a different network, not a variant: learned
positions, pre-LayerNorm with biases, a fused qkv projection with biases, GELU (tanh form) and a head
tied to the embedding. Blocks are stacked on a leading layer axis, so every outer scheme works on it.
"""
import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, Int

from experiments.gpt2.hf import hf_config as pretrained_config
from experiments.gpt2.hf import sources as pretrained_sources
from jaximus.loss import forward_from_features

__all__ = ["flops_per_token", "init_model_weights", "make_model_features", "make_model_forward", "pretrained_config",
           "pretrained_sources", "weight_shapes"]


def weight_shapes(cfg) -> dict:
    m = cfg.model
    L, D, V, P = m.depth, m.width, m.vocab_size, m.max_seq_len
    return {"wte": (V, D), "wpe": (P, D),
            "blocks": {"ln1": (L, D), "ln1_bias": (L, D), "qkv": (L, D, 3 * D), "qkv_bias": (L, 3 * D),
                       "proj": (L, D, D), "proj_bias": (L, D), "ln2": (L, D), "ln2_bias": (L, D),
                       "fc": (L, D, 4 * D), "fc_bias": (L, 4 * D), "out": (L, 4 * D, D), "out_bias": (L, D)},
            "ln_f": (D,), "ln_f_bias": (D,)}


def init_model_weights(cfg, key) -> dict:
    """N(0, init_std) matrices and embeddings, LayerNorm gains 1, biases 0 (transformers' GPT2 init)."""
    is_shape = lambda x: isinstance(x, tuple)  # noqa: E731
    leaves = jax.tree_util.tree_flatten_with_path(weight_shapes(cfg), is_leaf=is_shape)[0]
    keys = jax.random.split(key, len(leaves))

    def one(path, shape, k):
        name = path[-1].key
        if name.endswith("bias"):
            return jnp.zeros(shape, jnp.float32)
        if name.startswith("ln"):
            return jnp.ones(shape, jnp.float32)
        return cfg.model.init_std * jax.random.normal(k, shape, jnp.float32)

    values = [one(p, s, k) for (p, s), k in zip(leaves, keys)]
    return jax.tree.unflatten(jax.tree.structure(weight_shapes(cfg), is_leaf=is_shape), values)


def layer_norm(x, gain, bias, eps: float):
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype) * gain + bias


def make_model_features(cfg):
    """features(x_BT, weights) -> (final layer-normed hidden (B*T, D), the tied head wte^T (D, V), no softcap)."""
    m = cfg.model
    compute_dtype, H, K = jnp.dtype(m.compute_dtype), m.n_head, m.width // m.n_head

    def features(x_BT: Int[Array, "B T"], weights: dict, mask=None):
        if mask is not None:
            raise ValueError("experiments/gpt2: attention masks beyond causality are not supported")
        B, T = x_BT.shape
        w = jax.tree.map(lambda a: a.astype(compute_dtype), weights)
        h = jnp.take(w["wte"], x_BT.reshape(-1), axis=0) + jnp.tile(w["wpe"][:T], (B, 1))

        def block(h, wb):
            qkv = layer_norm(h, wb["ln1"], wb["ln1_bias"], m.ln_eps) @ wb["qkv"] + wb["qkv_bias"]
            q, k, v = (t.reshape(B, T, H, K) for t in jnp.split(qkv, 3, axis=-1))
            scores = jnp.einsum("bthk,bshk->bhts", q, k).astype(jnp.float32) / math.sqrt(K)
            scores = jnp.where(jnp.tril(jnp.ones((T, T), bool))[None, None], scores, -jnp.inf)
            y = jnp.einsum("bhts,bshk->bthk", jax.nn.softmax(scores, axis=-1).astype(h.dtype), v).reshape(B * T, -1)
            h = h + y @ wb["proj"] + wb["proj_bias"]
            x = layer_norm(h, wb["ln2"], wb["ln2_bias"], m.ln_eps)
            return h + jax.nn.gelu(x @ wb["fc"] + wb["fc_bias"], approximate=True) @ wb["out"] + wb["out_bias"], None

        h, _ = jax.lax.scan(block, h, w["blocks"], unroll=True)
        return layer_norm(h, w["ln_f"], w["ln_f_bias"], m.ln_eps), w["wte"].T, None

    return features


def make_model_forward(cfg):
    """forward(x_BT, weights, mask=None) -> float32 logits (B, T, V)."""
    return forward_from_features(make_model_features(cfg))


def flops_per_token(cfg) -> int:
    """6 x parameters (the tied head is a matmul; the lookups are not) + 12 L H K T (PaLM appendix B)."""
    m = cfg.model
    n = sum(math.prod(s) for s in jax.tree.leaves(weight_shapes(cfg), is_leaf=lambda x: isinstance(x, tuple)))
    return 6 * (n - m.max_seq_len * m.width) + 12 * m.depth * m.width * cfg.data.seq_len
