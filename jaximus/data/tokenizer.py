"""Byte-level BPE (Hugging Face `tokenizers`), trained on the training split and cached by fingerprint.

nanochat trains its own GPT-4-style BPE too; we use the same split pattern. token_bytes holds each
id's raw byte length (0 for special tokens), the bits-per-byte denominator.
"""
import hashlib
import os
from pathlib import Path

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from jaximus import UserError, first_line
from jaximus.data.sources import is_val

SPECIAL_TOKENS = ["<|bos|>"]  # base pretraining uses only BOS (nanochat's chat tokens are not needed)
# a pretrained tokenizer's document separator: ours, Llama 3's, Llama 2 / Mistral's, GPT-2 / Qwen2's
BOS_TOKENS = ("<|bos|>", "<|begin_of_text|>", "<s>", "<|endoftext|>")
# GPT-4's split pattern with \p{N}{1,2} instead of {1,3} (nanochat@3a5e0bc tokenizer.py)
SPLIT_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
                 r"""|\s*[\r\n]|\s+(?!\S)|\s+""")
DOC_CHAR_CAP = 10_000  # nanochat caps each document at 10k chars when training the tokenizer


def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: the ByteLevel alphabet back to raw bytes."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


class BPETokenizer:
    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.bos_id = next((i for i in map(tokenizer.token_to_id, BOS_TOKENS) if i is not None), None)
        if self.bos_id is None:
            raise UserError(f"tokenizer: none of {', '.join(BOS_TOKENS)} is a token; data.tokenizer_path must define one "
                            "to separate documents")
        self.vocab_size = tokenizer.get_vocab_size()
        decoder = _byte_decoder()
        special = {i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special} | {self.bos_id}
        self.token_bytes = np.zeros(self.vocab_size, np.int32)
        for token, i in tokenizer.get_vocab().items():
            if i not in special:
                self.token_bytes[i] = sum(1 for ch in token if ch in decoder)  # raw bytes, not re-encoded

    def encode_documents(self, texts: list[str]) -> list[np.ndarray]:
        """One int32 array per document, BOS first."""
        return [np.asarray([self.bos_id] + e.ids, np.int32) for e in self.tokenizer.encode_batch(texts)]

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids))


def _train(texts, vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def load_tokenizer(source, data_cfg, vocab_size: int) -> BPETokenizer:
    """A saved tokenizer.json, or BPE trained on the source's training split (cached)."""
    minimum = 256 + len(SPECIAL_TOKENS)
    if vocab_size < minimum:
        raise UserError(f"model.vocab_size={vocab_size}: a byte-level BPE needs at least {minimum} ids "
                        f"(256 bytes + {len(SPECIAL_TOKENS)} special tokens); raise model.vocab_size")
    if data_cfg.tokenizer_path:
        path = Path(data_cfg.tokenizer_path)
        if not path.is_file():
            raise UserError(f"data.tokenizer_path={path}: no such file; give a saved tokenizer.json or unset it")
        try:
            tok = BPETokenizer(Tokenizer.from_file(str(path)))
        except Exception as e:  # the tokenizers library raises a bare Exception on a damaged file
            raise UserError(f"data.tokenizer_path={path}: not a readable tokenizer.json ({first_line(e)}); give one "
                            "saved by the tokenizers library, or unset it to train one") from None
        if tok.vocab_size > vocab_size:
            raise UserError(f"data.tokenizer_path: {tok.vocab_size} tokens do not fit model.vocab_size={vocab_size}")
        return tok
    chars = data_cfg.tokenizer_train_chars
    key = hashlib.sha256(f"{source.fingerprint}|{vocab_size}|{chars}|{SPLIT_PATTERN}".encode()).hexdigest()[:16]
    path = Path(data_cfg.cache_dir) / "tokenizers" / f"bpe-{vocab_size}-{key}.json"
    if path.is_file():
        try:
            return BPETokenizer(Tokenizer.from_file(str(path)))
        except Exception:  # a damaged cache entry is trained again
            path.unlink()
    tok = _train(_training_texts(source, chars), vocab_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tok.save(str(tmp))
    os.replace(tmp, path)  # atomic: a concurrent or killed run never sees half a file
    return BPETokenizer(tok)


def _training_texts(source, max_chars: int):
    total = 0
    for k, text in source.documents():
        if is_val(k):
            continue
        text = text[:DOC_CHAR_CAP]
        yield text
        total += len(text)
        if total >= max_chars:
            return
