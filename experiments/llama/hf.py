"""Llama / Mistral / Qwen2 Hugging Face checkpoints <-> experiments/llama: config fields and tensor names."""
from jaximus import UserError
from jaximus.pretrained import Source

ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral", "Qwen2ForCausalLM": "qwen2"}
CLASSES = {arch: cls for cls, arch in ARCHITECTURES.items()}


def rope_fields(hf: dict) -> tuple[float, dict | None]:
    """(rope_theta, scaling or None), from transformers 5's rope_parameters or the older top-level fields."""
    params = hf.get("rope_parameters") or {}
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    scaling = dict(params) if params.get("rope_type", "default") != "default" else hf.get("rope_scaling")
    if scaling:
        scaling.pop("rope_theta", None)
        scaling.setdefault("rope_type", scaling.pop("type", None))
        if scaling["rope_type"] != "llama3":
            raise UserError(f"rope scaling {scaling['rope_type']!r}: only llama3 (Llama 3.1's) is supported")
    return float(theta), scaling


def model_keys(hf: dict, directory) -> dict:
    """Our model.* values for a checkpoint's config.json; an architecture we cannot run is one line."""
    archs = hf.get("architectures") or [None]
    if archs[0] not in ARCHITECTURES:
        raise UserError(f"model.init_from={directory}: architecture {archs[0]} is not one experiments/llama runs "
                        f"({', '.join(ARCHITECTURES)}); GPT-2 checkpoints go to experiments/gpt2")
    arch = ARCHITECTURES[archs[0]]
    if hf.get("hidden_act", "silu") != "silu" or hf.get("mlp_bias"):
        raise UserError(f"model.init_from={directory}: hidden_act={hf.get('hidden_act')}, mlp_bias={hf.get('mlp_bias')}: "
                        "experiments/llama runs SwiGLU (silu) without MLP biases")
    heads = hf["num_attention_heads"]
    theta, scaling = rope_fields(hf)
    return {"arch": arch, "depth": hf["num_hidden_layers"], "width": hf["hidden_size"], "n_head": heads,
            "n_kv_head": hf.get("num_key_value_heads") or heads,
            "head_dim": hf.get("head_dim") or hf["hidden_size"] // heads, "ffn_dim": hf["intermediate_size"],
            "vocab_size": hf["vocab_size"], "max_seq_len": hf["max_position_embeddings"], "rope_base": theta,
            "rope_scaling": scaling, "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
            "qkv_bias": arch == "qwen2" or bool(hf.get("attention_bias", False)), "rms_eps": hf["rms_norm_eps"],
            "sliding_window": hf.get("sliding_window") if hf.get("use_sliding_window", arch == "mistral") else None}


def sources(cfg) -> dict[str, Source]:
    """Our weight paths -> the checkpoint tensors that fill them."""
    m, layer = cfg.model, "model.layers.{l}."
    stacked = {"attn_norm": ("input_layernorm.weight", False), "mlp_norm": ("post_attention_layernorm.weight", False),
               **{p: (f"self_attn.{p}_proj.weight", True) for p in "qkvo"},
               **{p: (f"mlp.{p}_proj.weight", True) for p in ("gate", "up", "down")}}
    if m.qkv_bias:
        stacked.update({f"{p}_bias": (f"self_attn.{p}_proj.bias", False) for p in "qkv"})
    out = {f"blocks.{k}": Source(layer + name, transpose, m.depth) for k, (name, transpose) in stacked.items()}
    out.update({"wte": Source("model.embed_tokens.weight"), "norm": Source("model.norm.weight")})
    if not m.tie_embeddings:
        out["lm_head"] = Source("lm_head.weight", transpose=True)
    return out


def hf_config(cfg) -> dict:
    """config.json for the exported checkpoint, in transformers 5's layout."""
    m = cfg.model
    rope = {"rope_type": "default", "rope_theta": m.rope_base, **(m.rope_scaling or {})}
    config = {"architectures": [CLASSES[m.arch]], "model_type": m.arch, "hidden_size": m.width,
              "intermediate_size": m.ffn_dim, "num_hidden_layers": m.depth, "num_attention_heads": m.n_head,
              "num_key_value_heads": m.n_kv_head, "head_dim": m.head_dim, "vocab_size": m.vocab_size,
              "max_position_embeddings": m.max_seq_len, "rms_norm_eps": m.rms_eps, "hidden_act": "silu",
              "tie_word_embeddings": m.tie_embeddings, "rope_parameters": rope, "dtype": "float32"}
    if m.arch == "llama":
        config.update(attention_bias=m.qkv_bias, mlp_bias=False)
    elif m.qkv_bias != (m.arch == "qwen2"):
        raise UserError(f"model.arch={m.arch} with model.qkv_bias={m.qkv_bias}: {CLASSES[m.arch]} has q/k/v biases "
                        f"{'always' if m.arch == 'qwen2' else 'never'}; export as model.arch=llama")
    if m.arch != "llama":
        config.update(sliding_window=m.sliding_window, use_sliding_window=m.sliding_window is not None)
    return config
