"""Text for activations: sources, the train/eval split, tokenising and packing into windows.

A text source (``--text``) is one of

- ``python-docs`` (the offline default): the reference documentation in
  ``pydoc_data.topics`` (one document per topic, sorted by topic), then the standard
  library's own ``.py`` files (one document per file, sorted by path; the ``test``,
  ``tests``, ``idle_test``, ``pydoc_data`` and ``site-packages`` folders left out);
- a local file or folder: ``.txt`` and ``.md`` files are one document each, ``.jsonl``
  files one document per line (the ``text_column`` field of its JSON object), ``.parquet``
  files one per row (column ``text_column``); a folder is read recursively in sorted
  path order, hidden entries skipped;
- ``hf:NAME[:CONFIG][:SPLIT]``: a Hugging Face dataset, streamed (split ``train`` by
  default), column ``text_column``.

Files that are not valid UTF-8 are skipped and counted (:attr:`TextSource.skipped_non_utf8`).

**Split.** A document goes to the eval split when ``u(id) < eval_fraction``, where
``u(id)`` is the first 8 bytes of ``sha256(id)`` read as a fraction of ``2**64``: the two
splits are disjoint by document whatever the window boundaries.

**Packing** (:class:`WindowStream`). The documents of one split are tokenised without
special tokens, each followed by the tokenizer's EOS token (its SEP token when it has no
EOS), and concatenated; the stream is cut into windows of ``ctx`` tokens, each starting
with the tokens the tokenizer itself puts before a text (BOS for Llama 3, ``[CLS]`` for
BERT) or, for a tokenizer that puts nothing there (GPT-2, GPT-NeoX, SmolLM2), with its
BOS token (``prepend_bos=True``, the default, as SAELens does). The first position of a
window is an attention sink: in SmolLM2 its layer-15 residual has norm about 24,000
against about 170 elsewhere. Starting windows with a special token puts the sink on a
token that is never data; without it, 1 row in ``ctx`` is a sink and dominates
``E||x||^2``. The last, incomplete window is dropped.
Windows then pass through a shuffle buffer (seeded). Special tokens (the tokenizer's
``all_special_ids``: BOS, EOS, pad ...) stay in the windows, since the model needs its
context, and :meth:`TokenizerInfo.keep_mask` tells which positions are data.
"""

from __future__ import annotations

import hashlib
import json
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aensae._validation import InputError

__all__ = [
    "SPLITS",
    "TEXT_SUFFIXES",
    "Document",
    "TextSource",
    "TokenizerInfo",
    "WindowStream",
    "check_not_empty",
    "open_text",
    "split_of",
    "tokenizer_info",
]

SPLITS: tuple[str, ...] = ("train", "eval")
TEXT_SUFFIXES: tuple[str, ...] = (".txt", ".md", ".jsonl", ".parquet")
_STDLIB_SKIP = {"test", "tests", "idle_test", "pydoc_data", "site-packages", "dist-packages",
                "__pycache__"}


@dataclass(frozen=True)
class Document:
    """One document: a stable ``id`` (the split is decided by its hash) and its text."""

    id: str
    text: str


def split_of(doc_id: str, eval_fraction: float) -> str:
    """``"eval"`` when ``sha256(doc_id)``'s first 8 bytes / 2**64 < ``eval_fraction``."""
    u = int.from_bytes(hashlib.sha256(doc_id.encode("utf-8")).digest()[:8], "big") / 2.0**64
    return "eval" if u < eval_fraction else "train"


