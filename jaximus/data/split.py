"""Which island trains on which document: `data.island_split`.

iid: training document k goes to island train_rank(k) % R, so every island sees the same mixture.
topic: the corpus's documents in (topic, path) order are cut into R contiguous runs of about equal
characters, so each island holds whole stdlib packages (a package larger than 1/R of the corpus is cut
between islands): the non-i.i.d. setting of DiLoCo (2311.08105 §3, C4 clustered into one shard per worker).
Validation documents stay every VAL_MOD-th document of the whole corpus either way.
"""
import numpy as np

from jaximus.data.sources import is_val, train_rank


def island_owner(source, split: str, num_islands: int):
    """owner(k) -> the island that trains on raw document k (never called for validation documents)."""
    if split == "iid":
        return lambda k: train_rank(k) % num_islands
    topics = source.topics()
    train = sorted((topic, path, k) for k, (topic, path, _) in enumerate(topics) if not is_val(k))
    chars = np.cumsum([topics[k][2] for *_, k in train])
    # island i takes the documents whose characters end in its i-th share of the total
    islands = np.minimum(((chars - 1) * num_islands) // chars[-1], num_islands - 1)
    owner = np.full(len(topics), -1, np.int64)
    owner[[k for *_, k in train]] = islands
    return lambda k: int(owner[k])


def island_topics(source, owner, num_islands: int) -> list[list[str]]:
    """The topics each island trains on under the topic split, for config.json."""
    found = [set() for _ in range(num_islands)]
    for k, (topic, *_) in enumerate(source.topics()):
        if not is_val(k):
            found[owner(k)].add(topic or "(top level)")
    return [sorted(f) for f in found]
