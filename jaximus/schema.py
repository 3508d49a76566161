"""Type and range of every config key, checked before JAX starts: one line naming the key and the fix.

A schema maps dotted keys to specs. jaximus owns the keys of the run (SCHEMA below), the outer schemes
theirs (each scheme declares its keys: outer_optimizers/registry.py) and an experiment its model and optimizer keys
(`config_schema()` in its config.py).
"""
from dataclasses import dataclass

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


def flag() -> Spec:
    return Spec("bool")


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


SCHEMA = {
    "seed": integer(0),
    "max_steps": integer(1),
    "data.source": text("embedded", "hf", "files"),
    "data.hf_name": Spec("strs", optional=True),
    "data.files": Spec("strs", optional=True),
    "data.text_column": text(),
    "data.seq_len": integer(1),
    "data.batch_size": integer(1),
    "data.tokenizer_path": text(optional=True),
    "data.tokenizer_train_chars": integer(1),
    "data.cache_dir": text(),
    "data.prefetch": integer(1),
    "data.island_split": text("iid", "topic"),
    "data.shuffle_seed": integer(0),
    "data.shuffle_rows": integer(1),
    "parallel.replica": integer(1),
    "parallel.fsdp": integer(1),
    "parallel.strategy": text("fsdp", "dp"),
    "parallel.cpu_devices": integer(1),
    "eval.every": integer(1),
    "eval.tokens": integer(1),
    "run.out_dir": text(),
    "run.name": text(),
    "run.resume": integer(0, also=("auto", "fresh")),
    "checkpoint.every": integer(1),
    "checkpoint.keep": integer(1),
    "log.every": integer(1),
    "guard.loss_margin": number(0),
    "guard.patience": integer(0),
    "wandb.mode": text("auto", "online", "offline", "disabled"),
    "wandb.project": text(),
    "distributed.coordinator": text(optional=True),
    "distributed.num_processes": integer(1),
    "distributed.process_id": integer(0),
    "distributed.auto": flag(),
    "distributed.timeout_s": number(1),
}
