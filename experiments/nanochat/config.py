"""The nanochat base recipe (nanochat@3a5e0bc), sized by default for a 2-core CPU with 8 fake devices.

Depth is the one dial: width, heads and AdamW lrs follow from it. d20 is `model.depth=20
model.vocab_size=65536 data.seq_len=2048`. Every constant below is nanochat's unless marked.
"""
import math
import os

import sws

from jaximus import UserError
from jaximus.clock import add_islands_config
from jaximus.distributed import add_distributed_config
from jaximus.guard import add_guard_config
from jaximus.pretrained import add_checkpoint_defaults
from jaximus.schema import Spec, integer, number, text
from outer_optimizers import add_outer_config


def get_config() -> sws.Config:
    c = sws.Config()
    c.model.depth = 4  # CPU-sized (nanochat speedrun: 20)
    c.model.width = lambda: 64 * c.model.depth  # nanochat: model_dim = 64 x depth
    c.model.n_head = lambda: max(1, math.ceil(c.model.width / 128))  # head dim 128
    c.model.head_dim = lambda: c.model.width // c.model.n_head
    c.model.n_kv_head = lambda: c.model.n_head  # MHA in v0; GQA/MQA when smaller
    c.model.vocab_size = 8192  # CPU-sized (nanochat v0: 65,536)
    c.model.max_seq_len = 2048  # nanochat's sequence length: the rotary table's extent
    c.model.rope_base = 10000.0
    c.model.softcap = 15.0
    c.model.compute_dtype = "float32"  # "bfloat16": bf16 compute over f32 master weights
    c.model.init_dist = "normal"  # v0: normal; "uniform": symmetric U(-b, b), same std
    return add_run_config(c)


def add_run_config(c) -> sws.Config:
    """Everything but the model: data, the nanochat optimizer, islands, evaluation, outer scheme, run files.
    Other experiments on the nanochat recipe (experiments/llama) reuse it with their own model.* keys."""
    c.seed = 42  # nanochat
    c.max_steps = 80  # CPU-sized horizon: under 5 minutes on 2 cores (nanochat d20: 21,400)

    c.data.source = "embedded"  # embedded (Python's stdlib sources) | hf | files
    c.data.hf_name = None  # [path, name], e.g. ["HuggingFaceFW/fineweb-edu", "sample-10BT"]
    c.data.files = None  # local parquet / jsonl / txt paths or globs
    c.data.text_column = "text"
    c.data.seq_len = 256  # CPU-sized (nanochat: 2048)
    c.data.batch_size = 16  # rows per step over all islands (nanochat: 256 x 2048 = 2^19 tokens)
    c.data.tokenizer_path = None  # a saved tokenizer.json; otherwise BPE is trained and cached
    c.data.tokenizer_train_chars = 10_000_000  # nanochat trains on 2B chars; the stdlib is ~31M
    c.data.cache_dir = os.environ.get("JAXIMUS_CACHE", os.path.expanduser("~/.cache/jaximus"))
    c.data.prefetch = 2
    c.data.shuffle_seed = lambda: c.seed  # the data order: a seed spread spreads it too
    c.data.shuffle_rows = 256  # hf / files sources: rows per shuffle window of each batch row's stream
    c.data.island_split = "iid"  # iid | topic: each island holds whole stdlib packages (DiLoCo's non-i.i.d. shards)

    c.optimizer.matrix_lr = 0.02
    c.optimizer.embedding_lr = 0.2
    c.optimizer.unembedding_lr = 0.004
    c.optimizer.adam_b1 = 0.8
    c.optimizer.adam_b2 = 0.95
    c.optimizer.adam_eps = 1e-10
    # DES-LOC averages first moments without second ones: AdamW then divides an averaged mu by an island's
    # own near-zero nu on rows it barely saw and diverges; ADOPT's clipped, pre-normalized mu is bounded
    # (the DES-LOC paper's inner optimizer, 2505.22549; ADOPT: 2411.02853)
    c.optimizer.adam = lambda: "adopt" if c.outer.name == "desloc" else "adamw"
    c.optimizer.weight_decay = 0.0
    c.optimizer.muon_momentum = 0.95
    c.optimizer.muon_momentum_start = 0.85
    c.optimizer.muon_momentum_warmup_steps = 300
    c.optimizer.ns_steps = 5
    c.optimizer.ns_coeffs = (3.4445, -4.7750, 2.0315)
    c.optimizer.ns_dtype = "bfloat16"
    c.optimizer.schedule_steps = lambda: c.max_steps  # the lr schedule's length; kept when a run is extended
    c.optimizer.warmup_steps = 0
    c.optimizer.warmdown_frac = 0.2
    c.optimizer.final_lr_frac = 0.0

    c.parallel.replica = 4  # islands
    c.parallel.fsdp = 2  # devices per island
    c.parallel.strategy = "fsdp"  # fsdp: weights sharded in the island; dp: replicated
    c.parallel.cpu_devices = lambda: c.parallel.replica * c.parallel.fsdp

    c.eval.every = 20
    c.eval.tokens = 65_536  # fixed held-out budget (nanochat: 20 x 2^19)

    add_outer_config(c)  # outer.name=sync: synchronous data-parallel across islands
    add_distributed_config(c)  # one process unless launched as several (python -m jaximus.launch)

    c.run.out_dir = "runs"
    c.run.name = "nanochat"
    c.run.resume = "auto"  # auto: continue from the latest checkpoint; fresh: start over; or a step number
    c.run.start_from = None  # another run's weights to start from (jaximus/warm_start.py)
    c.checkpoint.every = 20
    c.checkpoint.keep = 2
    c.log.every = 1
    add_guard_config(c)  # stop a run whose loss stays above its start (jaximus/guard.py)
    add_islands_config(c)  # the islands' simulated speeds and link (jaximus/clock.py)
    c.wandb.mode = "auto"  # online | offline | disabled; auto = online only with an API key
    c.wandb.project = "jaximus"
    return c


