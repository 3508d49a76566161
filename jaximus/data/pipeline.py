"""The run's data, set up once from the config: source, tokenizer, token index, who reads what, the loader.

build() and `python -m jaximus.bench` both go through here, so the benchmark times the loader a run uses.
"""
from dataclasses import dataclass

from jaximus.data.loader import TrainLoader, make_slots, split_positions
from jaximus.data.sources import open_source
from jaximus.data.split import slot_of_documents, streamed_slot
from jaximus.data.tokenizer import load_tokenizer
from jaximus.data.tokens import load_token_index
from jaximus.distributed import barrier, is_primary


@dataclass
class Data:
    source: object
    tokenizer: object
    index: object  # TokenIndex of a source held in memory; None for one streamed in order
    slot_of: object  # the batch row each training document feeds: an array (indexed) or a function (streamed)


def open_data(cfg, say=print) -> Data:
    """Process 0 trains (or reads) the tokenizer and tokenizes an in-memory source; the others read its caches."""
    d = cfg.data
    source = open_source(d)
    tokenizer = load_tokenizer(source, d, cfg.model.vocab_size) if is_primary() else None
    barrier("tokenizer")
    tokenizer = tokenizer or load_tokenizer(source, d, cfg.model.vocab_size)
    if not hasattr(source, "texts"):  # streamed: documents dealt round robin as they are read
        return Data(source, tokenizer, None, streamed_slot(d.batch_size, d.shuffle_seed))
    index = load_token_index(source, tokenizer, d.cache_dir, say) if is_primary() else None
    barrier("token index")
    index = index or load_token_index(source, tokenizer, d.cache_dir, say)
    slot_of = slot_of_documents(source, index.lengths(), d.island_split, d.batch_size, cfg.parallel.replica,
                                d.shuffle_seed)
    return Data(source, tokenizer, index, slot_of)


def train_loader(cfg, data: Data, islands: list[int], positions: list | None = None) -> TrainLoader:
    """The loader of these islands' rows (island r reads batch rows r B/R .. (r + 1) B/R - 1), at their saved
    positions (one list of ints per island, as TrainLoader.state() gives them)."""
    S, d = cfg.data.batch_size // cfg.parallel.replica, cfg.data
    positions = positions or [None] * len(islands)
    return TrainLoader([make_slots(data.source, data.tokenizer, data.index, data.slot_of, d.seq_len + 1,
                                   list(range(r * S, (r + 1) * S)), d.shuffle_seed, d.shuffle_rows,
                                   split_positions(p, S) if p else None) for r, p in zip(islands, positions)],
                       islands, prefetch=d.prefetch)
