"""Sources, tokenizer, loader: determinism, disjoint islands, resume, local files, offline hub, bpb."""
import json
import math
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import NANOCHAT

from jaximus import UserError
from jaximus.build import load_config
from jaximus.data.loader import IslandStream, TrainLoader, validation_rows
from jaximus.data.sources import EmbeddedCorpus, is_val, open_source, train_rank
from jaximus.data.split import island_owner, island_topics
from jaximus.data.tokenizer import load_tokenizer
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


def test_loader_deterministic_disjoint_and_resumable(corpus, tokenizer):
    a = TrainLoader(corpus, tokenizer, 32, 2, [0, 1, 2, 3], 4)
    b = TrainLoader(corpus, tokenizer, 32, 2, [0, 1, 2, 3], 4)
    batches = [next(a) for _ in range(3)]
    for batch in batches:
        np.testing.assert_array_equal(batch, next(b))
    state = a.state()
    expected = next(a)
    resumed = TrainLoader(corpus, tokenizer, 32, 2, [0, 1, 2, 3], 4, state=json.loads(json.dumps(state)))
    np.testing.assert_array_equal(next(resumed), expected)
    assert batches[0].shape == (4, 2, 33)
    assert batches[0].shape == (4, 2, 33)
    for loader in (a, b, resumed):
        loader.close()


class MarkedDocs:
    """Documents whose text names their index, so decoded tokens say which document they came from."""
    name = "marked documents"

    def documents(self, start=0):
        for k in range(start, 400):
            yield k, f" doc{k} "


def test_islands_read_disjoint_training_documents(tokenizer):
    source, seen = MarkedDocs(), []
    for island in range(4):
        stream = IslandStream(source, tokenizer, island, 4)
        text = tokenizer.decode(stream.take(2000))
        seen.append({int(k) for k in re.findall(r"doc(\d+) ", text)})
    assert all(not (seen[i] & seen[j]) for i in range(4) for j in range(i + 1, 4))
    union = set().union(*seen)
    assert union == {k for k in range(400) if not is_val(k)}  # every training document, no validation one
    assert all(abs(len(s) - len(union) / 4) <= 1 for s in seen)


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


def test_topic_split_gives_islands_whole_packages(corpus):
    owner = island_owner(corpus, "topic", 4)
    chars, pairs = [0] * 4, set()
    for k, (topic, _, n) in enumerate(corpus.topics()):
        if not is_val(k):
            chars[owner(k)] += n
            pairs.add((topic, owner(k)))
    topics = {t for t, _ in pairs}
    assert len(pairs) <= len(topics) + 3  # contiguous cuts: at most R - 1 packages straddle two islands
    assert max(chars) / min(chars) < 1.3  # balanced by characters
    found = island_topics(corpus, owner, 4)
    assert ["test"] in found and any("email" in f for f in found)  # the test suite fills islands of its own
    iid = island_owner(corpus, "iid", 4)
    assert {iid(k) for k in range(200) if not is_val(k)} == {0, 1, 2, 3}


def test_topic_split_needs_the_embedded_corpus():
    with pytest.raises(UserError, match="island_split=topic with data.source=files"):
        load_config(NANOCHAT, ["data.source='files'", "data.files='x.txt'", "data.island_split='topic'"])
