"""Compression: the layer between a scheme's pseudo-gradients and the cross-island collective (DESIGN.md).

`Compressor.mean(tree, error, weight, step)` replaces `island_mean` for a scheme that exchanges deltas.
Each device compresses its own FSDP shards (a nested shard_map manual over `fsdp`, so no in-island
traffic is added), and what crosses islands is the compressed payload:

- quantizers (int8, int4, fp8_e4m3, fp8_e5m2, fp4_e2m1, fp4_e3m0) run a quantized all-reduce as torchft
  does: block-scaled codes all-to-all (each island receives one piece from every island), a float32
  sum of that piece, the piece re-quantized and all-gathered. Wire bytes 2 (R - 1) / R x payload, the
  ring all-reduce's factor, so the saving holds at any island count.
- topk: SparseLoCo's chunked top-k (2508.15706). Indices differ per island, so values, packed indices and
  a scale per chunk are all-gathered and every island scatter-adds them: wire (R - 1) x payload. Quantized
  values also carry their chunk's count of non-zero entries, so a zero travels as zero.
- randk: k random entries per chunk, the same on every island (a shared seed), so the values are
  all-reduced in float32 and no index crosses.

With error feedback, each island sends C(beta e + delta) and keeps e <- beta e + delta - C(beta e + delta)
(beta = 1: classic EF; SparseLoCo's decayed EF beta = 0.95). Decompression and sums are float32.
"""
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from jaximus import UserError
from jaximus.compress import layout
from jaximus.compress.codecs import (
    FORMATS,
    dequantize_blocks,
    dequantize_magnitudes,
    from_bytes,
    pack,
    packed_bytes,
    quantize_blocks,
    quantize_magnitudes,
    to_bytes,
    unpack,
)
from jaximus.islands import island_mean, num_islands, tree_bytes
from jaximus.mesh import island_spec
from jaximus.schema import flag, integer, number, text

SPARSIFIERS = ("topk", "randk")
CHOICES = ("none", *FORMATS, *SPARSIFIERS)
VALUE_BITS = (2, 3, 4, 5, 6, 7, 8, 16, 32)


def add_compress_config(c) -> None:
    c.outer.compress.format = None  # None (no compression) or one of CHOICES
    c.outer.compress.block = 128  # quantizers: values per float32 scale (0.25 extra bits per value)
    c.outer.compress.chunk = 64  # top-k / random-k: 64 x 64 tiles, 4,096-entry vector chunks (SparseLoCo)
    c.outer.compress.k = 64  # entries kept per chunk: 1.56% density (SparseLoCo)
    c.outer.compress.value_bits = 2  # top-k values: sign + magnitude level (SparseLoCo: 2 bits); 16 bf16, 32 f32
    c.outer.compress.error_feedback = False  # keep what compression dropped and send it later
    c.outer.compress.ef_decay = 1.0  # beta: e <- beta e + delta - sent (SparseLoCo: 0.95)
    c.outer.compress.stochastic = False  # quantizers and top-k values: unbiased stochastic rounding


COMPRESS_SCHEMA = {
    "outer.compress.format": text(*CHOICES, optional=True,  # None and "none" both mean no compression
                                  meaning="how pseudo-gradients cross islands: a quantizer, topk or randk; None: float32"),
    "outer.compress.block": integer(1, meaning="quantizers: values per float32 scale"),
    "outer.compress.chunk": integer(1, meaning="top-k / random-k: chunk x chunk tiles"),
    "outer.compress.k": integer(1, meaning="top-k / random-k: entries kept per chunk"),
    "outer.compress.value_bits": integer(choices=VALUE_BITS, meaning="top-k values: bits of sign + magnitude level "
                                         "(16: bf16, 32: float32)"),
    "outer.compress.error_feedback": flag(meaning="keep what compression dropped and send it later"),
    "outer.compress.ef_decay": number(0, 1, meaning="beta of the error buffer: e <- beta e + delta - sent"),
    "outer.compress.stochastic": flag(meaning="unbiased stochastic rounding for quantizers and top-k values"),
}


