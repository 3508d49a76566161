"""Sources, tokenizer, loader: determinism, disjoint islands, resume, local files, offline hub, bpb."""
import json
import math
import re
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import NANOCHAT

from jaximus import UserError
from jaximus.build import load_config
from jaximus.data.loader import DocumentStream, IndexedSlot, validation_rows
from jaximus.data.pipeline import Data, train_loader
from jaximus.data.sources import EmbeddedCorpus, is_val, open_source, train_rank
from jaximus.data.split import island_of_topic, island_topics, slot_of_documents, streamed_slot
from jaximus.data.tokenizer import load_tokenizer
from jaximus.data.tokens import TokenIndex, load_token_index
from jaximus.evaluate import bits_per_byte, evaluate, split_val_rows, val_sharding
from jaximus.loss import token_nats
from jaximus.mesh import make_mesh
from jaximus.step import make_eval_step


@pytest.fixture(scope="module")
def corpus():
    return EmbeddedCorpus()


@pytest.fixture(scope="module")
def tokenizer(corpus, tiny_cfg):
    return load_tokenizer(corpus, tiny_cfg().data, 512)


def test_corpus_split_is_deterministic(corpus):
    again = EmbeddedCorpus()
    assert again.fingerprint == corpus.fingerprint and again.texts == corpus.texts
    val = [k for k in range(len(corpus.texts)) if is_val(k)]
    assert 0.015 < len(val) / len(corpus.texts) < 0.025
    assert [train_rank(k) for k in range(6)] == list(range(6))
    assert train_rank(50) == 49 and is_val(49)


def test_tokenizer_cached_and_counts_raw_bytes(corpus, tokenizer, tiny_cfg):
    t0 = time.perf_counter()
    cached = load_tokenizer(corpus, tiny_cfg().data, 512)
    assert time.perf_counter() - t0 < 1.0 and cached.vocab_size == 512
    text = "def héllo():\n    return '€' * 3  # ünïcode\n"
    ids = tokenizer.encode_documents([text])[0]
    assert ids[0] == tokenizer.bos_id and tokenizer.token_bytes[tokenizer.bos_id] == 0
    assert tokenizer.token_bytes[ids].sum() == len(text.encode())  # bpb denominator = raw UTF-8 bytes
    assert tokenizer.decode(ids[1:]) == text


def test_vocab_too_small(corpus, tiny_cfg):
    with pytest.raises(UserError, match="model.vocab_size=200"):
        load_tokenizer(corpus, tiny_cfg().data, 200)


def loader_of(source, tokenizer, index, slot_of, islands, num_islands, positions=None, seq_len=32, batch=16,
              seed=42, window=8):
    """The loader a run builds (jaximus.data.pipeline.train_loader) for these islands, at these positions."""
    cfg = SimpleNamespace(parallel=SimpleNamespace(replica=num_islands), data=SimpleNamespace(
        batch_size=batch, seq_len=seq_len, shuffle_seed=seed, shuffle_rows=window, prefetch=1))
    return train_loader(cfg, Data(source, tokenizer, index, slot_of), islands, positions)


def batches(loader, n):
    out = [next(loader) for _ in range(n)]
    loader.close()
    return out


def labelled(index, label):
    """The index with every token replaced by a label of its place (document id, or position in the corpus):
    the loader moves tokens without reading them, so its rows then say where each token came from."""
    lengths = index.lengths()
    tokens = np.repeat(np.arange(len(lengths)), lengths) if label == "document" else np.arange(len(index.tokens))
    return TokenIndex(tokens, index.offsets)


@pytest.fixture(scope="module")
def index(corpus, tokenizer, tiny_cfg):
    return load_token_index(corpus, tokenizer, tiny_cfg().data.cache_dir)


def iid_slots(corpus, index, batch=16, seed=42):
    return slot_of_documents(corpus, index.lengths(), "iid", batch, 1, seed)


