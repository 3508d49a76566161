"""An in-memory source tokenized once, every document BOS-first, cached on disk by corpus and tokenizer.

The embedded corpus (31M characters, 15M tokens at vocab 512) encodes in about 15 s on 2 cores; the
cache is read back in milliseconds, so runs and sweeps after the first start at once. Holding every
document's tokens is what lets the loader permute a whole epoch's rows (jaximus/data/loader.py).
"""
import hashlib
import os
from pathlib import Path

import numpy as np

from jaximus.data.loader import ENCODE_CHUNK


class TokenIndex:
    """Every document's tokens, concatenated in raw document order: document k is tokens[offsets[k]:offsets[k + 1]]."""

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray):
        self.tokens, self.offsets = tokens, offsets

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def document(self, k: int) -> np.ndarray:
        return self.tokens[self.offsets[k]:self.offsets[k + 1]]


def token_index_path(source, tokenizer, cache_dir: str) -> Path:
    key = hashlib.sha256(f"{source.fingerprint}|{tokenizer.tokenizer.to_str()}".encode()).hexdigest()[:16]
    return Path(cache_dir) / "tokens" / f"{source.fingerprint}-{key}.npz"


def load_token_index(source, tokenizer, cache_dir: str, say=print) -> TokenIndex:
    """The cached index, or every document encoded now and cached (atomically: a killed run leaves no half file)."""
    path = token_index_path(source, tokenizer, cache_dir)
    if path.is_file():
        with np.load(path) as saved:
            return TokenIndex(saved["tokens"], saved["offsets"])
    say(f"jaximus: tokenizing {len(source.texts):,} documents once (cached in {path.parent})")
    dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32
    parts = [np.asarray(ids, dtype) for start in range(0, len(source.texts), ENCODE_CHUNK)
             for ids in tokenizer.encode_documents(source.texts[start:start + ENCODE_CHUNK])]
    index = TokenIndex(np.concatenate(parts), np.concatenate([[0], np.cumsum([len(p) for p in parts])]))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        np.savez(f, tokens=index.tokens, offsets=index.offsets)
    os.replace(tmp, path)
    return index
