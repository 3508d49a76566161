"""Document sources: the embedded corpus (this Python's stdlib sources), Hugging Face datasets, local files.

A source yields (raw index, text) from a start index, deterministically. Every VAL_MOD-th document is
held out for validation, the same rule for every source, so a stream needs no second pass to split.
"""
import codecs
import functools
import glob
import hashlib
import json
import os
import socket
import sys
import sysconfig
from pathlib import Path
from typing import Iterator

from jaximus import UserError, first_line

VAL_MOD = 50  # document k is validation iff k % VAL_MOD == VAL_MOD - 1 (2% held out)


def is_val(k: int) -> bool:
    return k % VAL_MOD == VAL_MOD - 1


def train_rank(k: int) -> int:
    """Index of raw document k among the training documents."""
    return k - (k + 1) // VAL_MOD


class EmbeddedCorpus:
    """Every .py file of the running Python's standard library, in a fixed hash order."""

    def __init__(self):
        root = Path(sysconfig.get_paths()["stdlib"])
        files = []
        for folder, subfolders, names in os.walk(root):  # pruned: rglob walked site-packages too, 0.57 s vs 0.02 s
            subfolders[:] = [d for d in subfolders if d != "site-packages"]
            files += [p for p in (Path(folder) / n for n in names if n.endswith(".py")) if p.is_file()]
        keyed = sorted((hashlib.sha1(str(p.relative_to(root)).encode()).hexdigest(), p) for p in files)
        self.texts = [p.read_text(encoding="utf-8", errors="replace") for _, p in keyed]
        self.paths = [str(p.relative_to(root)) for _, p in keyed]
        digest = hashlib.sha256(f"python-{sys.version_info[:3]}".encode())
        for text in self.texts:
            digest.update(hashlib.sha1(text.encode()).digest())
        self.fingerprint = "stdlib-" + digest.hexdigest()[:16]
        self.name = f"embedded stdlib corpus ({len(self.texts)} documents, {root})"

    def documents(self, start: int = 0) -> Iterator[tuple[int, str]]:
        for k in range(start, len(self.texts)):
            yield k, self.texts[k]

    def topics(self) -> list[tuple[str, str, int]]:
        """(topic, path, characters) per document: a topic is a stdlib package (`email`, `test`) or, for a
        top-level module, the standard library's own top level."""
        return [(Path(p).parts[0] if len(Path(p).parts) > 1 else "", p, len(t)) for p, t in zip(self.paths, self.texts)]


@functools.cache
def embedded_corpus() -> EmbeddedCorpus:
    """One read of the standard library per process: sweeps run inline and tests build many runs."""
    return EmbeddedCorpus()


class DatasetsSource:
    """A Hugging Face `datasets` stream (hub or local files) read through its text column."""

    def __init__(self, builder: str, name: str | None, data_files, text_column: str, description: str):
        import datasets

        datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its errors reach the user as our one line
        kwargs = {"data_files": data_files} if data_files else {}
        if builder == "text":
            kwargs["sample_by"] = "document"
        self.dataset = datasets.load_dataset(builder, name, split="train", streaming=True, **kwargs)
        self.text_column = text_column
        self.name = description
        self.fingerprint = hashlib.sha256(repr((builder, name, data_files, text_column)).encode()).hexdigest()[:16]
        first = next(iter(self.dataset), None)  # jsonl/parquet decode errors surface here, named by _files_source
        if first is None:
            raise UserError(f"{description}: no documents")
        if text_column not in first:
            raise UserError(f"data.text_column={text_column!r}: not among the columns {sorted(first)} of {description}")

    def documents(self, start: int = 0) -> Iterator[tuple[int, str]]:
        rows = iter(self.dataset.skip(start) if start else self.dataset)
        k = start
        while True:
            try:
                row = next(rows, None)
            except Exception as e:  # a file damaged past its first document
                raise UserError(f"{self.name}: unreadable after document {k} ({first_line(e)}); check the files") from None
            if row is None:
                return
            yield k, row[self.text_column]
            k += 1


def _hub_reachable(timeout: float = 3.0) -> bool:
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _files_source(patterns, text_column: str) -> DatasetsSource:
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    files = sorted(f for p in patterns for f in glob.glob(os.path.expanduser(p)))
    if not files:
        raise UserError(f"data.files={patterns}: no file matches; give existing parquet/jsonl/txt paths")
    suffixes = {Path(f).suffix for f in files}
    builders = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".txt": "text"}
    if len(suffixes) != 1 or next(iter(suffixes)) not in builders:
        raise UserError(f"data.files: {sorted(suffixes)}: use one kind of .parquet, .jsonl or .txt file")
    builder = builders[suffixes.pop()]
    column = "text" if builder == "text" else text_column
    for f in files:
        _check_file(Path(f), builder)
    try:
        return DatasetsSource(builder, None, files, column, f"local {builder} files ({len(files)})")
    except UserError:
        raise
    except Exception as e:  # datasets' own decoders: pyarrow, pandas, utf-8
        raise UserError(f"data.files={patterns}: unreadable as {builder} ({first_line(e)}); check the files") from None


def _check_file(path: Path, builder: str) -> None:
    """A damaged local file is named before datasets meets it mid-stream: empty, not UTF-8, or not JSON."""
    if path.is_dir() or path.stat().st_size == 0:
        raise UserError(f"data.files: {path} is empty; remove it or point data.files elsewhere")
    if builder == "parquet":
        import pyarrow.parquet as pq

        try:
            pq.ParquetFile(path).metadata
        except Exception as e:
            raise UserError(f"data.files: {path} is not a readable parquet file ({first_line(e)})") from None
        return
    with open(path, "rb") as f:
        head = f.read(1 << 20)
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)  # a cut multibyte char is fine
    except UnicodeDecodeError as e:
        raise UserError(f"data.files: {path} is not UTF-8 text (byte {e.start}); is it a binary file?") from None
    if builder == "json":
        line = next((row for row in text.splitlines() if row.strip()), "")
        try:
            if not isinstance(json.loads(line), dict):
                raise ValueError("a line is not a JSON object")
        except ValueError as e:
            raise UserError(f"data.files: {path}: the first line is not a JSON object ({first_line(e)}); "
                            "a .jsonl file holds one object per line") from None


def _hub_source(hf_name, text_column: str) -> DatasetsSource:
    path, name = (list(hf_name) + [None])[:2] if not isinstance(hf_name, str) else (hf_name, None)
    hint = "use data.source=embedded, or data.source=files with data.files=<local parquet/jsonl/txt>"
    if not os.environ.get("HF_HUB_OFFLINE") and not _hub_reachable():
        os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"  # cached copies still load
    try:
        return DatasetsSource(path, name, None, text_column, f"Hugging Face dataset {path}/{name}")
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"data.hf_name={[path, name]}: cannot load ({first_line(e)}); {hint}") from None


def open_source(data_cfg):
    """The configured source, checked to yield documents before anything is written."""
    kind = data_cfg.source
    if kind == "embedded":
        return embedded_corpus()
    if kind == "hf":
        if not data_cfg.hf_name:
            raise UserError("data.source=hf needs data.hf_name=[path, name], e.g. ['HuggingFaceFW/fineweb-edu', 'sample-10BT']")
        return _hub_source(data_cfg.hf_name, data_cfg.text_column)
    if kind == "files":
        if not data_cfg.files:
            raise UserError("data.source=files needs data.files=<path or glob, or a list of them>")
        return _files_source(data_cfg.files, data_cfg.text_column)
    raise UserError(f"data.source={kind!r}: choose embedded, hf or files")