def test_global_batch_does_not_depend_on_the_islands(corpus, tokenizer, index):
    """The rows of step t are the same for 1, 2, 4, 8 and 16 islands, whichever processes hold which islands."""
    slot_of = iid_slots(corpus, index)
    one = np.concatenate(batches(loader_of(corpus, tokenizer, index, slot_of, [0], 1), 3))
    for R in (2, 4, 8, 16):
        halves = [batches(loader_of(corpus, tokenizer, index, slot_of, part, R), 3) for part in
                  (list(range(R // 2)), list(range(R // 2, R)))]  # two processes, half the islands each
        many = np.concatenate([np.concatenate([a, b]).reshape(1, 16, 33) for a, b in zip(*halves)])
        np.testing.assert_array_equal(many, one.reshape(3, 16, 33))


def test_a_step_mixes_the_corpus_and_steps_do_not_repeat_documents(corpus, tokenizer, index):
    docs = labelled(index, "document")
    steps = [b.reshape(16, 129) for b in batches(loader_of(corpus, tokenizer, docs, iid_slots(corpus, index), [0, 1, 2, 3],
                                                         4, seq_len=128), 40)]
    assert min(len(set(step[:, 0])) for step in steps) >= 12  # rows from at least 12 documents in every step
    shared = [len(set(a.ravel()) & set(b.ravel())) for a, b in zip(steps, steps[1:])]
    assert np.mean(shared) < 2.0, shared  # 0.7 over 200 steps; the old loader: every row continued the last step's file
    assert not any(is_val(k) for step in steps for k in step.ravel())
    reseeded = batches(loader_of(corpus, tokenizer, docs, iid_slots(corpus, index, seed=7), [0, 1, 2, 3], 4,
                                 seq_len=128, seed=7), 1)[0].reshape(16, 129)
    assert len(set(reseeded[:, 0]) & set(steps[0][:, 0])) <= 2  # data.shuffle_seed changes the order


def test_islands_read_disjoint_rows_and_documents_and_every_row_once_an_epoch(tokenizer):
    corpus = InMemory([f" doc{k} " + "token " * (k % 23) for k in range(300)])
    index = labelled(load_token_index(corpus, tokenizer, str(corpus.cache)), "position")
    slot_of = slot_of_documents(corpus, index.lengths(), "iid", 8, 4, 0)
    loader = loader_of(corpus, tokenizer, index, slot_of, [0, 1, 2, 3], 4, seq_len=7, batch=8)
    epoch = min(IndexedSlot(index, np.flatnonzero(slot_of == j), 8, 0, j).rows for j in range(8))
    steps = np.stack(batches(loader, epoch))  # (steps, island, row, token)
    owner = np.searchsorted(index.offsets, steps, side="right") - 1  # the document each token came from
    for r in range(4):
        starts = steps[:, r, :, 0].ravel()
        assert len(set(starts)) == len(starts)  # no row twice within an epoch
        others = {int(k) for q in range(4) if q != r for k in owner[:, q].ravel()}
        assert not ({int(k) for k in owner[:, r].ravel()} & others)  # nor a document on two islands
    assert set(owner.ravel()) == {k for k in range(300) if not is_val(k)}


def test_loader_resumes_exactly_from_a_small_state(corpus, tokenizer, index):
    slot_of = iid_slots(corpus, index)
    first = loader_of(corpus, tokenizer, index, slot_of, [0, 1, 2, 3], 4)
    before = [next(first) for _ in range(5)]
    state, expected = json.loads(json.dumps(first.state())), [next(first) for _ in range(3)]
    first.close()
    assert [len(p) for p in state["positions"]] == [4] * 4 and state["positions"][0] == [5] * 4
    resumed = batches(loader_of(corpus, tokenizer, index, slot_of, [0, 1, 2, 3], 4, state["positions"]), 3)
    np.testing.assert_array_equal(np.stack(resumed), np.stack(expected))
    assert before[0].shape == (4, 4, 33)


class MarkedDocs:
    """Documents whose text names their index, read in order: a streamed source."""
    name = "marked documents"

    def documents(self, start=0):
        for k in range(start, 400):
            yield k, f" doc{k} " + "x " * (k % 7)


class InMemory(MarkedDocs):
    """The same documents held in memory, like the embedded corpus."""

    def __init__(self, texts):
        self.texts, self.fingerprint = texts, f"in-memory-{len(texts)}"
        self.cache = Path(tempfile.mkdtemp())


def doc_ids(tokenizer, rows) -> list[set[int]]:
    return [{int(k) for k in re.findall(r"doc(\d+) ", tokenizer.decode(row))} for row in rows]


def test_streamed_slots_are_disjoint_shuffled_in_windows_and_resume_mid_window(tokenizer):
    source, slot_of = MarkedDocs(), streamed_slot(4, 3)
    rows = np.stack(batches(loader_of(source, tokenizer, None, slot_of, [0, 1], 2, batch=4, window=8), 40))
    rows = rows.reshape(40, 4, 33)  # (step, row of the batch = slot, token)
    seen = [set().union(*doc_ids(tokenizer, rows[:, j])) for j in range(4)]
    assert all(not (seen[i] & seen[j]) for i in range(4) for j in range(i + 1, 4))
    assert set().union(*seen) <= {k for k in range(400) if not is_val(k)}
    in_order = DocumentStream(source, tokenizer, 0, slot_of).take(8 * 33).reshape(8, 33)
    assert {tuple(r) for r in rows[:8, 0]} == {tuple(r) for r in in_order}  # a window is its packed rows ...
    assert not np.array_equal(rows[:8, 0], in_order)  # ... read in a seeded order
    loader = loader_of(source, tokenizer, None, slot_of, [0, 1], 2, batch=4, window=8)
    [next(loader) for _ in range(11)]
    state = json.loads(json.dumps(loader.state()))
    loader.close()
    assert len(state["positions"][0]) == 8  # (epoch, document, offset, rows used) per slot
    resumed = batches(loader_of(source, tokenizer, None, slot_of, [0, 1], 2, state["positions"], batch=4, window=8), 6)
    np.testing.assert_array_equal(np.stack(resumed).reshape(6, 4, 33), rows[11:17])


def test_validation_rows_fixed(corpus, tokenizer):
    v1, v2 = validation_rows(corpus, tokenizer, 32, 8), validation_rows(corpus, tokenizer, 32, 8)
    np.testing.assert_array_equal(v1, v2)
    assert v1.shape == (8, 33) and v1[0, 0] == tokenizer.bos_id
    with pytest.raises(UserError, match="eval.tokens"):
        validation_rows(corpus, tokenizer, 2048, 100_000)


@pytest.mark.parametrize("kind", ["jsonl", "txt", "parquet"])
def test_local_files_through_datasets(tmp_path, tiny_cfg, kind):
    docs = [f"document {i}: " + "word " * (i + 3) for i in range(120)]
    if kind == "jsonl":
        (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"body": d}) for d in docs))
    elif kind == "txt":
        for i, d in enumerate(docs):
            (tmp_path / f"{i:03d}.txt").write_text(d)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq
        pq.write_table(pa.table({"body": docs}), tmp_path / "d.parquet")
    cfg = tiny_cfg("data.source='files'", f"data.files='{tmp_path}/*.{kind}'", "data.text_column='body'")
    source = open_source(cfg.data)
    texts = [t for _, t in source.documents()]
    assert sorted(texts) == sorted(docs) if kind == "txt" else texts == docs
    assert [t for _, t in source.documents(start=5)] == texts[5:]


def test_files_source_errors(tmp_path, tiny_cfg):
    with pytest.raises(UserError, match="data.files"):
        open_source(tiny_cfg("data.source='files'", f"data.files='{tmp_path}/none*.jsonl'").data)
    (tmp_path / "x.jsonl").write_text(json.dumps({"body": "x"}))
    with pytest.raises(UserError, match="data.text_column='text'"):
        open_source(tiny_cfg("data.source='files'", f"data.files='{tmp_path}/x.jsonl'").data)


def test_hub_source_offline_fails_fast_with_hint(tiny_cfg):
    t0 = time.perf_counter()
    with pytest.raises(UserError) as err:
        open_source(tiny_cfg("data.source='hf'", "data.hf_name=['HuggingFaceFW/fineweb-edu', 'sample-10BT']").data)
    assert time.perf_counter() - t0 < 10
    assert "data.hf_name" in str(err.value) and "data.source=embedded" in str(err.value)
    assert "\n" not in str(err.value)


def test_bits_per_byte_hand_computed():
    """Uniform logits over 4 tokens: every target costs ln 4 nats; special tokens add nothing."""
    mesh = make_mesh(2, 4)
    token_bytes = np.array([0, 1, 2, 3], np.int32)  # id 0 is a special token

    def nats(params, x, targets):
        return token_nats(jnp.zeros((*x.shape, 4)) + 0 * params["w"], targets)

    rows = np.array([[0, 1, 2, 3, 0], [1, 3, 3, 0, 2]] * 4, np.int32)  # 8 rows of 4 targets
    with jax.set_mesh(mesh):
        step = make_eval_step(nats, token_bytes, mesh)
        params = jax.device_put({"w": jnp.zeros((2,))}, jax.sharding.NamedSharding(mesh, jax.P("replica")))
        out = evaluate(step, params, jax.device_put(split_val_rows(rows, 2, 8), val_sharding(mesh)))
    targets = rows[:, 1:].ravel()
    nbytes = token_bytes[targets].sum()  # 4 x ((2 + 3 + 0) + ... ) counted by hand below
    assert nbytes == 4 * (1 + 2 + 3 + 0 + 3 + 3 + 0 + 2)
    byte_targets = (token_bytes[targets] > 0).sum()
    assert out["val/bpb"] == pytest.approx(byte_targets * math.log(4) / (math.log(2) * nbytes), rel=1e-6)
    assert out["val/loss"] == pytest.approx(math.log(4), rel=1e-6)
    assert bits_per_byte(math.log(2) * 10, 5) == pytest.approx(2.0)


def test_topic_split_gives_islands_whole_packages(corpus, index):
    island = island_of_topic(corpus, 4)
    chars, pairs = [0] * 4, set()
    for k, (topic, _, n) in enumerate(corpus.topics()):
        if not is_val(k):
            chars[island[k]] += n
            pairs.add((topic, island[k]))
    topics = {t for t, _ in pairs}
    assert len(pairs) <= len(topics) + 3  # contiguous cuts: at most R - 1 packages straddle two islands
    assert max(chars) / min(chars) < 1.3  # balanced by characters
    found = island_topics(corpus, island, 4)
    assert ["test"] in found and any("email" in f for f in found)  # the test suite fills islands of its own
    slot_of = slot_of_documents(corpus, index.lengths(), "topic", 16, 4, 0)
    train = [k for k in range(len(corpus.texts)) if not is_val(k)]
    assert all(slot_of[k] // 4 == island[k] for k in train)  # an island's rows come from its own packages
    assert all(slot_of[k] == -1 for k in range(len(corpus.texts)) if is_val(k))
    iid = iid_slots(corpus, index)
    tokens = np.bincount(iid[train], weights=index.lengths()[train])
    assert set(iid[train]) == set(range(16)) and tokens.max() / tokens.min() < 1.05  # dealt by tokens


def test_topic_split_needs_the_embedded_corpus():
    with pytest.raises(UserError, match="island_split=topic with data.source=files"):
        load_config(NANOCHAT, ["data.source='files'", "data.files='x.txt'", "data.island_split='topic'"])