class TextSource:
    """A text source; iterate :meth:`documents` (it can be iterated again from the start)."""

    def __init__(self, spec: str, kind: str, *, text_column: str = "text",
                 root: Path | None = None, files: list[Path] | None = None,
                 hf: tuple[str, str | None, str] | None = None) -> None:
        self.spec = spec
        self.kind = kind
        self.text_column = text_column
        self.root = root
        self.files = files or []
        self.hf = hf
        self.skipped_non_utf8 = 0

    def describe(self) -> dict[str, Any]:
        """JSON-ready description (for manifests)."""
        out: dict[str, Any] = {"source": self.spec, "kind": self.kind}
        if self.kind == "python-docs":
            out["python_version"] = sys.version.split()[0]
        if self.kind in ("local", "hf"):
            out["text_column"] = self.text_column
        return out

    def documents(self) -> Iterator[Document]:
        """The documents in their fixed order (counts non-UTF-8 files as it goes)."""
        self.skipped_non_utf8 = 0
        if self.kind == "python-docs":
            yield from self._python_docs()
        elif self.kind == "local":
            for path in self.files:
                yield from self._file_docs(path)
        else:
            yield from self._hf_docs()

    # ------------------------------------------------------------------ kinds
    def _python_docs(self) -> Iterator[Document]:
        from pydoc_data.topics import topics

        for key in sorted(topics):
            yield Document(f"pydoc_data.topics:{key}", topics[key])
        root = Path(sysconfig.get_paths()["stdlib"])
        for path in _stdlib_files(root):
            text = self._read_text(path)
            if text is not None:
                yield Document(f"stdlib:{path.relative_to(root).as_posix()}", text)

    def _read_text(self, path: Path) -> str | None:
        try:
            return path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            self.skipped_non_utf8 += 1
            return None

    def _rel(self, path: Path) -> str:
        if self.root is None or self.root == path:
            return path.name
        return path.relative_to(self.root).as_posix()

    def _file_docs(self, path: Path) -> Iterator[Document]:
        rel = self._rel(path)
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            yield from self._parquet_docs(path, rel)
            return
        text = self._read_text(path)
        if text is None:
            return
        if suffix in (".txt", ".md"):
            yield Document(rel, text)
            return
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise InputError(f"--text {self.spec}: {path}:{lineno} is not valid JSON "
                                 f"({err.msg})") from None
            if not isinstance(obj, dict) or self.text_column not in obj:
                keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
                raise InputError(f"--text-column {self.text_column}: {path}:{lineno} has no "
                                 f"such field (it has {keys})")
            value = obj[self.text_column]
            if not isinstance(value, str):
                raise InputError(f"--text-column {self.text_column}: {path}:{lineno} holds a "
                                 f"{type(value).__name__}, expected a string")
            yield Document(f"{rel}:{lineno}", value)

    def _parquet_docs(self, path: Path, rel: str) -> Iterator[Document]:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        if self.text_column not in names:
            raise InputError(f"--text-column {self.text_column}: {path} has no such column "
                             f"(columns: {', '.join(names)})")
        row = 0
        for batch in pf.iter_batches(columns=[self.text_column], batch_size=1024):
            for value in batch.column(0).to_pylist():
                if isinstance(value, str):
                    yield Document(f"{rel}:{row}", value)
                row += 1

    def _hf_docs(self) -> Iterator[Document]:
        assert self.hf is not None
        name, config, split = self.hf
        try:
            import datasets
        except ImportError:
            from aensae.llm import EXTRA_HINT

            raise InputError(f"--text {self.spec}: Hugging Face datasets need the datasets "
                             f"package ({EXTRA_HINT})") from None
        try:
            ds = datasets.load_dataset(name, config, split=split, streaming=True)
        except Exception as err:  # noqa: BLE001 - any failure to open is the user's source
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise InputError(f"--text {self.spec}: cannot open the dataset: {first}") from None
        for i, row in enumerate(ds):
            if self.text_column not in row:
                raise InputError(f"--text-column {self.text_column}: dataset {name} has no "
                                 f"such column (columns: {', '.join(sorted(row))})")
            value = row[self.text_column]
            if isinstance(value, str):
                doc_id = row.get("id", i)
                yield Document(f"{name}:{config or ''}:{split}:{doc_id}", value)


def _stdlib_files(root: Path) -> list[Path]:
    out = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).parts
        if any(part in _STDLIB_SKIP or part.startswith(".") for part in rel[:-1]):
            continue
        out.append(path)
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


