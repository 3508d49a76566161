"""Number formats for the wire: block-scaled int / fp8 / fp4 codes, sign-magnitude top-k values, bit packing.

A quantized block is its codes plus one float32 scale (the block's absmax over the format's largest
value), so a block's largest entry is exact and nothing overflows. Rounding is to nearest (the
ml_dtypes cast where the format exists, ties to even) or stochastic between the two neighbouring grid
values, which is unbiased. Codes leave as uint8: XLA:CPU widens f8 and 4-bit collective operands to
f16 / s8 (measured with jax 0.10.2), so fp8 codes are bitcast to bytes and 4-bit codes packed two per byte.
"""
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np


@dataclass(frozen=True)
class Format:
    name: str
    bits: int
    grid: np.ndarray  # every finite value, ascending; a block's absmax maps to grid[-1]
    dtype: object = None  # the ml_dtypes type whose cast rounds to nearest, if the format has one

    @property
    def top(self) -> float:
        return float(self.grid[-1])


def _float_grid(dtype, bits: int) -> np.ndarray:
    """Every finite value of an ml_dtypes float type, from its 2**bits bit patterns."""
    patterns = np.arange(2 ** bits, dtype=np.uint8)
    values = (patterns if bits == 8 else patterns.astype(ml_dtypes.uint4)).view(dtype).astype(np.float32)
    return np.unique(values[np.isfinite(values)])


def _e3m0_grid() -> np.ndarray:
    """Sign, 3 exponent bits, no mantissa: exponent 0 is zero, 1..7 are 2^-6 .. 2^0 (the bias is the block scale's)."""
    magnitudes = np.concatenate([[0.0], 2.0 ** np.arange(-6, 1)]).astype(np.float32)
    return np.unique(np.concatenate([-magnitudes, magnitudes]))


FORMATS = {f.name: f for f in (
    Format("int8", 8, np.arange(-127, 128, dtype=np.float32)),  # symmetric: -128 unused, as torchft's int8
    Format("int4", 4, np.arange(-7, 8, dtype=np.float32)),
    Format("fp8_e4m3", 8, _float_grid(ml_dtypes.float8_e4m3fn, 8), jnp.float8_e4m3fn),
    Format("fp8_e5m2", 8, _float_grid(ml_dtypes.float8_e5m2, 8), jnp.float8_e5m2),
    Format("fp4_e2m1", 4, _float_grid(ml_dtypes.float4_e2m1fn, 4), jnp.float4_e2m1fn),
    Format("fp4_e3m0", 4, _e3m0_grid()),
)}


def round_to_grid(v, fmt: Format, key=None):
    """v (already in [-top, top]) onto the format's grid: nearest, or stochastic when key is given."""
    if key is None and fmt.dtype is not None:
        return v.astype(fmt.dtype).astype(jnp.float32)
    if key is None and fmt.name.startswith("int"):
        return jnp.round(v)
    grid = jnp.asarray(fmt.grid)
    hi = jnp.clip(jnp.searchsorted(grid, v), 1, len(fmt.grid) - 1)
    lo_v, hi_v = grid[hi - 1], grid[hi]  # the two grid values around v
    if key is None:
        return jnp.where(v - lo_v < hi_v - v, lo_v, hi_v)
    p_hi = (v - lo_v) / (hi_v - lo_v)
    return jnp.where(jax.random.uniform(key, v.shape) < p_hi, hi_v, lo_v)


def encode(q, fmt: Format):
    """Grid values -> uint8 codes below 2**bits."""
    if fmt.dtype is not None:
        narrow = q.astype(fmt.dtype)
        return jax.lax.bitcast_convert_type(narrow, jnp.uint8 if fmt.bits == 8 else jnp.uint4).astype(jnp.uint8)
    if fmt.name.startswith("int"):
        return (q.astype(jnp.int32) & (2 ** fmt.bits - 1)).astype(jnp.uint8)
    exponent = jnp.where(q == 0, 0, jnp.round(jnp.log2(jnp.maximum(jnp.abs(q), 2.0 ** -6))) + 7).astype(jnp.uint8)
    return (jnp.signbit(q).astype(jnp.uint8) << 3) | exponent


