"""Hugging Face checkpoints in and out: config.json plus safetensors (one file, or shards with an index).

An experiment that can load one says, per leaf of its weights, which checkpoint tensor fills it
(`Source`): one tensor, or one per layer stacked on the leading layer axis, maybe transposed (HF
Linear weights are (out, in), ours (in, out)). Loading is per device: each device's shard of each
(R, ...) state leaf is read straight from the memory-mapped file (`jax.make_array_from_callback`),
so no device ever holds a full host copy of a weight it does not keep.
"""
import functools
import json
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np

from jaximus import UserError, first_line
from jaximus.files import atomic_write, io_error, read_json
from jaximus.state import IslandState, OuterState

DAMAGED = "model.init_from names a damaged checkpoint; download or export it again"


@dataclass(frozen=True)
class Source:
    name: str  # the checkpoint tensor; "{l}" stands for the layer of a stacked leaf
    transpose: bool = False  # a 2-D tensor stored (out, in)
    layers: int = 0  # stacked: how many layers (the leaf's leading axis); 0 for one tensor

    def names(self) -> list[str]:
        return [self.name.format(l=i) for i in range(self.layers)] if self.layers else [self.name]


def read_config(directory) -> dict:
    """config.json of a checkpoint directory, or a one-line error naming what is missing."""
    path = Path(directory)
    if not path.is_dir():
        raise UserError(f"model.init_from={directory}: no such directory; give a Hugging Face checkpoint directory")
    if not (path / "config.json").is_file():
        raise UserError(f"model.init_from={directory}: no config.json there; give a Hugging Face checkpoint directory")
    return read_json(path / "config.json", DAMAGED)


@functools.cache
def _checkpoint_keys(model_keys, directory: str) -> dict:
    """The checkpoint's model.* values; {} when it cannot be read (check_against_checkpoint says why)."""
    try:
        return model_keys(json.loads((Path(directory) / "config.json").read_text()), directory)
    except (OSError, ValueError, KeyError, UserError):
        return {}


def add_checkpoint_defaults(c, defaults: dict, model_keys) -> None:
    """model.init_from, and every model.* key of defaults defaulting to the checkpoint's config.json when it is
    set; the checkpoint's tokenizer.json becomes data.tokenizer_path. Call after the data keys exist."""
    c.model.init_from = None  # a Hugging Face checkpoint directory (config.json + *.safetensors)

    def default(key):
        return lambda: _checkpoint_keys(model_keys, c.model.init_from).get(key, defaults[key]) if c.model.init_from \
            else defaults[key]

    for key in defaults:
        setattr(c.model, key, default(key))

    def tokenizer():
        path = Path(c.model.init_from) / "tokenizer.json" if c.model.init_from else None
        return str(path) if path and path.is_file() else None

    c.data.tokenizer_path = tokenizer


def check_against_checkpoint(cfg, model_keys, shapes: dict, sources: dict) -> None:
    """With model.init_from, before JAX starts: the checkpoint is readable and runnable, no override contradicts
    it, and its tensors have the shapes the model needs (shapes: the model's weight shapes, sources: the map)."""
    m = cfg.model
    if not m.init_from:
        return
    expected = model_keys(read_config(m.init_from), m.init_from)
    wrong = [f"model.{k}={getattr(m, k)!r} (checkpoint: {v!r})" for k, v in expected.items() if getattr(m, k) != v]
    if wrong:
        raise UserError(f"model.init_from={m.init_from}: the config differs from the checkpoint's: {', '.join(wrong)}; "
                        "drop those overrides")
    check_shapes(m.init_from, sources, flat_shapes(shapes))


class Checkpoint:
    """The tensors of a checkpoint directory by name, memory-mapped."""

    def __init__(self, directory):
        self.dir = Path(directory)
        index = self.dir / "model.safetensors.index.json"
        if index.is_file():
            files = sorted(set(read_json(index, DAMAGED).get("weight_map", {}).values()))
        else:
            files = [p.name for p in sorted(self.dir.glob("*.safetensors"))]
        if not files:
            raise UserError(f"model.init_from={self.dir}: no *.safetensors files there")
        self.handles = [self._open(self.dir / f) for f in files]
        self.where = {k: h for h in self.handles for k in h.keys()}

    @staticmethod
    def _open(path: Path):
        from safetensors import safe_open
        try:
            return safe_open(str(path), "np")
        except Exception as e:  # SafetensorError on a truncated or foreign file
            raise UserError(f"model.init_from: {path} is not a readable safetensors file ({first_line(e)}); "
                            "the checkpoint is damaged or incomplete") from None

    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self.where:
            raise UserError(f"model.init_from={self.dir}: no tensor {name} in the checkpoint")
        return tuple(self.where[name].get_slice(name).get_shape())

    def read(self, name: str, index: tuple) -> np.ndarray:
        return self.where[name].get_slice(name)[index]


