"""A Llama-family model on the nanochat recipe's data, optimizer and islands, sized for a 2-core CPU.

`model.init_from=<dir>` starts from a Hugging Face checkpoint (Llama, Mistral, Qwen2): every model.*
key then defaults to the checkpoint's config.json and its tokenizer.json becomes the tokenizer, so
`model.init_from=<dir>` alone is a complete config. An override that contradicts the checkpoint is a
one-line error at start-up.
"""
import sws

from experiments.llama.hf import ARCHITECTURES, model_keys, sources
from experiments.llama.model import weight_shapes
from experiments.nanochat.config import COMPUTE_DTYPE, INIT_STD, optimizer_schema, pretrained_config
from jaximus import UserError
from jaximus.pretrained import check_against_checkpoint
from jaximus.schema import Spec, flag, integer, number, text

__all__ = ["check_config", "config_schema", "get_config"]

DEFAULTS = {"arch": "llama", "depth": 4, "width": 256, "n_head": 4, "n_kv_head": 2, "head_dim": 64,
            "ffn_dim": 688,  # SwiGLU: about 8/3 x width, a multiple of 16 (Llama's rule of thumb)
            "vocab_size": 8192, "max_seq_len": 2048, "rope_base": 500000.0,  # Llama 3's theta
            "rope_scaling": None, "tie_embeddings": False, "qkv_bias": False, "rms_eps": 1e-5,
            "sliding_window": None}


def get_config() -> sws.Config:
    c = pretrained_config(DEFAULTS, model_keys, "llama")
    c.optimizer.kind = "nanochat"  # nanochat: Muon for block matrices, AdamW elsewhere; adamw: AdamW for all
    c.optimizer.adamw_lr = 3e-4  # optimizer.kind=adamw (Llama 2 7B's peak lr)
    return c


def config_schema() -> dict:
    return {
        "model.init_from": text(optional=True, meaning="a Hugging Face checkpoint directory to start from (its config "
                                "and tokenizer then set the model keys)"),
        "model.arch": text(*ARCHITECTURES.values(), meaning="the Hugging Face architecture the weights follow"),
        "model.depth": integer(1, meaning="decoder layers"), "model.width": integer(1, meaning="hidden size"),
        "model.n_head": integer(1, meaning="attention heads"),
        "model.n_kv_head": integer(1, meaning="key/value heads (GQA when fewer than n_head)"),
        "model.ffn_dim": integer(1, meaning="SwiGLU's intermediate size"),
        "model.vocab_size": integer(1, meaning="tokens in the vocabulary"),
        "model.max_seq_len": integer(1, meaning="the rotary table's extent: the longest data.seq_len"),
        "model.head_dim": integer(2, meaning="dimension per head (even: rotary rotates pairs)"),
        "model.rope_base": number(1, meaning="rotary base frequency (Llama 3: 500,000)"),
        "model.rope_scaling": Spec("dict", optional=True, meaning="a checkpoint's rope_scaling (Llama 3.1's llama3 rule)"),
        "model.tie_embeddings": flag(meaning="the head reuses the embedding"),
        "model.qkv_bias": flag(meaning="biases on q, k and v (Qwen2)"),
        "model.rms_eps": number(0, meaning="RMSNorm's epsilon"),
        "model.sliding_window": integer(1, optional=True, meaning="a checkpoint's attention window (data.seq_len must "
                                        "fit in it)"),
        "model.compute_dtype": COMPUTE_DTYPE, "model.init_std": INIT_STD,
        "optimizer.kind": text("nanochat", "adamw", meaning="nanochat: Muon for block matrices, AdamW elsewhere; adamw: "
                               "AdamW for all"),
        "optimizer.adamw_lr": number(0, meaning="optimizer.kind=adamw: its peak lr (Llama 2 7B's)"),
        **optimizer_schema(),
    }


def check_config(cfg) -> None:
    m = cfg.model
    if m.n_head % m.n_kv_head:
        raise UserError(f"model.n_kv_head={m.n_kv_head}: must divide model.n_head={m.n_head}")
    if m.head_dim % 2:
        raise UserError(f"model.head_dim={m.head_dim}: must be even (rotary rotates pairs of dimensions)")
    if m.sliding_window is not None and cfg.data.seq_len > m.sliding_window:
        raise UserError(f"data.seq_len={cfg.data.seq_len} exceeds model.sliding_window={m.sliding_window}: sliding-window "
                        "attention is not implemented; use data.seq_len <= the window")
    check_against_checkpoint(cfg, model_keys, weight_shapes(cfg), sources(cfg))