def open_text(spec: str, *, text_column: str = "text") -> TextSource:
    """Parse ``--text`` into a :class:`TextSource`; check that a local path holds text files.

    Raises :class:`InputError` for a path that does not exist, a file of another kind or
    a folder without ``.txt`` / ``.md`` / ``.jsonl`` / ``.parquet`` files.
    """
    if not isinstance(spec, str) or not spec:
        raise InputError(f"--text must be python-docs, hf:NAME[:CONFIG][:SPLIT] or a local "
                         f"file or folder; got {spec!r}")
    if spec == "python-docs":
        return TextSource(spec, "python-docs")
    if spec.startswith("hf:"):
        parts = spec[3:].split(":")
        if not parts[0] or len(parts) > 3:
            raise InputError(f"--text {spec}: expected hf:NAME[:CONFIG][:SPLIT]")
        config = parts[1] if len(parts) > 1 and parts[1] else None
        split = parts[2] if len(parts) > 2 and parts[2] else "train"
        return TextSource(spec, "hf", text_column=text_column, hf=(parts[0], config, split))
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix.lower() not in TEXT_SUFFIXES:
            raise InputError(f"--text {spec}: a text file must end in "
                             f"{', '.join(TEXT_SUFFIXES)}")
        return TextSource(spec, "local", text_column=text_column, root=path.parent,
                          files=[path])
    if path.is_dir():
        files = sorted((p for p in path.rglob("*") if p.is_file()
                        and p.suffix.lower() in TEXT_SUFFIXES
                        and not any(s.startswith(".") for s in p.relative_to(path).parts)),
                       key=lambda p: p.relative_to(path).as_posix())
        if not files:
            raise InputError(f"--text {spec}: the folder holds no {', '.join(TEXT_SUFFIXES)} "
                             "files")
        return TextSource(spec, "local", text_column=text_column, root=path, files=files)
    raise InputError(f"--text {spec}: not python-docs, not hf:NAME[:CONFIG][:SPLIT], and no "
                     "such file or folder")


def check_not_empty(source: TextSource, split: str, eval_fraction: float) -> None:
    """Raise :class:`InputError` naming ``source`` when ``split`` has no non-empty document.

    Stops at the first document of the split that holds text, so it is cheap.
    """
    for doc in source.documents():
        if doc.text.strip() and split_of(doc.id, eval_fraction) == split:
            return
    skipped = (f"; {source.skipped_non_utf8} non-UTF-8 file(s) skipped"
               if source.skipped_non_utf8 else "")
    raise InputError(f"--text {source.spec}: no text in the {split} split (eval_fraction "
                     f"{eval_fraction:g}){skipped}")


# ----------------------------------------------------------------------------- tokens
@dataclass(frozen=True)
class TokenizerInfo:
    """How a tokenizer frames text: what it puts before a text, the document separator,
    and which ids are special tokens."""

    prefix: tuple[int, ...]
    separator: int | None
    special_ids: tuple[int, ...]

    def keep_mask(self, ids: np.ndarray, keep_special: bool = False) -> np.ndarray:
        """Boolean mask of the positions that are data (not special tokens)."""
        if keep_special or not self.special_ids:
            return np.ones(ids.shape, dtype=bool)
        return ~np.isin(ids, np.asarray(self.special_ids, dtype=ids.dtype))

    def describe(self) -> dict[str, Any]:
        return {"prefix": list(self.prefix), "separator": self.separator,
                "special_ids": list(self.special_ids)}


def tokenizer_info(tokenizer: Any, prepend_bos: bool = True) -> TokenizerInfo:
    """Read a transformers tokenizer's framing: prefix, separator, special ids.

    The prefix is what the tokenizer puts before a text; when that is nothing and
    ``prepend_bos`` is set, the tokenizer's BOS token (if it has one).
    """
    probe = "hello world"
    with_special = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    bare = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    prefix: tuple[int, ...] = ()
    for i in range(len(with_special) - len(bare) + 1):
        if with_special[i:i + len(bare)] == bare:
            prefix = tuple(with_special[:i])
            break
    if not prefix and prepend_bos and tokenizer.bos_token_id is not None:
        prefix = (int(tokenizer.bos_token_id),)
    sep = tokenizer.eos_token_id
    if sep is None:
        sep = getattr(tokenizer, "sep_token_id", None)
    special = tuple(sorted({int(i) for i in tokenizer.all_special_ids}))
    return TokenizerInfo(prefix, None if sep is None else int(sep), special)


