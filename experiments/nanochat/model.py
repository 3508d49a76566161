"""nanochat base GPT (nanochat@3a5e0bc, the v0 d20 recipe) as pure functions over a weights pytree.

Weights are JAX (in, out) matrices; the blocks are stacked on a leading layer axis L (one Muon
batch per shape, one place for layer sharding). Names mirror nanochat (wte, attn.c_q, mlp.c_fc, ...).
"""
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaximus.loss import forward_from_features


def _linear_std(fan_in: int, fan_out: int) -> float:
    # nanochat@3a5e0bc init, from arXiv 2310.17813: 1/sqrt(fan_in) * min(1, sqrt(fan_out/fan_in))
    return 1.0 / math.sqrt(fan_in) * min(1.0, math.sqrt(fan_out / fan_in))


def _sample(key, shape, std: float, dist: str):
    if dist == "normal":
        return std * jax.random.normal(key, shape, jnp.float32)
    bound = math.sqrt(3.0) * std  # symmetric U(-b, b) with the same std (not U[0, b), NANOCHAT §11.2)
    return jax.random.uniform(key, shape, jnp.float32, minval=-bound, maxval=bound)


def weight_shapes(cfg) -> dict:
    m = cfg.model
    L, D, V, K = m.depth, m.width, m.vocab_size, m.head_dim
    H, G, F = m.n_head, m.n_kv_head, 4 * m.width  # nanochat: MLP hidden 4x width
    return {
        "wte": (V, D),
        "blocks": {
            "attn": {"c_q": (L, D, H * K), "c_k": (L, D, G * K), "c_v": (L, D, G * K),
                     "c_proj": (L, H * K, D)},
            "mlp": {"c_fc": (L, D, F), "c_proj": (L, F, D)},
        },
        "lm_head": (D, V),
    }


def init_model_weights(cfg, key) -> dict:
    """f32 master weights; output projections and lm_head start at zero (nanochat v0)."""
    shapes = weight_shapes(cfg)
    dist = cfg.model.init_dist
    k_wte, k_q, k_k, k_v, k_fc = jax.random.split(key, 5)

    def linear(k, shape):
        return _sample(k, shape, _linear_std(shape[-2], shape[-1]), dist)

    attn, mlp = shapes["blocks"]["attn"], shapes["blocks"]["mlp"]
    return {
        "wte": _sample(k_wte, shapes["wte"], 1.0, dist),  # nanochat v0: wte ~ N(0, 1)
        "blocks": {
            "attn": {"c_q": linear(k_q, attn["c_q"]), "c_k": linear(k_k, attn["c_k"]),
                     "c_v": linear(k_v, attn["c_v"]), "c_proj": jnp.zeros(attn["c_proj"])},
            "mlp": {"c_fc": linear(k_fc, mlp["c_fc"]), "c_proj": jnp.zeros(mlp["c_proj"])},
        },
        "lm_head": jnp.zeros(shapes["lm_head"]),
    }


def rms_norm(x):
    """Parameter-free RMSNorm computed in float32, eps = float32's machine epsilon (PyTorch's default)."""
    x32 = x.astype(jnp.float32)
    eps = jnp.finfo(jnp.float32).eps
    return (x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)).astype(x.dtype)


def rotary_tables(seq_len: int, head_dim: int, base: float):
    """cos, sin of shape (T, K/2), stored in bf16 as nanochat does."""
    inv_freq = base ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    angles = jnp.outer(jnp.arange(seq_len, dtype=jnp.float32), inv_freq)
    return jnp.cos(angles).astype(jnp.bfloat16), jnp.sin(angles).astype(jnp.bfloat16)


def apply_rotary(x_BTHK, cos_TK, sin_TK):
    """Half-split layout; nanochat's sign convention (rotation by -theta)."""
    half = x_BTHK.shape[-1] // 2
    a, b = x_BTHK[..., :half], x_BTHK[..., half:]
    cos = cos_TK[None, :, None, :].astype(x_BTHK.dtype)
    sin = sin_TK[None, :, None, :].astype(x_BTHK.dtype)
    return jnp.concatenate([a * cos + b * sin, b * cos - a * sin], axis=-1)


