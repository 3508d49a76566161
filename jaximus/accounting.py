"""FLOPs, peak throughput and MFU: named functions so every run reports the same figures."""
import time

import jax
import jax.numpy as jnp

# Dense bf16 peak FLOP/s per device (nanochat HEAD's table; vendor datasheets)
PEAK_FLOPS = {
    "H100 SXM": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12,
    "B200": 2.25e15, "L4": 121e12, "TPU v4": 275e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
    "TPU v6e": 918e12,
}


def measure_cpu_peak(n: int = 1024, repeats: int = 20) -> float:
    """Host matmul FLOP/s, the best of `repeats` (a shared machine's noise only ever slows a matmul down);
    fake CPU devices share the same cores, so it is per host."""
    a = jnp.ones((n, n), jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    a = jax.device_put(a, jax.devices()[0])
    matmul(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        matmul(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def peak_flops() -> tuple[float, str]:
    """(FLOP/s of the whole job's hardware, description)."""
    device = jax.devices()[0]
    if device.platform == "cpu":
        hosts = jax.process_count()
        return measure_cpu_peak() * hosts, f"cpu (measured matmul peak x {hosts} host)"
    kind = device.device_kind
    for name in sorted(PEAK_FLOPS, key=len, reverse=True):
        if name.lower() in kind.lower():
            return PEAK_FLOPS[name] * jax.device_count(), f"{kind} x {jax.device_count()}"
    return float("nan"), f"{kind} (unknown peak: MFU not reported)"


def mfu(flops_per_token: float, tokens_per_sec: float, peak: float) -> float:
    return flops_per_token * tokens_per_sec / peak
