"""Which global row trains on which document: `data.island_split` over the batch's B row slots.

Every step's global batch has B rows; row j of every step comes from slot j's documents, and island r
owns slots [r B/R, (r + 1) B/R). So a document is read by one island only, and under iid the global
batch does not depend on R at all.

iid: the training documents, longest first (ties in a seeded order), are each dealt to the slot holding
the fewest tokens so far, so slots are balanced by tokens and every slot (hence every island) holds the
same mixture.
topic: the corpus's documents in (topic, path) order are cut into R contiguous runs of about equal
characters, so each island holds whole stdlib packages (a package larger than 1/R of the corpus is cut
between islands): the non-i.i.d. setting of DiLoCo (2311.08105 §3, C4 clustered into one shard per
worker); an island's documents are then dealt to its own slots as under iid.
Validation documents stay every VAL_MOD-th document of the whole corpus either way.
"""
import heapq

import numpy as np

from jaximus.data.sources import is_val, train_rank


def slot_of_documents(source, lengths: np.ndarray, split: str, num_slots: int, num_islands: int,
                      seed: int) -> np.ndarray:
    """slot[k] for every raw document k of an in-memory source (-1 for validation documents)."""
    slot = np.full(len(lengths), -1, np.int64)
    train = np.array([k for k in range(len(lengths)) if not is_val(k)], np.int64)
    groups = [train] if split == "iid" else [train[island_of_topic(source, num_islands)[train] == r]
                                              for r in range(num_islands)]
    per_group = num_slots // len(groups)
    rng = np.random.default_rng([seed, 0x5107])
    for g, docs in enumerate(groups):
        heap = [(0, g * per_group + j) for j in range(per_group)]
        shuffled = rng.permutation(docs)
        for k in shuffled[np.argsort(-lengths[shuffled], kind="stable")]:  # longest first: slots equal to 1e-5
            tokens, j = heapq.heappop(heap)
            slot[k] = j
            heapq.heappush(heap, (tokens + int(lengths[k]), j))
    return slot


def streamed_slot(num_slots: int, seed: int):
    """slot(k) for a source read in order (no lengths known in advance): round robin, rotated by the seed."""
    return lambda k: (train_rank(k) + seed) % num_slots


def island_of_topic(source, num_islands: int) -> np.ndarray:
    """island[k] under the topic split (-1 for validation documents)."""
    topics = source.topics()
    train = sorted((topic, path, k) for k, (topic, path, _) in enumerate(topics) if not is_val(k))
    chars = np.cumsum([topics[k][2] for *_, k in train])
    # island i takes the documents whose characters end in its i-th share of the total
    islands = np.minimum(((chars - 1) * num_islands) // chars[-1], num_islands - 1)
    owner = np.full(len(topics), -1, np.int64)
    owner[[k for *_, k in train]] = islands
    return owner


def island_topics(source, island: np.ndarray, num_islands: int) -> list[list[str]]:
    """The topics each island trains on under the topic split, for config.json."""
    found = [set() for _ in range(num_islands)]
    for k, (topic, *_) in enumerate(source.topics()):
        if island[k] >= 0:
            found[island[k]].add(topic or "(top level)")
    return [sorted(f) for f in found]
