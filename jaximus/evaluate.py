"""Validation loss and bits per byte on a fixed held-out token budget (nanochat's evaluate_bpb)."""
import math

import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaximus.distributed import to_host


def bits_per_byte(nats_sum: float, bytes_sum: float) -> float:
    """sum of nats over targets with byte length > 0, divided by ln 2 x their bytes (nanochat)."""
    return nats_sum / (math.log(2) * bytes_sum)


def split_val_rows(rows: np.ndarray, num_islands: int, rows_per_batch: int) -> np.ndarray:
    """(N, T+1) rows -> (R, N / rows_per_batch, rows_per_batch / R, T+1): island r scores its share of each batch."""
    batches = rows.reshape(-1, num_islands, rows_per_batch // num_islands, rows.shape[-1])
    return batches.transpose(1, 0, 2, 3)


def val_sharding(mesh) -> NamedSharding:
    return NamedSharding(mesh, P("replica", None, "fsdp"))


def evaluate(eval_step, params_R, val_rows) -> dict:
    """Every island scores its share of the validation rows with its own parameter copy; the host adds them."""
    nats, byte_nats, nbytes, tokens = (float(x) for x in np.asarray(to_host(eval_step(params_R, val_rows))).sum(0))
    return {"val/loss": nats / tokens, "val/bpb": bits_per_byte(byte_nats, nbytes)}
