"""Corpora as lists of (id, text) documents, and the deterministic by-document train/val split."""

from __future__ import annotations

import glob as globlib
import hashlib
import json
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from compactlm.data.config import DataError

BUILTIN_CORPORA = ("pystdlib", "pydocs")

# Directory names under the stdlib that hold tests or third-party code, not the library itself.
_STDLIB_EXCLUDED_DIRS = frozenset(
    {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
)
# pydoc_data/topics.py is the `pydocs` corpus stored as one ~0.8 MB string literal: it is prose,
# not code, and leaving it in would leak pydocs validation text into pystdlib training.
_STDLIB_EXCLUDED_FILES = frozenset({"pydoc_data/topics.py"})


@dataclass(frozen=True)
class Document:
    """One unit of the corpus; `id` is stable across runs and machines (used to split)."""

    id: str
    text: str


# --- loading -------------------------------------------------------------------------------------


def load_corpus(
    corpus: str,
    *,
    glob: str = "**/*.txt",
    jsonl_field: str = "text",
    max_corpus_bytes: int | None = None,
) -> list[Document]:
    """Documents of a built-in corpus name or a user path (file, directory, glob, .jsonl).

    Documents come sorted by id; `max_corpus_bytes` keeps the first documents in that order up
    to the cap (UTF-8 bytes), cutting the last one at a character boundary.
    """
    if corpus == "pystdlib":
        docs = _load_pystdlib()
    elif corpus == "pydocs":
        docs = _load_pydocs()
    else:
        docs = _load_user(corpus, glob=glob, jsonl_field=jsonl_field)
    docs = [d for d in docs if d.text]
    if not docs:
        raise DataError(f"corpus {corpus!r} contains no text (all documents are empty)")
    if max_corpus_bytes is not None:
        docs = _cap(docs, max_corpus_bytes)
    return docs


def _load_pystdlib() -> list[Document]:
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).as_posix()
        parts = rel.split("/")
        if _STDLIB_EXCLUDED_DIRS.intersection(parts[:-1]) or rel in _STDLIB_EXCLUDED_FILES:
            continue
        if parts[-1].startswith("test_"):
            continue
        try:
            text = path.read_bytes().decode("utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # a handful of legacy-encoded files in some distributions
        docs.append(Document(rel, text))
    return sorted(docs, key=lambda d: d.id)


def _load_pydocs() -> list[Document]:
    from pydoc_data.topics import topics

    return [Document(key, topics[key]) for key in sorted(topics)]


def _is_glob(s: str) -> bool:
    return any(c in s for c in "*?[")


def _load_user(corpus: str, *, glob: str, jsonl_field: str) -> list[Document]:
    path = Path(corpus).expanduser()
    if path.is_file():
        return _read_file(path, path.name, jsonl_field)
    if path.is_dir():
        files = sorted(p for p in path.glob(glob) if p.is_file())
        if not files:
            raise DataError(
                f"directory {str(path)!r} has no files matching data.glob={glob!r} "
                "(set data.glob, e.g. '**/*.md' or '**/*')"
            )
        return _read_files(files, path, jsonl_field)
    if _is_glob(corpus):
        base = Path(_glob_base(str(path)))
        files = sorted(
            Path(p) for p in globlib.glob(str(path), recursive=True) if Path(p).is_file()
        )
        if not files:
            raise DataError(f"glob {corpus!r} matches no files")
        return _read_files(files, base, jsonl_field)
    raise DataError(
        f"unknown corpus {corpus!r}: not a built-in corpus ({', '.join(BUILTIN_CORPORA)}) and "
        "no such file, directory or glob. Valid: 'pystdlib', 'pydocs', a text file, a directory "
        "of text files (data.glob selects them), a glob, or a .jsonl file with a "
        f"'{jsonl_field}' field per line"
    )


def _glob_base(pattern: str) -> str:
    """The longest wildcard-free leading directory of a glob (ids are relative to it)."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if _is_glob(part):
            break
        fixed.append(part)
    return str(Path(*fixed)) if fixed else "."


def _read_files(files: list[Path], base: Path, jsonl_field: str) -> list[Document]:
    docs = []
    for f in files:
        docs.extend(_read_file(f, f.relative_to(base).as_posix(), jsonl_field))
    return docs


def _read_file(path: Path, doc_id: str, jsonl_field: str) -> list[Document]:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {str(path)!r}: {e}") from e
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{str(path)!r} is not UTF-8 text ({e.reason} at byte {e.start}); "
            "convert it or narrow data.glob"
        ) from e
    if path.suffix == ".jsonl":
        return _parse_jsonl(text, path, doc_id, jsonl_field)
    return [Document(doc_id, text)]


def _parse_jsonl(text: str, path: Path, doc_id: str, field: str) -> list[Document]:
    docs = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg})") from e
        if not isinstance(record, dict) or field not in record:
            keys = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise DataError(
                f"{path}:{lineno}: no {field!r} field (found {keys}); "
                "each line must be an object with that field, or set data.jsonl_field"
            )
        value = record[field]
        if not isinstance(value, str):
            raise DataError(
                f"{path}:{lineno}: field {field!r} is {type(value).__name__}, expected a string"
            )
        docs.append(Document(f"{doc_id}:{lineno}", value))
    return docs


def _cap(docs: list[Document], max_bytes: int) -> list[Document]:
    if max_bytes <= 0:
        raise DataError(f"data.max_corpus_bytes must be positive, got {max_bytes}")
    out, used = [], 0
    for d in docs:
        raw = d.text.encode("utf-8")
        if used + len(raw) <= max_bytes:
            out.append(d)
            used += len(raw)
            continue
        cut = raw[: max_bytes - used].decode("utf-8", errors="ignore")  # char boundary
        if cut:
            out.append(Document(d.id, cut))
        break
    return out


# --- split ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """Train/validation documents plus a JSON-able record of how they were chosen."""

    train: list[Document]
    val: list[Document]
    info: dict


def doc_hash(doc_id: str, seed: int) -> int:
    """A 64-bit hash of (seed, id) that is the same on every machine and Python version."""
    digest = hashlib.sha256(f"{seed}\0{doc_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def split_corpus(docs: list[Document], *, val_fraction: float, seed: int) -> Split:
    """Hold out whole documents (files, topics, JSONL lines) for validation.

    Documents are visited in order of `doc_hash(id, seed)`, and each one that still fits is put
    in validation until validation holds `val_fraction` of the corpus' UTF-8 bytes (a greedy fill
    rather than a hash threshold: with ~700 files of very different sizes a threshold makes the
    validation size swing widely with the seed). A corpus where no document fits (one document,
    or a few big ones) falls back to a tail split: the last `val_fraction` of the text, cut at a
    line break.
    """
    if not 0.0 < val_fraction < 0.5:
        raise DataError(f"data.val_fraction must be in (0, 0.5), got {val_fraction}")
    sizes = {d.id: len(d.text.encode("utf-8")) for d in docs}
    if len(sizes) != len(docs):
        raise DataError("document ids are not unique")
    total = sum(sizes.values())
    target = val_fraction * total
    val_ids: set[str] = set()
    val_bytes = 0
    for d in sorted(docs, key=lambda d: (doc_hash(d.id, seed), d.id)):
        if val_bytes + sizes[d.id] <= target:
            val_ids.add(d.id)
            val_bytes += sizes[d.id]
    if val_ids and len(val_ids) < len(docs):
        train = [d for d in docs if d.id not in val_ids]
        val = [d for d in docs if d.id in val_ids]
        mode = "documents"
    else:
        train, val = _tail_split(docs, val_fraction)
        mode = "tail"
    return Split(train, val, _split_info(train, val, mode, val_fraction, seed))


def _tail_split(docs: list[Document], val_fraction: float) -> tuple[list[Document], list[Document]]:
    text = "".join(d.text for d in docs)
    cut = int(len(text) * (1.0 - val_fraction))
    newline = text.rfind("\n", 0, cut)
    if newline > len(text) // 2:  # prefer a line boundary when there is one nearby
        cut = newline + 1
    if cut <= 0 or cut >= len(text):
        raise DataError(f"corpus too small to split ({len(text)} characters)")
    return [Document("train", text[:cut])], [Document("val", text[cut:])]


def _split_info(
    train: list[Document], val: list[Document], mode: str, val_fraction: float, seed: int
) -> dict:
    val_ids = [d.id for d in val]
    return {
        "mode": mode,
        "val_fraction": val_fraction,
        "split_seed": seed,
        "train_docs": len(train),
        "val_docs": len(val),
        "train_bytes": sum(len(d.text.encode("utf-8")) for d in train),
        "val_bytes": sum(len(d.text.encode("utf-8")) for d in val),
        "val_ids_sha256": hashlib.sha256("\n".join(val_ids).encode()).hexdigest(),
        "val_ids": val_ids if len(val_ids) <= 100 else val_ids[:100] + ["..."],
        "python": sys.version.split()[0],  # pystdlib / pydocs content depends on it
    }


def corpus_fingerprint(docs: list[Document]) -> str:
    """sha256 over ids and contents: changes whenever any document changes."""
    h = hashlib.sha256()
    for d in docs:
        raw = d.text.encode("utf-8")
        h.update(f"{len(d.id)}:{d.id}:{len(raw)}:".encode())
        h.update(raw)
    return h.hexdigest()