class WindowStream:
    """The windows (``ctx`` token ids each, int32) of one split of a source, shuffled.

    Iterating is deterministic for a given source, tokenizer, ``ctx``, split,
    ``eval_fraction``, ``buffer`` and ``seed``. While it runs, :attr:`documents`,
    :attr:`windows` and :meth:`text_sha256` (a running SHA-256 of the ids and texts of the
    documents read so far) describe how far it got.

    Shuffle buffer: the first ``buffer`` windows fill it; then each new window replaces
    a uniformly drawn one, which is yielded; at the end the rest come out in a random
    order. ``buffer=1`` keeps the text order.
    """

    def __init__(self, source: TextSource, tokenizer: Any, ctx: int, *, split: str = "train",
                 eval_fraction: float = 0.05, buffer: int = 1024, seed: int = 0,
                 prepend_bos: bool = True, chunk_docs: int = 32) -> None:
        self.source = source
        self.tokenizer = tokenizer
        self.info = tokenizer_info(tokenizer, prepend_bos)
        if ctx <= len(self.info.prefix):
            raise InputError(f"--ctx must exceed the {len(self.info.prefix)} token(s) the "
                             f"tokenizer puts before a text; got {ctx}")
        self.ctx = ctx
        self.split = split
        self.eval_fraction = eval_fraction
        self.buffer = max(1, buffer)
        self.seed = seed
        self.chunk_docs = chunk_docs
        self.documents = 0
        self.windows = 0
        self._sha = hashlib.sha256()

    def text_sha256(self) -> str:
        """SHA-256 of the documents read so far (ids and texts, in order)."""
        return self._sha.hexdigest()

    def _docs(self) -> Iterator[Document]:
        for doc in self.source.documents():
            if doc.text and split_of(doc.id, self.eval_fraction) == self.split:
                yield doc

    def _token_chunks(self) -> Iterator[list[int]]:
        batch: list[Document] = []

        def encode(docs: list[Document]) -> Iterator[list[int]]:
            # One document per call: a batch call would start the fast tokenizer's thread
            # pool, whose threads keep spinning into the forward pass that follows and
            # take cores from torch's threads.
            enc = [self.tokenizer(d.text, add_special_tokens=False, verbose=False)["input_ids"]
                   for d in docs]
            for d, ids in zip(docs, enc, strict=True):
                self._sha.update(d.id.encode("utf-8") + b"\0" + d.text.encode("utf-8") + b"\0")
                self.documents += 1
                yield list(ids) + ([] if self.info.separator is None else [self.info.separator])

        for doc in self._docs():
            batch.append(doc)
            if len(batch) == self.chunk_docs:
                yield from encode(batch)
                batch = []
        if batch:
            yield from encode(batch)

    def _ordered(self) -> Iterator[np.ndarray]:
        prefix = np.asarray(self.info.prefix, dtype=np.int32)
        body = self.ctx - len(prefix)
        pending = np.empty(0, dtype=np.int32)
        for ids in self._token_chunks():
            pending = np.concatenate([pending, np.asarray(ids, dtype=np.int32)])
            n_full = len(pending) // body
            for i in range(n_full):
                yield np.concatenate([prefix, pending[i * body:(i + 1) * body]])
            pending = pending[n_full * body:]

    def __iter__(self) -> Iterator[np.ndarray]:
        rng = np.random.default_rng(self.seed)
        buf: list[np.ndarray] = []
        for window in self._ordered():
            if len(buf) < self.buffer:
                buf.append(window)
                continue
            j = int(rng.integers(len(buf)))
            out, buf[j] = buf[j], window
            self.windows += 1
            yield out
        for j in rng.permutation(len(buf)):
            self.windows += 1
            yield buf[j]
