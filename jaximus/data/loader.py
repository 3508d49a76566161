"""The global batch of step t, a function of the data settings, the seed and t only; islands take disjoint rows.

Row j of every step comes from slot j (B slots, one per global row; jaximus/data/split.py deals the
documents to slots), and island r reads the rows of its slots [r B/R, (r + 1) B/R). Nothing here
depends on the mesh or the process count, so sync DP logs the same losses on 1 x 8, 4 x 2 and 8 x 1.

A slot's rows are shuffled so that a step's rows, and consecutive steps, come from across the corpus:
- IndexedSlot (the embedded corpus, tokenized once: jaximus/data/tokens.py): each epoch, the slot's
  documents in a seeded order are concatenated, cut into rows of seq_len + 1, and the rows are read in
  a seeded order. Its position is the number of rows it has handed out.
- StreamedSlot (hf and files sources, read in order): the slot's documents are packed in order and
  cut into windows of data.shuffle_rows rows, each read in a seeded order. Its position is where its
  window starts (epoch, raw document, token offset) and how many of the window's rows it has handed out.
"""
import queue
import threading

import numpy as np

from jaximus import UserError
from jaximus.data.sources import is_val

ENCODE_CHUNK = 64  # documents per encode_batch call, once a stream is under way
FIRST_CHUNK = 4  # the first call encodes only this many, doubling, so the first batch is not kept waiting


class DocumentStream:
    """Tokens of one slot's documents, BOS-prefixed and concatenated in source order, epoch after epoch."""

    def __init__(self, source, tokenizer, slot: int, owner, position=(0, 0, 0)):
        self.source, self.tokenizer, self.slot, self.owner = source, tokenizer, slot, owner
        self.epoch, self.doc, self.offset = position
        self._pending: list[tuple[int, np.ndarray]] = []  # encoded documents from self.doc on
        self._docs = None
        self._chunk = FIRST_CHUNK

    def _mine(self, k: int) -> bool:
        return not is_val(k) and self.owner(k) == self.slot

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
                if not self._found:  # a whole epoch scanned without one document of this slot
                    raise UserError(f"{self.source.name}: row {self.slot} of the batch has no training documents; "
                                    "lower data.batch_size or use more data")
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


class IndexedSlot:
    """One global row per step from documents held in full: an epoch is a seeded permutation of all its rows."""

    def __init__(self, index, documents: np.ndarray, row_tokens: int, seed: int, slot: int, position=(0,)):
        self.index, self.documents, self.row_tokens, self.key = index, documents, row_tokens, [seed, slot]
        self.rows = int(index.lengths()[documents].sum()) // row_tokens  # the same every epoch: only the order changes
        if self.rows == 0:
            raise UserError(f"data.batch_size: row {slot} of the batch holds fewer than data.seq_len + 1 = {row_tokens} "
                            "tokens of training documents; lower data.batch_size or data.seq_len, or use more data")
        self.taken, self._epoch = position[0], None

    def _start_epoch(self, epoch: int):
        order = np.random.default_rng([*self.key, epoch, 0]).permutation(self.documents)
        self._tokens = np.concatenate([self.index.document(k) for k in order])
        self._rows = np.random.default_rng([*self.key, epoch, 1]).permutation(self.rows)
        self._epoch = epoch

    def next_row(self) -> np.ndarray:
        epoch, i = divmod(self.taken, self.rows)
        if epoch != self._epoch:
            self._start_epoch(epoch)
        start = int(self._rows[i]) * self.row_tokens
        self.taken += 1
        return self._tokens[start:start + self.row_tokens].astype(np.int32)

    def position(self) -> list[int]:
        return [self.taken]


