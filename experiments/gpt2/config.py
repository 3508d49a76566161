"""GPT-2 on the nanochat recipe's data, optimizer and islands; `model.init_from=<dir>` loads a HF checkpoint.

CPU-sized by default (GPT-2 small is depth 12, width 768, 12 heads, 50,257 tokens, 1,024 positions).
"""
import sws

from experiments.gpt2.hf import model_keys, sources
from experiments.gpt2.model import weight_shapes
from experiments.nanochat.config import COMPUTE_DTYPE, INIT_STD, optimizer_schema, pretrained_config
from jaximus import UserError
from jaximus.pretrained import check_against_checkpoint
from jaximus.schema import integer, number, text

__all__ = ["check_config", "config_schema", "get_config"]

DEFAULTS = {"depth": 4, "width": 256, "n_head": 4, "vocab_size": 8192, "max_seq_len": 1024, "ln_eps": 1e-5}


def get_config() -> sws.Config:
    return pretrained_config(DEFAULTS, model_keys, "gpt2")


def config_schema() -> dict:
    return {"model.init_from": text(optional=True, meaning="a Hugging Face GPT-2 checkpoint directory to start from"),
            "model.depth": integer(1, meaning="transformer blocks"), "model.width": integer(1, meaning="hidden size"),
            "model.n_head": integer(1, meaning="attention heads (must divide width)"),
            "model.vocab_size": integer(1, meaning="tokens in the vocabulary"),
            "model.max_seq_len": integer(1, meaning="learned positions: the longest data.seq_len"),
            "model.ln_eps": number(0, meaning="LayerNorm's epsilon"),
            "model.compute_dtype": COMPUTE_DTYPE, "model.init_std": INIT_STD,
            **optimizer_schema()}


def check_config(cfg) -> None:
    m = cfg.model
    if m.width % m.n_head:
        raise UserError(f"model.n_head={m.n_head}: must divide model.width={m.width}")
    if cfg.data.seq_len > m.max_seq_len:
        raise UserError(f"data.seq_len={cfg.data.seq_len} exceeds model.max_seq_len={m.max_seq_len} (learned positions)")
    check_against_checkpoint(cfg, model_keys, weight_shapes(cfg), sources(cfg))
