"""GPT-2 Hugging Face checkpoints <-> experiments/gpt2. Its Conv1D weights are stored (in, out), as ours."""
from jaximus import UserError
from jaximus.pretrained import Source


def model_keys(hf: dict, directory) -> dict:
    if (hf.get("architectures") or [None])[0] not in ("GPT2LMHeadModel", "GPT2Model"):
        raise UserError(f"model.init_from={directory}: architecture {(hf.get('architectures') or [None])[0]} is not "
                        "GPT-2; Llama, Mistral and Qwen2 checkpoints go to experiments/llama")
    if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh") or hf.get("n_inner"):
        raise UserError(f"model.init_from={directory}: activation {hf.get('activation_function')} / n_inner "
                        f"{hf.get('n_inner')}: experiments/gpt2 runs GELU (tanh) with a 4x MLP")
    return {"depth": hf["n_layer"], "width": hf["n_embd"], "n_head": hf["n_head"], "vocab_size": hf["vocab_size"],
            "max_seq_len": hf["n_positions"], "ln_eps": hf.get("layer_norm_epsilon", 1e-5)}


def sources(cfg) -> dict[str, Source]:
    layer, L = "transformer.h.{l}.", cfg.model.depth
    stacked = {"ln1": "ln_1.weight", "ln1_bias": "ln_1.bias", "qkv": "attn.c_attn.weight", "qkv_bias": "attn.c_attn.bias",
               "proj": "attn.c_proj.weight", "proj_bias": "attn.c_proj.bias", "ln2": "ln_2.weight",
               "ln2_bias": "ln_2.bias", "fc": "mlp.c_fc.weight", "fc_bias": "mlp.c_fc.bias", "out": "mlp.c_proj.weight",
               "out_bias": "mlp.c_proj.bias"}
    return {**{f"blocks.{k}": Source(layer + n, layers=L) for k, n in stacked.items()},
            "wte": Source("transformer.wte.weight"), "wpe": Source("transformer.wpe.weight"),
            "ln_f": Source("transformer.ln_f.weight"), "ln_f_bias": Source("transformer.ln_f.bias")}


def hf_config(cfg) -> dict:
    m = cfg.model
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_layer": m.depth, "n_embd": m.width,
            "n_head": m.n_head, "n_positions": m.max_seq_len, "vocab_size": m.vocab_size, "layer_norm_epsilon": m.ln_eps,
            "activation_function": "gelu_new", "n_inner": None, "tie_word_embeddings": True, "dtype": "float32"}