def decode(codes, fmt: Format):
    """uint8 codes -> float32 grid values."""
    if fmt.dtype is not None:
        narrow = codes if fmt.bits == 8 else codes.astype(jnp.uint4)
        return jax.lax.bitcast_convert_type(narrow, fmt.dtype).astype(jnp.float32)
    if fmt.name.startswith("int"):
        half = 2 ** (fmt.bits - 1)
        return ((codes.astype(jnp.int32) ^ half) - half).astype(jnp.float32)
    exponent = (codes & 7).astype(jnp.float32)
    magnitude = jnp.where(exponent == 0, 0.0, jnp.exp2(exponent - 7))
    return jnp.where(codes >> 3 == 1, -magnitude, magnitude)


def block_scales(x_blocks, fmt: Format):
    """One float32 scale per block (last axis): absmax / top, 1 for an all-zero block."""
    absmax = jnp.max(jnp.abs(x_blocks), axis=-1)
    return jnp.where(absmax > 0, absmax / fmt.top, 1.0).astype(jnp.float32)


def quantize_blocks(x_blocks, fmt: Format, key=None):
    """(codes uint8, scales f32) of blocks along the last axis."""
    scales = block_scales(x_blocks, fmt)
    v = jnp.clip(x_blocks / scales[..., None], -fmt.top, fmt.top)
    return encode(round_to_grid(v, fmt, key), fmt), scales


def dequantize_blocks(codes, scales, fmt: Format):
    return decode(codes, fmt) * scales[..., None]


# --- top-k values: sign and a magnitude level j * s / L, j = 1..L (the selected entries are never zero) --
def quantize_magnitudes(values, bits: int, key=None):
    """(codes uint8 < 2**bits, scale per row) for 2..8 bits; the row's absmax is the top level."""
    levels = 2 ** (bits - 1)
    scale = jnp.max(jnp.abs(values), axis=-1)
    scale = jnp.where(scale > 0, scale, 1.0).astype(jnp.float32)
    m = jnp.abs(values) / scale[..., None] * levels
    m = jnp.floor(m + jax.random.uniform(key, m.shape)) if key is not None else jnp.round(m)
    level = jnp.clip(m, 1, levels).astype(jnp.uint8)
    return (jnp.signbit(values).astype(jnp.uint8) << (bits - 1)) | (level - 1), scale


def dequantize_magnitudes(codes, scale, bits: int):
    levels = 2 ** (bits - 1)
    magnitude = ((codes & (levels - 1)).astype(jnp.float32) + 1) * scale[..., None] / levels
    return jnp.where(codes >> (bits - 1) == 1, -magnitude, magnitude)


# --- bytes on the wire -----------------------------------------------------------------------------------
def pack(codes, bits: int):
    """(..., n) unsigned codes below 2**bits -> (..., ceil(n bits / 8)) uint8, little-endian bit order."""
    if bits == 8:
        return codes.astype(jnp.uint8)
    shifts = jnp.arange(bits, dtype=jnp.uint32)
    b = ((codes[..., None].astype(jnp.uint32) >> shifts) & 1).reshape(*codes.shape[:-1], -1)
    b = jnp.pad(b, [(0, 0)] * (b.ndim - 1) + [(0, -b.shape[-1] % 8)]).reshape(*codes.shape[:-1], -1, 8)
    return (b << jnp.arange(8, dtype=jnp.uint32)).sum(-1).astype(jnp.uint8)


def unpack(data, bits: int, n: int):
    """Inverse of pack: (..., nbytes) uint8 -> (..., n) uint32 codes."""
    if bits == 8:
        return data[..., :n].astype(jnp.uint32)
    b = ((data[..., None].astype(jnp.uint32) >> jnp.arange(8, dtype=jnp.uint32)) & 1).reshape(*data.shape[:-1], -1)
    b = b[..., :n * bits].reshape(*data.shape[:-1], n, bits)
    return (b << jnp.arange(bits, dtype=jnp.uint32)).sum(-1)


def packed_bytes(n: int, bits: int) -> int:
    return -(-n * bits // 8)


def to_bytes(x):
    """(..., n) float32 / bfloat16 / uint16 -> (..., n * itemsize) uint8."""
    return jax.lax.bitcast_convert_type(x, jnp.uint8).reshape(*x.shape[:-1], -1)


def from_bytes(data, dtype):
    size = jnp.dtype(dtype).itemsize
    return jax.lax.bitcast_convert_type(data.reshape(*data.shape[:-1], -1, size), dtype)