def attention(x_ND, w, cos, sin, B, T, n_head, n_kv_head, mask):
    K = w["c_q"].shape[-1] // n_head
    q = (x_ND @ w["c_q"]).reshape(B, T, n_head, K)
    k = (x_ND @ w["c_k"]).reshape(B, T, n_kv_head, K)
    v = (x_ND @ w["c_v"]).reshape(B, T, n_kv_head, K)
    q, k = rms_norm(apply_rotary(q, cos, sin)), rms_norm(apply_rotary(k, cos, sin))  # rotary, then QK-norm
    if n_kv_head != n_head:  # GQA / MQA: each kv head serves n_head / n_kv_head query heads
        k = jnp.repeat(k, n_head // n_kv_head, axis=2)
        v = jnp.repeat(v, n_head // n_kv_head, axis=2)
    scores_BHTT = jnp.einsum("bthk,bshk->bhts", q, k).astype(jnp.float32) / math.sqrt(K)
    allowed = jnp.tril(jnp.ones((T, T), dtype=bool))[None, None]
    if mask is not None:
        allowed = allowed & mask[:, None]
    scores_BHTT = jnp.where(allowed, scores_BHTT, -jnp.inf)
    probs = jax.nn.softmax(scores_BHTT, axis=-1).astype(x_ND.dtype)
    y = jnp.einsum("bhts,bshk->bthk", probs, v).reshape(B * T, n_head * K)
    return y @ w["c_proj"]


def mlp(x_ND, w):
    return jnp.square(jax.nn.relu(x_ND @ w["c_fc"])) @ w["c_proj"]  # ReLU^2 (nanochat)


def make_model_features(cfg):
    """features(x_BT, weights, mask=None) -> (final normed hidden (B*T, D), lm_head (D, V), softcap), all in the
    compute dtype: what jaximus.loss scores in chunks, never holding the (B*T, V) logits.

    mask, if given, is a (B, T, T) boolean array of allowed attention on top of causality.
    Activations are kept as (B*T, D) so every projection is a plain 2-D matmul: XLA:CPU runs the
    backward of a 3-D one (contracting two batch dims) about 3x slower.
    """
    m = cfg.model
    # host constants: a jax array captured here would carry whatever mesh was current at creation
    cos, sin = (np.asarray(t) for t in rotary_tables(m.max_seq_len, m.head_dim, m.rope_base))
    compute_dtype = jnp.dtype(m.compute_dtype)

    def features(x_BT, weights, mask=None):
        B, T = x_BT.shape
        w = jax.tree.map(lambda a: a.astype(compute_dtype), weights)  # bf16 compute over f32 masters
        cos_T, sin_T = cos[:T], sin[:T]
        h = rms_norm(jnp.take(w["wte"], x_BT.reshape(-1), axis=0))

        def block(h, wb):
            h = h + attention(rms_norm(h), wb["attn"], cos_T, sin_T, B, T, m.n_head, m.n_kv_head, mask)
            return h + mlp(rms_norm(h), wb["mlp"]), None

        # unrolled: XLA:CPU runs the backward of a rolled scan about 2.5x slower
        h, _ = jax.lax.scan(block, h, w["blocks"], unroll=True)
        return rms_norm(h), w["lm_head"], m.softcap  # nanochat: logit softcap 15, in float32

    return features


def make_model_forward(cfg):
    """forward(x_BT, weights, mask=None) -> float32 logits (B, T, V)."""
    return forward_from_features(make_model_features(cfg))


def flops_per_token(cfg) -> int:
    """nanochat v0 (PaLM appendix B): 6 * (params - wte) + 12 * L * H * K * T."""
    m = cfg.model
    n = sum(math.prod(s) for s in jax.tree.leaves(weight_shapes(cfg), is_leaf=lambda x: isinstance(x, tuple)))
    n_wte = m.vocab_size * m.width
    return 6 * (n - n_wte) + 12 * m.depth * m.n_head * m.head_dim * cfg.data.seq_len