def _expected(source: Source, leaf_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The checkpoint shape of one tensor behind a leaf of this (layer-less) shape."""
    shape = leaf_shape[1:] if source.layers else leaf_shape
    return tuple(reversed(shape)) if source.transpose else tuple(shape)


def flat_shapes(tree) -> dict[str, tuple[int, ...]]:
    """Dotted leaf path -> shape, for a tree of shape tuples or arrays."""
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: isinstance(x, tuple))[0]
    return {_key(path): tuple(getattr(leaf, "shape", leaf)) for path, leaf in flat}


def check_shapes(directory, sources: dict, shapes: dict) -> None:
    """Every tensor the model needs is in the checkpoint, with the shape it needs (shapes: see flat_shapes)."""
    ckpt = directory if isinstance(directory, Checkpoint) else Checkpoint(directory)
    for key, shape in shapes.items():
        source = sources[key]
        want = _expected(source, shape)
        for name in source.names():
            got = ckpt.shape(name)
            if got != want:
                raise UserError(f"model.init_from={ckpt.dir}: tensor {name} has shape {list(got)} but the model "
                                f"needs {list(want)}; the checkpoint and the model.* config differ")


def _key(path) -> str:
    return ".".join(str(getattr(k, "key", k)) for k in path)


def _read_shard(ckpt: Checkpoint, source: Source, index: tuple, shape: tuple, dtype) -> np.ndarray:
    """One device's block of an (R, ...) leaf: every island holds the same weights."""
    islands, rest = index[0], index[1:]
    count = len(range(*islands.indices(shape[0])))
    if source.layers:
        layer_slice, rest = rest[0], rest[1:]
        names = source.names()[layer_slice]
        parts = [_read_one(ckpt, n, rest, source.transpose) for n in names]
        block = np.stack(parts)
    else:
        block = _read_one(ckpt, source.name, rest, source.transpose)
    return np.broadcast_to(block.astype(dtype), (count, *block.shape))


def _read_one(ckpt: Checkpoint, name: str, index: tuple, transpose: bool) -> np.ndarray:
    return ckpt.read(name, tuple(reversed(index))).T if transpose else ckpt.read(name, index)


def load_params(directory, sources: dict, params_R, shardings_R):
    """params (leaves (R, ...)) filled from the checkpoint, each device reading only its own shard."""
    ckpt = Checkpoint(directory)
    check_shapes(ckpt, sources, {k: s[1:] for k, s in flat_shapes(params_R).items()})

    def leaf(path, x, sharding):
        source = sources[_key(path)]
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: _read_shard(ckpt, source, idx, x.shape, x.dtype))

    return jax.tree_util.tree_map_with_path(leaf, params_R, shardings_R)


def with_pretrained(cfg, model_module, state, shardings):
    """A fresh TrainState whose weights, every island's and the outer copy, come from model.init_from.

    The optimizer states and buffers stay as initialized: moments and error buffers start at zero."""
    init_from = getattr(cfg.model, "init_from", None)
    if not init_from:
        return state
    if not hasattr(model_module, "pretrained_sources"):
        raise UserError("model.init_from: this experiment's model has no Hugging Face mapping; use experiments/llama")
    sources = model_module.pretrained_sources(cfg)
    islands = IslandState(load_params(init_from, sources, state.islands.params, shardings.islands.params),
                          state.islands.opt_state)
    outer = state.outer
    if outer.params is not None:
        outer = OuterState(load_params(init_from, sources, outer.params, shardings.outer.params), outer.opt_state,
                           outer.buffers)
    return state.replace(islands=islands, outer=outer)


def save_checkpoint(out, params: dict, sources: dict, config: dict, tokenizer_json: Path | None) -> list[Path]:
    """Write params (one island's, numpy) as model.safetensors + config.json (+ tokenizer.json); returns the files."""
    from safetensors.numpy import save_file
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
        source, x = sources[_key(path)], np.asarray(x, np.float32)
        for i, name in enumerate(source.names()):
            t = x[i] if source.layers else x
            tensors[name] = np.ascontiguousarray(t.T if source.transpose else t)
    tmp = out / "model.safetensors.tmp"
    try:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise io_error(e, out, sum(t.nbytes for t in tensors.values())) from None
    tmp.replace(out / "model.safetensors")
    atomic_write(out / "config.json", json.dumps(config, indent=2) + "\n")
    written = [out / "model.safetensors", out / "config.json"]
    if tokenizer_json is not None:
        atomic_write(out / "tokenizer.json", Path(tokenizer_json).read_text())
        written.append(out / "tokenizer.json")
    return written
