"""Type and range of every config key, checked before JAX starts: one line naming the key and the fix.

A schema maps dotted keys to specs. jaximus owns the keys of the run (SCHEMA below), the outer schemes
theirs (each scheme declares its keys: outer_optimizers/registry.py) and an experiment its model and optimizer keys
(`config_schema()` in its config.py).
"""
from dataclasses import dataclass, field

from jaximus import UserError

KINDS = {"int": "an integer", "number": "a number", "str": "a string", "bool": "True or False",
         "numbers": "a tuple of numbers", "strs": "a string or a list of strings", "dict": "a dict"}


@dataclass(frozen=True)
class Spec:
    kind: str
    lo: float | None = None
    hi: float | None = None
    hi_open: bool = False  # hi itself is not allowed
    choices: tuple = ()
    optional: bool = False  # None allowed
    also: tuple = ()  # other allowed values (run.resume's "auto" and "fresh")
    length: int | None = None  # for kind "numbers"
    meaning: str = field(default="", compare=False)  # one line for python train.py --help

    def error(self, key: str, value) -> str | None:
        """None if value fits, else the one-line complaint."""
        if (value is None and self.optional) or (self.also and value in self.also):
            return None
        if not _is_kind(value, self.kind, self.length):
            return f"{key}={value!r}: must be {self.describe()}"
        if self.choices and value not in self.choices:
            return f"{key}={value!r}: choose one of {', '.join(map(str, self.choices))}"
        too_high = self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi)
        if self.kind in ("int", "number") and ((self.lo is not None and value < self.lo) or too_high):
            return f"{key}={value!r}: must be {self.describe()}"
        return None

    def describe(self) -> str:
        text = KINDS[self.kind] + (f" of length {self.length}" if self.length else "")
        if self.lo is not None and self.hi is not None:
            text += f" in [{self.lo}, {self.hi}{')' if self.hi_open else ']'}"
        elif self.lo is not None:
            text += f" >= {self.lo}"
        extras = [repr(a) for a in self.also] + (["None"] if self.optional else [])
        return text + (f" (or {' or '.join(extras)})" if extras else "")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_kind(v, kind: str, length: int | None) -> bool:
    if kind == "int":
        return isinstance(v, int) and not isinstance(v, bool)
    if kind == "number":
        return _is_number(v)
    if kind == "str":
        return isinstance(v, str)
    if kind == "bool":
        return isinstance(v, bool)
    if kind == "numbers":
        return isinstance(v, (tuple, list)) and all(map(_is_number, v)) and (length is None or len(v) == length)
    if kind == "strs":
        return isinstance(v, str) or (isinstance(v, (tuple, list)) and all(x is None or isinstance(x, str) for x in v))
    return isinstance(v, dict)


def integer(lo=None, **kw) -> Spec:
    return Spec("int", lo=lo, **kw)


def number(lo=None, hi=None, **kw) -> Spec:
    return Spec("number", lo=lo, hi=hi, **kw)


def text(*choices, **kw) -> Spec:
    return Spec("str", choices=choices, **kw)


def flag(**kw) -> Spec:
    return Spec("bool", **kw)


def flatten(config: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in config.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_types(cfg, schema: dict[str, Spec]) -> None:
    """Every key that has a spec, checked; the first misfit is a UserError."""
    for key, value in flatten(cfg.to_dict()).items():
        spec = schema.get(key)
        problem = spec.error(key, value) if spec else None
        if problem:
            raise UserError(problem)


SCHEMA = {  # the run's keys (an experiment's config.py sets their defaults)
    "seed": integer(0, meaning="initialization, island dropout and (through data.shuffle_seed) the data order"),
    "max_steps": integer(1, meaning="inner steps to train"),
    "data.source": text("embedded", "hf", "files", meaning="embedded (this Python's stdlib sources), hf (a Hugging "
                        "Face dataset, streamed) or files (data.files)"),
    "data.hf_name": Spec("strs", optional=True, meaning="data.source=hf: [path, name], e.g. "
                         "['HuggingFaceFW/fineweb-edu', 'sample-10BT']"),
    "data.files": Spec("strs", optional=True, meaning="data.source=files: local parquet, jsonl or txt paths or globs"),
    "data.text_column": text(meaning="the column that holds the text (hf, parquet, jsonl)"),
    "data.seq_len": integer(1, meaning="tokens per row (each row also holds the next token of its last)"),
    "data.batch_size": integer(1, meaning="rows per step over all islands, split over islands and devices"),
    "data.tokenizer_path": text(optional=True, meaning="a saved tokenizer.json; None trains a BPE on the training "
                                "split and caches it"),
    "data.tokenizer_train_chars": integer(1, meaning="characters of training text the BPE is trained on"),
    "data.cache_dir": text(meaning="tokenizers, the tokenized corpus and the XLA compile cache"),
    "data.prefetch": integer(1, meaning="batches the loader prepares ahead"),
    "data.island_split": text("iid", "topic", meaning="iid: islands share one mixture; topic: whole stdlib packages "
                              "per island (non-i.i.d.)"),
    "data.shuffle_seed": integer(0, meaning="the data order (follows seed by default)"),
    "data.shuffle_rows": integer(1, meaning="hf and files sources: rows per shuffle window of each batch row"),
    "parallel.replica": integer(1, meaning="islands (the replica mesh axis)"),
    "parallel.fsdp": integer(1, meaning="devices per island"),
    "parallel.strategy": text("fsdp", "dp", meaning="fsdp: weights sharded inside an island; dp: replicated"),
    "parallel.cpu_devices": integer(1, meaning="fake CPU devices to create (replica x fsdp)"),
    "eval.every": integer(1, meaning="inner steps between evaluations of the global model"),
    "eval.tokens": integer(1, meaning="held-out tokens each evaluation scores"),
    "run.out_dir": text(meaning="where run directories go"),
    "run.name": text(meaning="this run's directory under run.out_dir"),
    "run.resume": integer(0, also=("auto", "fresh"), meaning="auto: from the newest checkpoint; fresh: start over; "
                          "a step: rewind to it"),
    "run.start_from": text(optional=True, meaning="a run directory (its newest checkpoint) or <run>/checkpoints/<step>: "
                           "a fresh run starts every island from its weights (same model.* keys)"),
    "checkpoint.every": integer(1, meaning="inner steps between checkpoints (and one at the end)"),
    "checkpoint.keep": integer(1, meaning="checkpoints kept"),
    "log.every": integer(1, meaning="inner steps between rows of metrics.jsonl (and wandb)"),
    "guard.loss_margin": number(0, meaning="nats above the step-0 validation loss that count as diverging"),
    "guard.patience": integer(0, meaning="consecutive steps above it that stop the run; 0 turns the guard off"),
    "wandb.mode": text("auto", "online", "offline", "disabled", meaning="auto: online with an API key, else offline"),
    "wandb.project": text(meaning="the wandb project"),
    "distributed.coordinator": text(optional=True, meaning="host:port of process 0 (several processes joined by hand)"),
    "distributed.num_processes": integer(1, meaning="processes in the run"),
    "distributed.process_id": integer(0, meaning="this process's index"),
    "distributed.auto": flag(meaning="let jax.distributed.initialize() find the cluster (SLURM, Open MPI, TPU)"),
    "distributed.timeout_s": number(1, meaning="seconds to wait for peers to join; a peer silent for half of it ends "
                                    "the run"),
}