class StreamedSlot:
    """One global row per step from a source read in order: windows of `window` packed rows, each read shuffled."""

    def __init__(self, stream: DocumentStream, row_tokens: int, window: int, seed: int, position=None):
        self.stream, self.row_tokens, self.window, self.seed = stream, row_tokens, window, seed
        self.start, self.used, self._rows = stream.position(), position[3] if position else 0, None

    def _fill(self, used: int = 0):
        self.start = self.stream.position()
        self._rows = self.stream.take(self.window * self.row_tokens).reshape(self.window, self.row_tokens)
        self._order = np.random.default_rng([self.seed, self.stream.slot, *self.start]).permutation(self.window)
        self.used = used

    def next_row(self) -> np.ndarray:
        if self._rows is None:  # on the loader's thread: a resumed window is re-packed, then skipped into
            self._fill(self.used)
        if self.used == self.window:
            self._fill()
        self.used += 1
        return self._rows[self._order[self.used - 1]]

    def position(self) -> list[int]:
        return [*self.start, self.used]


def make_slots(source, tokenizer, index, slot_of, row_tokens: int, slots: list[int], seed: int, window: int,
               positions: list | None = None) -> list:
    """The given slots of the batch, at their saved positions: indexed when the source is held in full."""
    positions = positions or [None] * len(slots)
    if index is not None:
        return [IndexedSlot(index, np.flatnonzero(slot_of == j), row_tokens, seed, j, p or (0,))
                for j, p in zip(slots, positions)]
    streams = [DocumentStream(source, tokenizer, j, slot_of, tuple(p[:3]) if p else (0, 0, 0))
               for j, p in zip(slots, positions)]
    return [StreamedSlot(s, row_tokens, window, seed, p) for s, p in zip(streams, positions)]


class TrainLoader:
    """Batches of shape (islands, rows, seq_len + 1), prefetched on a thread; state() matches what was consumed.

    island_slots holds each local island's slots; an island's position is its slots' positions, concatenated.
    Each island has its own queue, so an island that does not take a step (take(active)) does not consume
    its data: its rows in that batch are zeros, which the masked step ignores.
    """

    def __init__(self, island_slots: list[list], islands: list[int], prefetch: int = 2):
        self.islands, self.slots = list(islands), island_slots
        self._positions = [self._position(slots) for slots in island_slots]
        self._queues = [queue.Queue(maxsize=max(1, prefetch)) for _ in island_slots]
        # an idle island's rows: zeros shaped like its slots' rows (int32, seq_len + 1 tokens each)
        self._blank = np.zeros((len(island_slots[0]), island_slots[0][0].row_tokens), np.int32) if island_slots else None
        self._error = None
        self._stop, self._taken = threading.Event(), threading.Condition()
        self._thread = threading.Thread(target=self._produce, daemon=True)
        self._thread.start()

    @staticmethod
    def _position(slots) -> list:
        return [x for s in slots for x in s.position()]

    def _produce(self):
        try:
            while not self._stop.is_set():
                ready = [(q, slots) for q, slots in zip(self._queues, self.slots) if not q.full()]
                for q, slots in ready:  # only this thread puts, so a queue with room keeps it
                    q.put((np.stack([s.next_row() for s in slots]), self._position(slots)))
                if not ready:  # every island is prefetched: sleep until a step takes some, or close
                    with self._taken:
                        self._taken.wait_for(lambda: self._stop.is_set() or not all(q.full() for q in self._queues))
        except BaseException as e:  # surfaced on the consumer's next call
            self._error = e

    def _get(self, i: int):
        while True:
            try:
                return self._queues[i].get(timeout=0.05)
            except queue.Empty:
                if self._error is not None:
                    raise self._error from None

    def take(self, active=None) -> np.ndarray:
        """The next batch; with `active` (one bool per island of the run) only the active islands' data moves."""
        rows = [None] * len(self.slots)
        for i, island in enumerate(self.islands):
            if active is None or active[island]:
                rows[i], self._positions[i] = self._get(i)
        with self._taken:
            self._taken.notify()
        return np.stack([self._blank if r is None else r for r in rows])

    def __next__(self) -> np.ndarray:
        return self.take()

    def __iter__(self):
        return self

    def state(self) -> dict:
        """Position after the last batch handed out: a resumed loader continues from here."""
        return {"positions": [list(p) for p in self._positions]}

    def close(self):
        self._stop.set()
        with self._taken:
            self._taken.notify()


def split_positions(position: list[int], num_slots: int) -> list[list[int]]:
    """An island's saved position back into its slots' positions."""
    size = len(position) // num_slots
    return [position[i * size:(i + 1) * size] for i in range(num_slots)]


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
