"""Pack each island's document stream into rows of seq_len + 1 tokens; resumable; prefetched.

Training document k belongs to island owner(k) (jaximus/data/split.py; by default its rank among
training documents mod R), so islands see disjoint data. A stream's position is (epoch, raw document
index, token offset): three ints.
"""
import queue
import threading

import numpy as np

from jaximus import UserError
from jaximus.data.sources import is_val
from jaximus.data.split import island_owner

ENCODE_CHUNK = 64  # documents per encode_batch call, once a stream is under way
FIRST_CHUNK = 4  # the first call encodes only this many, doubling, so the first batch is not kept waiting


class IslandStream:
    """Tokens of one island's documents, BOS-prefixed and concatenated, epoch after epoch."""

    def __init__(self, source, tokenizer, island: int, num_islands: int, position=(0, 0, 0), owner=None):
        self.source, self.tokenizer = source, tokenizer
        self.island, self.num_islands = island, num_islands
        self.owner = owner or island_owner(source, "iid", num_islands)
        self.epoch, self.doc, self.offset = position
        self._pending: list[tuple[int, np.ndarray]] = []  # encoded documents from self.doc on
        self._docs = None
        self._chunk = FIRST_CHUNK

    def _mine(self, k: int) -> bool:
        return not is_val(k) and self.owner(k) == self.island

    def _refill(self):
        texts, idx = [], []
        want, self._chunk = self._chunk, min(ENCODE_CHUNK, 2 * self._chunk)
        while len(texts) < want:
            if self._docs is None:
                self._docs, self._found = self.source.documents(self.doc), self.doc != 0
            item = next(self._docs, None)
            if item is None:
                if texts or self._pending:
                    break
                if not self._found:  # a whole epoch scanned without one document of this island
                    raise UserError(f"{self.source.name}: island {self.island} of {self.num_islands} has no "
                                    "training documents; use fewer islands or more data")
                self.epoch, self.doc, self.offset, self._docs = self.epoch + 1, 0, 0, None
                continue
            if self._mine(item[0]):
                self._found = True
                idx.append(item[0])
                texts.append(item[1])
        self._pending += list(zip(idx, self.tokenizer.encode_documents(texts)))

    def take(self, n: int) -> np.ndarray:
        out, filled = np.empty(n, np.int32), 0
        while filled < n:
            if not self._pending:
                self._refill()
                continue
            k, tokens = self._pending[0]
            self.doc = k
            part = tokens[self.offset:self.offset + n - filled]
            out[filled:filled + len(part)] = part
            filled += len(part)
            self.offset += len(part)
            if self.offset >= len(tokens):
                self._pending.pop(0)
                self.offset = 0
                self.doc = self._pending[0][0] if self._pending else k + 1
        return out

    def position(self) -> tuple[int, int, int]:
        return self.epoch, self.doc, self.offset


class TrainLoader:
    """Batches of shape (islands, rows, seq_len + 1), prefetched on a thread; state() matches what was consumed."""

    def __init__(self, source, tokenizer, seq_len: int, rows_per_island: int, islands: list[int],
                 num_islands: int, state: dict | None = None, prefetch: int = 2, owner=None):
        self.islands = list(islands)
        positions = state["positions"] if state else [(0, 0, 0)] * len(islands)
        self.streams = [IslandStream(source, tokenizer, r, num_islands, tuple(p), owner) for r, p in zip(islands, positions)]
        self.row_tokens, self.rows = seq_len + 1, rows_per_island
        self._state = {"positions": [s.position() for s in self.streams]}
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, daemon=True)
        self._thread.start()

    def _make_batch(self):
        batch = np.stack([s.take(self.rows * self.row_tokens).reshape(self.rows, self.row_tokens)
                          for s in self.streams])
        return batch, {"positions": [s.position() for s in self.streams]}

    def _produce(self):
        try:
            while not self._stop.is_set():
                item = self._make_batch()
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as e:  # surfaced on the consumer's next call
            self._queue.put(e)

    def __next__(self) -> np.ndarray:
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        batch, self._state = item
        return batch

    def __iter__(self):
        return self

    def state(self) -> dict:
        """Position after the last batch handed out: a resumed loader continues from here."""
        return {"positions": [list(p) for p in self._state["positions"]]}

    def close(self):
        self._stop.set()


def validation_rows(source, tokenizer, seq_len: int, num_rows: int) -> np.ndarray:
    """The first num_rows rows of the packed validation documents: the same for every run."""
    needed, chunks, have, texts = num_rows * (seq_len + 1), [], 0, []
    docs = (text for k, text in source.documents() if is_val(k))
    while have < needed:
        texts = [t for _, t in zip(range(ENCODE_CHUNK), docs)]
        if not texts:
            raise UserError(f"eval.tokens: the validation split of {source.name} holds {have} tokens, fewer than "
                            f"the {needed} asked for; lower eval.tokens")
        chunks += tokenizer.encode_documents(texts)
        have = sum(len(c) for c in chunks)
    return np.concatenate(chunks)[:needed].reshape(num_rows, seq_len + 1)
