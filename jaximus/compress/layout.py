"""How one device's shards of a delta are cut for the wire: blocks for quantizers, chunks for top-k / random-k.

Everything is shape arithmetic fixed at trace time, so the ledger counts the bytes from the same
layout the compiled program uses. Chunks follow SparseLoCo (2508.15706): c x c tiles over the last two
dims of a tensor of rank >= 2 (leading dims, such as the stacked layer axis, index the tiles), c^2
elements for a vector. A dim shorter than c gives a smaller tile; every chunk is padded to c^2 slots so
all of a device's chunks form one (chunks, c^2) array.
"""
import math

import jax.numpy as jnp


def local_shape(shape: tuple[int, ...], spec, fsdp: int) -> tuple[int, ...]:
    """One device's shard of an in-island array with PartitionSpec spec (entries None or "fsdp")."""
    return tuple(d // fsdp if s == "fsdp" else d for d, s in zip(shape, tuple(spec) + (None,) * len(shape)))


# --- blocks: every leaf's shard flattened and padded to whole blocks, then cut into one piece per island ---
def padded_size(shape, block: int) -> int:
    return -(-math.prod(shape) // block) * block


def block_rows(shapes, block: int, islands: int) -> int:
    """Blocks per island's piece after padding the device's concatenated shards to islands x block."""
    total = sum(padded_size(s, block) for s in shapes)
    return -(-total // (block * islands))


def to_blocks(leaves, block: int, islands: int):
    """(islands, rows, block): piece r goes to island r in the reduce-scatter."""
    flat = [jnp.pad(x.reshape(-1), (0, padded_size(x.shape, block) - x.size)) for x in leaves]
    rows = block_rows([x.shape for x in leaves], block, islands)
    v = jnp.concatenate(flat)
    return jnp.pad(v, (0, rows * islands * block - v.size)).reshape(islands, rows, block)


def from_blocks(blocks, shapes, block: int):
    """Inverse of to_blocks for any leading layout: the leaves, unpadded."""
    v, out, at = blocks.reshape(-1), [], 0
    for s in shapes:
        out.append(v[at:at + math.prod(s)].reshape(s))
        at += padded_size(s, block)
    return out


# --- chunks --------------------------------------------------------------------------------------------
def tile(shape, c: int) -> tuple[int, int]:
    """(rows, cols) of one chunk of a tensor of this shape."""
    if len(shape) >= 2:
        return min(c, shape[-2]), min(c, shape[-1])
    return 1, min(c * c, max(math.prod(shape), 1))


def _grid(shape, c: int):
    """The tensor seen as (batch, rows, cols) and its tile counts."""
    lead, (r, q) = (shape[:-2], shape[-2:]) if len(shape) >= 2 else ((), (1, max(math.prod(shape), 1)))
    tr, tq = tile(shape, c)
    return lead, r, q, tr, tq, -(-r // tr), -(-q // tq)


def chunk_count(shape, c: int) -> int:
    lead, _, _, _, _, nr, nq = _grid(shape, c)
    return math.prod(lead) * nr * nq


def to_chunks(x, c: int):
    """(chunks, c^2): tiles of x in row-major tile order, zero-padded."""
    lead, r, q, tr, tq, nr, nq = _grid(x.shape, c)
    x = x.reshape(*lead, r, q)
    x = jnp.pad(x, [(0, 0)] * len(lead) + [(0, nr * tr - r), (0, nq * tq - q)])
    x = x.reshape(-1, nr, tr, nq, tq).transpose(0, 1, 3, 2, 4).reshape(-1, tr * tq)
    return jnp.pad(x, [(0, 0), (0, c * c - tr * tq)])


def from_chunks(chunks, shape, c: int):
    """Inverse of to_chunks."""
    lead, r, q, tr, tq, nr, nq = _grid(shape, c)
    x = chunks[:, :tr * tq].reshape(-1, nr, nq, tr, tq).transpose(0, 1, 3, 2, 4)
    return x.reshape(*lead, nr * tr, nq * tq)[..., :r, :q].reshape(shape)


def real_slots(shapes, c: int):
    """(chunks, c^2) bool: which slots hold a tensor entry (padding never carries a value)."""
    return jnp.concatenate([to_chunks(jnp.ones(s, bool), c) for s in shapes])