def pretrained_config(defaults: dict, model_keys, run_name: str) -> sws.Config:
    """The run keys plus model.init_from, with `defaults` (model.* keys) read from a Hugging Face checkpoint
    when one is given (experiments/llama, experiments/gpt2)."""
    c = sws.Config()
    c.model.compute_dtype = "float32"
    c.model.init_std = 0.02  # transformers' initializer_range
    add_run_config(c)
    add_checkpoint_defaults(c, defaults, model_keys)
    c.run.name = run_name
    return c


COMPUTE_DTYPE = text("float32", "bfloat16", meaning="bfloat16: bf16 compute over float32 weights")  # every model here
INIT_STD = number(0, meaning="std of the random initialization (without model.init_from)")  # the HF architectures'


def config_schema() -> dict:
    """Type, range and meaning of the model and optimizer keys (jaximus has the rest)."""
    return {
        "model.depth": integer(1, meaning="layers: the one dial (width, heads and AdamW lrs follow)"),
        "model.width": integer(1, meaning="model dimension (nanochat: 64 x depth)"),
        "model.n_head": integer(1, meaning="attention heads (head dim 128)"),
        "model.head_dim": integer(2, meaning="dimension per head (even: rotary rotates pairs)"),
        "model.n_kv_head": integer(1, meaning="key/value heads: = n_head is MHA, fewer GQA, 1 MQA"),
        "model.vocab_size": integer(1, meaning="tokens in the vocabulary (the BPE is trained to this size)"),
        "model.max_seq_len": integer(1, meaning="the rotary table's extent: the longest data.seq_len"),
        "model.rope_base": number(1, meaning="rotary base frequency"),
        "model.softcap": number(0, meaning="logit softcap: softcap x tanh(z / softcap)"),
        "model.compute_dtype": COMPUTE_DTYPE,
        "model.init_dist": text("normal", "uniform", meaning="initial weights: normal (v0) or uniform of the same std"),
        **optimizer_schema(),
    }


def optimizer_schema() -> dict:
    """nanochat's Muon (block matrices) + AdamW (embedding, head) and its schedule."""
    return {
        "optimizer.matrix_lr": number(0, meaning="Muon's lr for the block matrices"),
        "optimizer.embedding_lr": number(0, meaning="AdamW's lr for the embedding (x (width / 768)^-0.5)"),
        "optimizer.unembedding_lr": number(0, meaning="AdamW's lr for the head (x (width / 768)^-0.5)"),
        "optimizer.adam_eps": number(0, meaning="AdamW's epsilon"),
        "optimizer.weight_decay": number(0, meaning="AdamW's decoupled weight decay"),
        "optimizer.final_lr_frac": number(0, meaning="the lr at the end of the warmdown, as a fraction of the peak"),
        "optimizer.adam_b1": number(0, 1, hi_open=True, meaning="AdamW's beta1"),
        "optimizer.adam_b2": number(0, 1, hi_open=True, meaning="AdamW's beta2"),
        "optimizer.muon_momentum": number(0, 1, hi_open=True, meaning="Muon's Nesterov momentum after its warmup"),
        "optimizer.muon_momentum_start": number(0, 1, hi_open=True, meaning="Muon's momentum at step 0"),
        "optimizer.adam": text("adamw", "adopt", meaning="the embedding and head optimizer (adopt: ADOPT, 2411.02853)"),
        "optimizer.muon_momentum_warmup_steps": integer(0, meaning="steps over which Muon's momentum rises"),
        "optimizer.ns_steps": integer(0, meaning="Newton-Schulz iterations of Muon's orthogonalization"),
        "optimizer.ns_coeffs": Spec("numbers", length=3, meaning="Newton-Schulz's quintic coefficients (a, b, c)"),
        "optimizer.ns_dtype": text("float32", "bfloat16", meaning="Newton-Schulz's compute dtype"),
        "optimizer.warmup_steps": integer(0, meaning="linear lr warmup steps"),
        "optimizer.warmdown_frac": number(0, 1, meaning="the schedule's last fraction, decayed linearly"),
        "optimizer.schedule_steps": integer(1, meaning="the steps the lr schedule spans (kept when a run is extended)"),
    }


def check_config(cfg) -> None:
    """Relations between model keys that the shapes need."""
    m = cfg.model
    if m.n_head % m.n_kv_head:
        raise UserError(f"model.n_kv_head={m.n_kv_head}: must divide model.n_head={m.n_head} (GQA shares each kv "
                        f"head among n_head / n_kv_head query heads); use one of "
                        f"{', '.join(str(d) for d in range(1, m.n_head + 1) if m.n_head % d == 0)}")
    if m.head_dim % 2:
        raise UserError(f"model.head_dim={m.head_dim}: must be even (rotary rotates pairs of dimensions)")
