"""Read collectives out of compiled HLO and tell cross-island ones from within-island ones (docs/jax_notes.md §4).

A collective crosses islands when one of its device groups holds devices of more than one replica
index. Its payload is what each device puts into it (the per-device operand of the SPMD-partitioned
program: an all-gather's result over the group size, a reduce-scatter's times it); summed over an
island's devices it is what the island sends. Wire bytes are what a device transmits for the op over a
group of G: a ring all-reduce 2 (G - 1) / G x payload, an all-gather (G - 1) x, a reduce-scatter and an
all-to-all (G - 1) / G x (the piece it keeps stays home), a collective-permute 1 x.
"""
import re
from dataclasses import dataclass

import numpy as np

COLLECTIVE = re.compile(r"=\s*(?P<shape>\(.*?\)|\S+)\s+(?P<op>all-reduce|all-gather|reduce-scatter|all-to-all|"
                        r"collective-permute|collective-broadcast)(?:-start)?\(")
ARRAY = re.compile(r"(pred|bf16|f8e\w+|f4e\w+|[subf]\d+)\[([\d,]*)\]")
BITS = {"pred": 8, "bf16": 16}
WIRE = {"all-reduce": lambda g: 2 * (g - 1) / g, "all-gather": lambda g: g - 1, "reduce-scatter": lambda g: (g - 1) / g,
        "all-to-all": lambda g: (g - 1) / g, "collective-permute": lambda g: 1, "collective-broadcast": lambda g: g - 1}


@dataclass(frozen=True)
class Collective:
    op: str
    result_bytes: float  # the per-device result shape's bytes
    groups: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...] = ()

    @property
    def group_size(self) -> int:
        return len(self.groups[0])

    @property
    def bytes_per_device(self) -> float:
        """The operand one device puts in."""
        if self.op == "all-gather":
            return self.result_bytes / self.group_size
        return self.result_bytes * (self.group_size if self.op == "reduce-scatter" else 1)

    @property
    def wire_per_device(self) -> float:
        return WIRE[self.op](self.group_size) * self.bytes_per_device


def _bits(dtype: str) -> int:
    if dtype.startswith(("f8e", "f4e")):
        return int(dtype[1])
    return BITS.get(dtype) or int(dtype[1:])


def _shape_bytes(shape: str) -> float:
    return sum(_bits(d) * int(np.prod([int(x) for x in dims.split(",") if x] or [1])) / 8
               for d, dims in ARRAY.findall(shape))


def _groups(line: str, device_ids: list[int]) -> tuple[tuple[int, ...], ...]:
    """Device-id groups from explicit lists, iota form [G,S]<=[dims]T(perm), or source-target pairs.

    HLO numbers devices by their place in the program's device assignment (the mesh's order), not by
    device id: with several processes the ids are not 0..n-1 (docs/jax_notes.md §5).
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
            shape = m.group("shape")
            found.append(Collective(m.group("op"), _shape_bytes(shape), _groups(line, device_ids),
                                    tuple(sorted({d for d, _ in ARRAY.findall(shape)}))))
    return found


def crosses_islands(collective: Collective, mesh) -> bool:
    replica_of = {int(d.id): idx[0] for idx, d in np.ndenumerate(mesh.devices)}
    return any(len({replica_of[i] for i in group}) > 1 for group in collective.groups)


def processes_spanned(hlo_text: str, mesh) -> int:
    """The most processes that one group of a cross-island collective joins (0 if there is none)."""
    process_of = {int(d.id): d.process_index for d in mesh.devices.flat}
    return max((len({process_of[i] for i in group}) for c in collectives(hlo_text, mesh)
                if crosses_islands(c, mesh) for group in c.groups), default=0)


def cross_island(hlo_text: str, mesh) -> list[Collective]:
    return [c for c in collectives(hlo_text, mesh) if crosses_islands(c, mesh)]


def cross_island_bytes(hlo_text: str, mesh) -> tuple[int, float, float]:
    """(number of cross-island collectives, payload one island sends through them, its wire bytes)."""
    cross, island_devices = cross_island(hlo_text, mesh), mesh.shape["fsdp"]
    return (len(cross), sum(c.bytes_per_device for c in cross) * island_devices,
            sum(c.wire_per_device for c in cross) * island_devices)