def check_settings(cfg) -> None:
    """Relations between outer.compress.* keys (each key's type and range are in COMPRESS_SCHEMA)."""
    fmt = cfg.format or "none"
    if fmt not in CHOICES:
        raise UserError(f"outer.compress.format={fmt!r}: choose one of {', '.join(CHOICES)}")
    if fmt in SPARSIFIERS and cfg.k > cfg.chunk ** 2:
        raise UserError(f"outer.compress.k={cfg.k} is larger than a chunk (outer.compress.chunk={cfg.chunk}: "
                        f"{cfg.chunk ** 2} entries); choose k <= {cfg.chunk ** 2}")
    if fmt == "randk" and cfg.value_bits != 32:
        raise UserError(f"outer.compress.value_bits={cfg.value_bits} with outer.compress.format=randk: random-k "
                        "values cross in a float32 all-reduce; set outer.compress.value_bits=32")


class Compressor:
    """Built once per run from outer.compress.* and the island layout; `none` is today's float32 mean."""

    def __init__(self, cfg, fsdp: int, strategy: str, seed: int):
        check_settings(cfg)
        self.format, self.fsdp, self.strategy, self.seed = cfg.format or "none", fsdp, strategy, seed
        self.block, self.chunk, self.k, self.bits = cfg.block, cfg.chunk, cfg.k, cfg.value_bits
        self.beta, self.stochastic = cfg.ef_decay, cfg.stochastic
        self.error_feedback = cfg.error_feedback and self.format != "none"

    @property
    def active(self) -> bool:
        return self.format != "none"

    def init_error(self, tree):
        """The error-feedback buffer for deltas shaped like tree (None without error feedback)."""
        return jax.tree.map(jnp.zeros_like, tree) if self.error_feedback else None

    def spec(self, shape) -> P:
        return P(*island_spec((1, *shape), self.fsdp, self.strategy)[1:])

    # --- the mean over islands ---------------------------------------------------------------------------
    def mean(self, tree, error, weight, step, salt: int = 0):
        """(mean over islands of the compressed tree, new error buffer), inside per_island.

        weight: this island's share (1/n, or 0 if it dropped out); None for the plain mean. step and salt
        seed random-k's shared selection and stochastic rounding."""
        if not self.active:
            return island_mean(tree, weight), error
        leaves, treedef = jax.tree.flatten(tree)
        errors = jax.tree.leaves(error) if self.error_feedback else [jnp.zeros_like(x) for x in leaves]
        specs = [self.spec(x.shape) for x in leaves]
        share = jnp.float32(1.0) if weight is None else weight.astype(jnp.float32)
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(self.seed), step), salt)
        shared = jax.random.key_data(key)
        mean, new_errors = jax.shard_map(
            lambda x, e, s, k: self._device(x, e, s, k, divide=weight is None),
            in_specs=(specs, specs, P(), P()), out_specs=(specs, specs), axis_names={"fsdp"},
        )(leaves, errors, share, shared)
        return (jax.tree.unflatten(treedef, mean),
                jax.tree.unflatten(treedef, new_errors) if self.error_feedback else error)

    def _device(self, deltas, errors, share, key_data, divide: bool):
        """One device's shards: error feedback around the format's exchange."""
        key = jax.random.wrap_key_data(key_data)
        c = [self.beta * e + d for d, e in zip(deltas, errors)] if self.error_feedback else deltas
        exchange = {"topk": self._topk, "randk": self._randk}.get(self.format, self._quantized)
        mean, sent = exchange(c, share, key)
        R = num_islands()
        mean = [m / R for m in mean] if divide else mean  # as pmean: sum, then divide
        if not self.error_feedback:
            return mean, errors
        return mean, [jnp.where(share > 0, x - s, e) for x, s, e in zip(c, sent, errors)]  # an absent island sent nothing

    def _rounding_key(self, key, stage: int):
        """Stochastic rounding differs per island and stage; None rounds to nearest."""
        if not self.stochastic:
            return None
        return jax.random.fold_in(jax.random.fold_in(key, jax.lax.axis_index("replica")), stage)

    def _quantized(self, c, share, key):
        fmt, B, R = FORMATS[self.format], self.block, num_islands()
        shapes = [x.shape for x in c]
        codes, scales = quantize_blocks(layout.to_blocks(c, B, R), fmt, self._rounding_key(key, 1))
        sent = layout.from_blocks(dequantize_blocks(codes, scales, fmt), shapes, B)
        got = _across(jax.lax.all_to_all, self._rows(codes, scales * share, fmt.bits), 0, 0, tiled=True)
        piece = sum(dequantize_blocks(*self._unrows(got[r], fmt.bits), fmt) for r in range(R))  # float32, island order
        codes, scales = quantize_blocks(piece, fmt, self._rounding_key(key, 2))
        gathered = _across(jax.lax.all_gather, self._rows(codes, scales, fmt.bits), axis=0, tiled=False)
        gathered = gathered if R > 1 else gathered[None]
        return layout.from_blocks(dequantize_blocks(*self._unrows(gathered, fmt.bits), fmt), shapes, B), sent

    def _rows(self, codes, scales, bits):
        return jnp.concatenate([pack(codes, bits), to_bytes(scales[..., None])], axis=-1)

    def _unrows(self, rows, bits):
        n = packed_bytes(self.block, bits)
        return unpack(rows[..., :n], bits, self.block).astype(jnp.uint8), from_bytes(rows[..., n:], jnp.float32)[..., 0]

    def _selection(self, c, scores):
        """(chunks, slots mask, chosen slot indices) for k entries per chunk by score; padding never wins."""
        shapes = [x.shape for x in c]
        chunks = jnp.concatenate([layout.to_chunks(x, self.chunk) for x in c])
        real = layout.real_slots(shapes, self.chunk)
        _, idx = jax.lax.top_k(jnp.where(real, scores(chunks), -1.0), self.k)
        return chunks, idx

    def _dense(self, values, idx):
        """Scatter (..., chunks, k) values into (..., chunks, c^2) zeros."""
        zeros = jnp.zeros((*idx.shape[:-1], self.chunk ** 2), jnp.float32)
        return jnp.put_along_axis(zeros, idx, values, axis=-1, inplace=False)

    def _unchunk(self, chunks, c):
        out, at = [], 0
        for x in c:
            n = layout.chunk_count(x.shape, self.chunk)
            out.append(layout.from_chunks(chunks[at:at + n], x.shape, self.chunk))
            at += n
        return out

    def _topk(self, c, share, key):
        chunks, idx = self._selection(c, jnp.abs)
        values = jnp.take_along_axis(chunks, idx, axis=-1)
        if self.bits >= 16:
            dtype = jnp.float32 if self.bits == 32 else jnp.bfloat16
            payload, scale = to_bytes(values.astype(dtype)), jnp.ones(values.shape[0], jnp.float32)
            sent_values = values.astype(dtype).astype(jnp.float32)
        else:  # the magnitude grid has no zero: a chunk with fewer than k non-zero entries sends how many it has
            codes, scale = quantize_magnitudes(values, self.bits, self._rounding_key(key, 1))
            nonzero = jnp.sum(values != 0, axis=-1)  # top_k sorts by magnitude: the zeros are the last picks
            payload = jnp.concatenate([pack(codes, self.bits), self._count_bytes(nonzero)], axis=-1)
            sent_values = self._first(dequantize_magnitudes(codes, scale, self.bits), nonzero)
        index_bits = max(1, (self.chunk ** 2 - 1).bit_length())
        rows = jnp.concatenate([payload, pack(idx, index_bits), to_bytes((scale * share)[:, None])], axis=-1)
        R = num_islands()
        gathered = _across(jax.lax.all_gather, rows, axis=0, tiled=False)
        gathered = gathered if R > 1 else gathered[None]
        nv = payload.shape[-1]
        got_idx = unpack(gathered[..., nv:-4], index_bits, self.k).astype(jnp.int32)
        got_scale = from_bytes(gathered[..., -4:], jnp.float32)[..., 0]
        if self.bits >= 16:
            got = from_bytes(gathered[..., :nv], dtype).astype(jnp.float32) * got_scale[..., None]
        else:
            nc = packed_bytes(self.k, self.bits)
            got = dequantize_magnitudes(unpack(gathered[..., :nc], self.bits, self.k).astype(jnp.uint8), got_scale,
                                        self.bits)
            got = self._first(got, self._read_count(gathered[..., nc:nv]))
        dense = self._dense(got, got_idx)
        total = dense[0]
        for r in range(1, R):  # float32, island order
            total = total + dense[r]
        return self._unchunk(total, c), self._unchunk(self._dense(sent_values, idx), c)

    def _count_width(self) -> int:
        """Bytes of a chunk's count of 0..k non-zero entries: one, or two when k exceeds 255."""
        return 2 if self.k > 255 else 1

    def _count_bytes(self, count):
        wide = self._count_width() == 2
        return to_bytes(count.astype(jnp.uint16)[:, None]) if wide else count.astype(jnp.uint8)[:, None]

    def _read_count(self, data):
        return from_bytes(data, jnp.uint16)[..., 0] if self._count_width() == 2 else data[..., 0]

    def _first(self, values, count):
        """values (..., k) with every entry from position count on set to zero."""
        return jnp.where(jnp.arange(self.k) < count[..., None].astype(jnp.int32), values, 0.0)

    def _randk(self, c, share, key):
        chunks, idx = self._selection(c, lambda x: jax.random.uniform(key, x.shape))
        values = jnp.take_along_axis(chunks, idx, axis=-1)
        total = _across(jax.lax.psum, values * share, "replica")
        return self._unchunk(self._dense(total, idx), c), self._unchunk(self._dense(values, idx), c)

    # --- the ledger ----------------------------------------------------------------------------------------
    def cost(self, tree, islands: int) -> tuple[int, float]:
        """(payload, wire bytes) one island sends to mean a tree shaped like `tree` over `islands` islands."""
        if islands == 1:
            return 0, 0.0
        R = islands
        if not self.active:
            payload = tree_bytes(tree)
            return payload, 2 * (R - 1) / R * payload
        shapes = [layout.local_shape(x.shape, self.spec(x.shape), self.fsdp) for x in jax.tree.leaves(tree)]
        if self.format in FORMATS:
            row = packed_bytes(self.block, FORMATS[self.format].bits) + 4
            piece = layout.block_rows(shapes, self.block, R) * row
            return (R + 1) * piece * self.fsdp, 2 * (R - 1) * piece * self.fsdp
        chunks = sum(layout.chunk_count(s, self.chunk) for s in shapes)
        if self.format == "randk":
            payload = chunks * self.k * 4 * self.fsdp
            return payload, 2 * (R - 1) / R * payload
        values = self.k * self.bits // 8 if self.bits >= 16 else packed_bytes(self.k, self.bits) + self._count_width()
        row = values + packed_bytes(self.k, max(1, (self.chunk ** 2 - 1).bit_length())) + 4
        payload = chunks * row * self.fsdp
        return payload, (R - 1) * payload


def _across(collective, x, *args, **kwargs):
    """collective(x, "replica", ...) skipped for one island (XLA rejects size-1 manual collectives)."""
    if num_islands() == 1:
        return x
    if collective is jax.lax.psum:
        return collective(x, *args)
    return collective(x, "replica", *args, **kwargs)
