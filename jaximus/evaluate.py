"""Validation loss and bits per byte on a fixed held-out token budget (nanochat's evaluate_bpb)."""
import math

import jax
import numpy as np


def bits_per_byte(nats_sum: float, bytes_sum: float) -> float:
    """sum of nats over targets with byte length > 0, divided by ln 2 x their bytes (nanochat)."""
    return nats_sum / (math.log(2) * bytes_sum)


def split_val_rows(rows: np.ndarray, num_islands: int, rows_per_call: int) -> list[np.ndarray]:
    """(N, T+1) rows into calls of (R, rows_per_call / R, T+1); N must be a multiple of rows_per_call."""
    calls = rows.reshape(-1, rows_per_call, rows.shape[-1])
    return [c.reshape(num_islands, rows_per_call // num_islands, -1) for c in calls]


def evaluate(eval_step, params_R, val_batches) -> dict:
    """Every island scores its share of each batch with its own parameter copy; sums cross islands."""
    total = None
    for batch in val_batches:
        sums = eval_step(params_R, batch)
        total = sums if total is None else total + sums
    nats, byte_nats, nbytes, tokens = (float(x) for x in jax.device_get(total))
    return {"val/loss": nats / tokens, "val/bpb": bits_per_byte(byte_nats, nbytes)}
