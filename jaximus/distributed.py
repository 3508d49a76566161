"""Several processes joined by JAX's own runtime: start-up, the island-to-process layout, host I/O.

Everything else is written against the global mesh. What differs with several processes lives here:
who calls `jax.distributed.initialize`, which islands a process feeds, how host data becomes a global
array and how a global array is read back on the host.
"""
import os
import sys
import threading
import time

import jax
import numpy as np
from jax._src import distributed as jax_distributed
from jax.experimental import multihost_utils
from tqdm import tqdm

from jaximus import UserError, first_line

_watch = None  # this process's PeerWatch when there are several processes


def add_distributed_config(c) -> None:
    """distributed.* defaults: one process. `python -m jaximus.launch` sets the three keys per process."""
    c.distributed.coordinator = None  # "host:port" of process 0
    c.distributed.num_processes = 1
    c.distributed.process_id = 0
    c.distributed.auto = False  # True: let jax.distributed.initialize() detect a cluster (SLURM, TPU pods, ...)
    c.distributed.timeout_s = 120  # a peer that has not joined by then aborts the run (docs/jax_notes.md §5)


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
    """Join the other processes, then watch them; must run before anything touches devices.

    JAX's own timeouts end in a C++ abort, so ours fire first: its join and heartbeat limits are set past
    distributed.timeout_s, within which a one-line error names what is missing. One case stays JAX's: when
    process 0 (which hosts the coordination service) dies, its client aborts the others at once; the
    binding's callback for that cannot carry the status to Python (std::bad_cast in jaxlib 0.10.2)."""
    global _watch
    d = cfg.distributed
    if not d.auto and d.num_processes == 1:
        return
    limits = dict(initialization_timeout=int(d.timeout_s) + 30, heartbeat_timeout_seconds=int(max(100, 2 * d.timeout_s)))
    where = "the cluster's coordinator" if d.auto else d.coordinator
    late = threading.Timer(d.timeout_s, _abort, [f"not every process joined {where} within distributed.timeout_s="
                                                 f"{d.timeout_s:g} s; start all of them with the same coordinator"])
    late.daemon = True
    late.start()
    if d.auto:
        jax.distributed.initialize(**limits)
    else:
        print(f"jaximus: process {d.process_id} of {d.num_processes} joining {d.coordinator} (waiting up to "
              f"{d.timeout_s} s for the others)", flush=True)
        jax.distributed.initialize(d.coordinator, d.num_processes, d.process_id, **limits)
    late.cancel()
    if jax.process_count() > 1:
        _watch = PeerWatch(jax_distributed.global_state.client, jax.process_index(), jax.process_count(), d.timeout_s)


def _abort(text: str) -> None:
    """From a watching thread while the main one is blocked inside JAX: one line, then exit at once."""
    tqdm.write(f"error: distributed: {text}", file=sys.stderr)  # on a line of its own, past the progress bar
    sys.stderr.flush()
    os._exit(2)


class PeerWatch:
    """Each process beats every timeout_s / 10 in the coordination service's key-value store with the last
    step it finished. A peer silent for timeout_s / 2 (dead, stopped, cut off) ends every survivor in one
    line; the store lives in process 0, so a store that stops answering means process 0 is gone."""

    PREFIX = "jaximus/beat/"

    def __init__(self, client, me: int, n: int, timeout_s: float):
        self.client, self.me, self.n, self.limit, self.every = client, me, n, timeout_s / 2, timeout_s / 10
        self.step, self.done = 0, False
        self.answered = time.monotonic()
        self.peers = {p: ["", 0, self.answered] for p in range(n) if p != me}  # beat, its step, when it changed
        for target in (self._beat, self._judge):
            threading.Thread(target=target, daemon=True).start()

    def _beat(self):
        count = 0
        while True:
            count += 1
            try:
                self.client.key_value_set(f"{self.PREFIX}{self.me}", f"{count} {self.step} {int(self.done)}",
                                          allow_overwrite=True)
                beats = self.client.key_value_dir_get(self.PREFIX)
            except Exception:  # the store is gone or cut off: _judge sees that nothing was answered
                beats = None
            now = time.monotonic()
            if beats is not None:
                self.answered = now
                for key, value in beats:
                    pid, (beat, step, done) = int(key.rsplit("/", 1)[1]), value.split()
                    if pid in self.peers and (self.peers[pid][0] != beat or done == "1"):
                        self.peers[pid] = [beat, int(step), float("inf") if done == "1" else now]
            time.sleep(self.every)

    def _judge(self):
        while not self.done:
            time.sleep(self.every)
            now = time.monotonic()
            silent = [p for p, (_, _, seen) in self.peers.items() if now - seen > self.limit]
            if now - self.answered > self.limit and self.me != 0:
                silent = [0]
            if silent and not self.done:
                _abort(f"process {', '.join(map(str, silent))} of {self.n} stopped responding (silent for "
                       f"{self.limit:g} s = distributed.timeout_s / 2); last step each reported: {self.steps()}. Rerun "
                       "every process with the same command to resume from the last checkpoint")

    def steps(self) -> str:
        return ", ".join(f"p{p} {self.step if p == self.me else self.peers[p][1]}" for p in range(self.n))


def step_finished(step: int) -> None:
    """What this process's next beats tell the others."""
    if _watch is not None:
        _watch.step = step


def processes_done() -> None:
    """This process ends normally: the others stop expecting its beats."""
    if _watch is not None:
        _watch.done = True


def leave(code: int) -> int:
    """A failed process of several exits now: its peers, blocked on it, see its beats stop and end too
    (a normal exit would wait for them in JAX's shutdown barrier while they wait for it)."""
    if _watch is not None and code:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def peer_failure(error: Exception) -> None:
    """A collective failed: a peer is gone. Wait for the watch to say which (it exits); else say what JAX said."""
    if _watch is None:
        raise error
    time.sleep(2 * _watch.limit + _watch.every)
    _abort(f"a collective failed ({first_line(error)}) but every peer still answers; rerun to resume")


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
