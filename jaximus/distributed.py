"""Several processes joined by JAX's own runtime: start-up, the island-to-process layout, host I/O.

Everything else is written against the global mesh. What differs with several processes lives here:
who calls `jax.distributed.initialize`, which islands a process feeds, how host data becomes a global
array and how a global array is read back on the host.
"""
import jax
import numpy as np
from jax.experimental import multihost_utils

from jaximus import UserError


def add_distributed_config(c) -> None:
    """distributed.* defaults: one process. `python -m jaximus.launch` sets the three keys per process."""
    c.distributed.coordinator = None  # "host:port" of process 0
    c.distributed.num_processes = 1
    c.distributed.process_id = 0
    c.distributed.auto = False  # True: let jax.distributed.initialize() detect a cluster (SLURM, TPU pods, ...)
    c.distributed.timeout_s = 120  # a peer that has not joined by then aborts the run (JAX_NOTES §5)


def check_distributed(cfg) -> None:
    d = cfg.distributed
    if d.auto:
        return
    if d.num_processes < 1 or not 0 <= d.process_id < d.num_processes:
        raise UserError(f"distributed.process_id={d.process_id}, distributed.num_processes={d.num_processes}: "
                        "need num_processes >= 1 and 0 <= process_id < num_processes")
    if d.num_processes > 1 and not d.coordinator:
        raise UserError("distributed.num_processes > 1 needs distributed.coordinator=<host:port of process 0> "
                        "(or distributed.auto=true on a cluster JAX can detect)")
    if cfg.parallel.cpu_devices % d.num_processes:
        raise UserError(f"parallel.cpu_devices={cfg.parallel.cpu_devices} does not split over "
                        f"distributed.num_processes={d.num_processes}; make it a multiple")


def local_cpu_devices(cfg) -> int:
    """On CPU each process brings its share of the fake devices."""
    return cfg.parallel.cpu_devices // (1 if cfg.distributed.auto else cfg.distributed.num_processes)


def initialize(cfg) -> None:
    """Join the other processes; must run before anything touches devices."""
    d = cfg.distributed
    if d.auto:
        jax.distributed.initialize(initialization_timeout=d.timeout_s)
    elif d.num_processes > 1:
        print(f"jaximus: process {d.process_id} of {d.num_processes} joining {d.coordinator} (waiting up to "
              f"{d.timeout_s} s for the others)", flush=True)
        jax.distributed.initialize(d.coordinator, d.num_processes, d.process_id, initialization_timeout=d.timeout_s)


def is_primary() -> bool:
    """Process 0 writes the run directory, wandb and the console; the others only compute."""
    return jax.process_index() == 0


def local_islands(mesh) -> list[int]:
    """The islands whose devices are all this process's: the ones it reads data for."""
    me = jax.process_index()
    grid = mesh.devices
    return [r for r in range(grid.shape[0]) if all(dev.process_index == me for dev in grid[r])]


def check_layout(mesh) -> None:
    owners = [{dev.process_index for dev in row} for row in mesh.devices]
    if any(len(o) > 1 for o in owners):
        raise UserError(f"parallel.replica={mesh.shape['replica']} islands do not divide evenly over "
                        f"{jax.process_count()} processes: an island would straddle processes; choose a "
                        "replica count that is a multiple of the process count")


def global_batch(local: np.ndarray, sharding) -> jax.Array:
    """This process's islands' rows (n_local, B, T+1) as its part of the global (R, B, T+1) batch."""
    return jax.make_array_from_process_local_data(sharding, local)


def replicated_input(value: np.ndarray, sharding) -> jax.Array:
    """Host data every process holds in full (the validation rows), placed by the global sharding."""
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def to_host(tree):
    """A pytree of global arrays as NumPy on every process; shards on other processes are gathered."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    return jax.tree.map(lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True)), tree)


def all_processes_agree(flag: int) -> int:
    """The largest of every process's value: a stop requested on one process stops all at the same step."""
    if jax.process_count() == 1:
        return flag
    return int(np.max(multihost_utils.process_allgather(np.array([flag], np.int32))))


def gather_islands(rows: list, islands: list[int], num_islands: int) -> list:
    """Per-island host values (loader positions) from every process, in island order."""
    if jax.process_count() == 1:
        return list(rows)
    local = np.array(rows, np.int64).reshape(len(islands), -1)
    everyone = np.asarray(multihost_utils.process_allgather(local, tiled=True))
    owner = np.asarray(multihost_utils.process_allgather(np.array(islands, np.int64), tiled=True))
    out = [None] * num_islands
    for r, row in zip(owner, everyone):
        out[int(r)] = row.tolist()
    return out


def barrier(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
