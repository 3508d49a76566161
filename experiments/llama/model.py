"""The Llama family (Llama 2/3, Mistral, Qwen2) as pure functions over a weights pytree, as transformers runs it.

RMSNorm with learned gains, SwiGLU, grouped-query attention, rotary (half-split, HF's rotate_half) with a
configurable base and Llama-3's frequency scaling, tied or untied embeddings, optional q/k/v biases
(Qwen2). Weights are (in, out) matrices, the blocks stacked on a leading layer axis L as in
experiments/nanochat, so every outer scheme (Streaming DiLoCo's fragments included) works unchanged.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Int

from experiments.llama.hf import hf_config as pretrained_config
from experiments.llama.hf import sources as pretrained_sources
from jaximus.loss import forward_from_features

__all__ = ["flops_per_token", "init_model_weights", "make_model_features", "make_model_forward", "pretrained_config",
           "pretrained_sources", "weight_shapes"]


def weight_shapes(cfg) -> dict:
    m = cfg.model
    L, D, V, K, H, G, F = m.depth, m.width, m.vocab_size, m.head_dim, m.n_head, m.n_kv_head, m.ffn_dim
    blocks = {"attn_norm": (L, D), "q": (L, D, H * K), "k": (L, D, G * K), "v": (L, D, G * K), "o": (L, H * K, D),
              "mlp_norm": (L, D), "gate": (L, D, F), "up": (L, D, F), "down": (L, F, D)}
    if m.qkv_bias:
        blocks.update(q_bias=(L, H * K), k_bias=(L, G * K), v_bias=(L, G * K))
    shapes = {"wte": (V, D), "blocks": blocks, "norm": (D,)}
    return shapes if m.tie_embeddings else {**shapes, "lm_head": (D, V)}


def init_model_weights(cfg, key) -> dict:
    """N(0, init_std) matrices (transformers' LlamaPreTrainedModel), unit norm gains, zero biases."""
    shapes = weight_shapes(cfg)
    flat, treedef = jax.tree.flatten(shapes, is_leaf=lambda x: isinstance(x, tuple))
    paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(shapes, is_leaf=lambda x: isinstance(x, tuple))[0]]
    keys = jax.random.split(key, len(flat))

    def one(path, shape, k):
        name = getattr(path[-1], "key", "")
        if name.endswith("norm"):
            return jnp.ones(shape, jnp.float32)
        if name.endswith("bias"):
            return jnp.zeros(shape, jnp.float32)
        return cfg.model.init_std * jax.random.normal(k, shape, jnp.float32)

    return jax.tree.unflatten(treedef, [one(p, s, k) for p, s, k in zip(paths, flat, keys)])


def rms_norm(x, gain, eps: float):
    """transformers' LlamaRMSNorm: normalize in float32, cast back, then scale by the gain."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return gain * y.astype(x.dtype)


def inverse_frequencies(head_dim: int, base: float, scaling: dict | None) -> np.ndarray:
    """Rotary inverse frequencies; with rope_type llama3, Llama 3.1's scaling (transformers' _compute_llama3)."""
    inv = 1.0 / base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    if not scaling or scaling.get("rope_type", "default") == "default":
        return inv.astype(np.float32)
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    original = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > original / low, inv / factor, inv)
    smooth = (original / wavelen - low) / (high - low)
    mid = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= original / high) & (wavelen <= original / low)
    return np.where(medium, mid, scaled).astype(np.float32)


def rotary_tables(seq_len: int, head_dim: int, base: float, scaling) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin of shape (T, K): the frequencies repeated over both halves, as transformers builds them."""
    angles = np.outer(np.arange(seq_len, dtype=np.float32), inverse_frequencies(head_dim, base, scaling))
    angles = np.concatenate([angles, angles], axis=-1)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def apply_rotary(x_BTHK, cos_TK, sin_TK):
    half = x_BTHK.shape[-1] // 2
    rotated = jnp.concatenate([-x_BTHK[..., half:], x_BTHK[..., :half]], axis=-1)  # rotate_half
    cos, sin = cos_TK[None, :, None, :].astype(x_BTHK.dtype), sin_TK[None, :, None, :].astype(x_BTHK.dtype)
    return x_BTHK * cos + rotated * sin


def attention(x_ND, w, cos, sin, B, T, n_head, n_kv_head, head_dim):
    def project(name, heads):
        y = x_ND @ w[name]
        return (y + w[f"{name}_bias"] if f"{name}_bias" in w else y).reshape(B, T, heads, head_dim)

    q, k, v = project("q", n_head), project("k", n_kv_head), project("v", n_kv_head)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    if n_kv_head != n_head:  # each kv head serves n_head / n_kv_head query heads
        k, v = (jnp.repeat(t, n_head // n_kv_head, axis=2) for t in (k, v))
    scores = jnp.einsum("bthk,bshk->bhts", q, k).astype(jnp.float32) / math.sqrt(head_dim)
    scores = jnp.where(jnp.tril(jnp.ones((T, T), bool))[None, None], scores, -jnp.inf)
    probs = jax.nn.softmax(scores, axis=-1).astype(x_ND.dtype)
    return jnp.einsum("bhts,bshk->bthk", probs, v).reshape(B * T, n_head * head_dim) @ w["o"]


def make_model_features(cfg):
    """features(x_BT, weights) -> (final normed hidden (B*T, D), the head (D, V): wte^T when tied, no softcap);
    activations kept as (B*T, D), as in nanochat."""
    m = cfg.model
    cos, sin = rotary_tables(m.max_seq_len, m.head_dim, m.rope_base, m.rope_scaling)
    compute_dtype = jnp.dtype(m.compute_dtype)

    def features(x_BT: Int[Array, "B T"], weights: dict, mask=None):
        if mask is not None:
            raise ValueError("experiments/llama: attention masks beyond causality are not supported")
        B, T = x_BT.shape
        w = jax.tree.map(lambda a: a.astype(compute_dtype), weights)
        h = jnp.take(w["wte"], x_BT.reshape(-1), axis=0)

        def block(h, wb):
            h = h + attention(rms_norm(h, wb["attn_norm"], m.rms_eps), wb, cos[:T], sin[:T], B, T, m.n_head,
                              m.n_kv_head, m.head_dim)
            x = rms_norm(h, wb["mlp_norm"], m.rms_eps)
            return h + (jax.nn.silu(x @ wb["gate"]) * (x @ wb["up"])) @ wb["down"], None

        h, _ = jax.lax.scan(block, h, w["blocks"], unroll=True)  # unrolled: see experiments/nanochat
        head = w["wte"].T if m.tie_embeddings else w["lm_head"]
        return rms_norm(h, w["norm"], m.rms_eps), head, None

    return features


def make_model_forward(cfg):
    """forward(x_BT, weights, mask=None) -> float32 logits (B, T, V)."""
    return forward_from_features(make_model_features(cfg))


def flops_per_token(cfg) -> int:
    """6 x (parameters outside the embedding lookup) + 12 L H K T for attention (PaLM appendix B)."""
    m = cfg.model
    n = sum(math.prod(s) for s in jax.tree.leaves(weight_shapes(cfg), is_leaf=lambda x: isinstance(x, tuple)))
    lookup = 0 if m.tie_embeddings else m.vocab_size * m.width  # a tied embedding is also the head's matmul
    return 6 * (n - lookup) + 12 * m.depth * m.n_head * m.head_dim * cfg.data.seq_len
