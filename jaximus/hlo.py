"""Read collectives out of compiled HLO and tell cross-island ones from within-island ones (JAX_NOTES §4).

A collective crosses islands when one of its device groups holds devices of more than one replica
index. Bytes are what each device puts into the collective (the per-device operand shapes of the
SPMD-partitioned program); summed over an island's devices they are what the island sends.
"""
import re
from dataclasses import dataclass

import numpy as np

COLLECTIVE = re.compile(r"=\s*(?P<shape>\(.*?\)|\S+)\s+(?P<op>all-reduce|all-gather|reduce-scatter|all-to-all|"
                        r"collective-permute|collective-broadcast)(?:-start)?\(")
ARRAY = re.compile(r"(pred|[subf]\d+|bf16)\[([\d,]*)\]")
ITEMSIZE = {"pred": 1, "bf16": 2}


@dataclass(frozen=True)
class Collective:
    op: str
    bytes_per_device: int
    groups: tuple[tuple[int, ...], ...]


def _itemsize(dtype: str) -> int:
    return ITEMSIZE.get(dtype) or int(dtype[1:]) // 8


def _shape_bytes(shape: str) -> int:
    return sum(_itemsize(d) * int(np.prod([int(x) for x in dims.split(",") if x] or [1]))
               for d, dims in ARRAY.findall(shape))


def _groups(line: str, device_ids: list[int]) -> tuple[tuple[int, ...], ...]:
    """Device-id groups from explicit lists, iota form [G,S]<=[dims]T(perm), or source-target pairs.

    HLO numbers devices by their place in the program's device assignment (the mesh's order), not by
    device id: with several processes the ids are not 0..n-1 (JAX_NOTES §5).
    """
    m = re.search(r"(?:replica_groups|source_target_pairs)=\{(\{[\d,]*\}(?:,\{[\d,]*\})*)\}", line)
    if m:
        return tuple(tuple(device_ids[int(x)] for x in g.split(",") if x)
                     for g in re.findall(r"\{([\d,]*)\}", m.group(1)))
    m = re.search(r"replica_groups=\[(\d+),(\d+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", line)
    if m:
        g, s, dims = int(m.group(1)), int(m.group(2)), [int(x) for x in m.group(3).split(",")]
        ids = np.arange(int(np.prod(dims))).reshape(dims)
        if m.group(4):
            ids = ids.transpose([int(x) for x in m.group(4).split(",")])
        return tuple(tuple(device_ids[i] for i in row) for row in ids.reshape(g, s))
    if "replica_groups={}" in line or "replica_groups" not in line:
        return (tuple(device_ids),)  # an empty group list means all devices
    raise ValueError(f"unparsed replica groups in: {line[:200]}")


def collectives(hlo_text: str, mesh) -> list[Collective]:
    """Every collective of a compiled program, with groups in global device ids."""
    device_ids = [int(d.id) for d in mesh.devices.flat]
    found = []
    for line in hlo_text.splitlines():
        m = COLLECTIVE.search(line)
        if m:
            found.append(Collective(m.group("op"), _shape_bytes(m.group("shape")), _groups(line, device_ids)))
    return found


def crosses_islands(collective: Collective, mesh) -> bool:
    replica_of = {int(d.id): idx[0] for idx, d in np.ndenumerate(mesh.devices)}
    return any(len({replica_of[i] for i in group}) > 1 for group in collective.groups)


def processes_spanned(hlo_text: str, mesh) -> int:
    """The most processes that one group of a cross-island collective joins (0 if there is none)."""
    process_of = {int(d.id): d.process_index for d in mesh.devices.flat}
    return max((len({process_of[i] for i in group}) for c in collectives(hlo_text, mesh)
                if crosses_islands(c, mesh) for group in c.groups), default=0)


def cross_island_bytes(hlo_text: str, mesh) -> tuple[int, int]:
    """(number of cross-island collectives, bytes one island sends through them)."""
    cross = [c for c in collectives(hlo_text, mesh) if crosses_islands(c, mesh)]
    island_devices = mesh.shape["fsdp"]
    return len(cross), sum(c.bytes_per_device for c in cross) * island_devices
