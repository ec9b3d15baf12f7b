# ruff: noqa: F722  (jaxtyping shape strings are not forward references)
"""The tokenized-corpus cache and batches that are pure functions of (seed, step)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from jaxtyping import Bool, Int32, Integer

from compactlm.data.config import DataConfig, DataError, padded_vocab_size  # noqa: F401
from compactlm.data.corpus import Document, corpus_fingerprint, load_corpus, split_corpus
from compactlm.data.tokenizer import (
    TOKENIZER_FILE,
    BpeTokenizer,
    ByteTokenizer,
    atomic_write_text,
    chmod_as_umask,
    load_tokenizer,
    make_tokenizer,
)

# Bump when the on-disk token layout changes, so old caches are never read as new ones.
CACHE_VERSION = 1


def configured_vocab_size(cfg: DataConfig) -> int | None:
    """Ids (incl. specials) of the tokenizer `cfg` names, known without building it; None for
    "hf" (an imported tokenizer: only its run directory knows)."""
    return {"byte": ByteTokenizer.vocab_size, "bpe": cfg.bpe_vocab_size}.get(cfg.tokenizer)


def resolve_cache_dir(cfg: DataConfig) -> Path:
    """cfg.cache_dir, else $COMPACTLM_CACHE, else ~/.cache/compactlm."""
    raw = cfg.cache_dir or os.environ.get("COMPACTLM_CACHE") or "~/.cache/compactlm"
    return Path(raw).expanduser()


@dataclass(frozen=True)
class Data:
    """A tokenized corpus ready for training and evaluation."""

    # 1-D uint16 (uint32 if vocab > 65536) read-only memmaps. Layout: <eos> doc <eos> doc ... <eos>
    # so every document token, and every document end, is a prediction target.
    train_tokens: np.ndarray = field(repr=False)
    val_tokens: np.ndarray = field(repr=False)
    tokenizer: ByteTokenizer | BpeTokenizer
    train_bytes: int  # UTF-8 bytes of the training text
    val_bytes: int  # UTF-8 bytes of the validation text: bits/byte = nats / ln 2 / val_bytes
    # The validation documents concatenated (compression baselines use it).
    val_text: str = field(repr=False)
    # JSON-able record of the split (corpus hash, validation ids, byte counts) for run metadata.
    split: dict = field(repr=False)
    cache_key: str  # sha256 naming the token cache directory
    cache_hit: bool  # True when the tokens were read from the cache, not tokenized now

    def info(self) -> dict:
        """JSON-able summary for config.json / metadata: split, tokenizer, token counts, cache."""
        return {
            **self.split,
            "train_bytes": self.train_bytes,  # of the tokens trained on (data.train_fraction)
            "tokenizer": self.tokenizer.kind,
            "vocab_size": self.tokenizer.vocab_size,
            "tokenizer_sha256": self.tokenizer.fingerprint(),
            "train_tokens": int(self.train_tokens.size),
            "val_tokens": int(self.val_tokens.size),
            "cache_key": self.cache_key,
        }


def prepare_data(cfg: DataConfig, run_dir: str | os.PathLike | None = None) -> Data:
    """Load and split the corpus, get the tokenizer, and tokenize once into a cached memmap.

    With `run_dir`, a tokenizer already saved there is loaded (resumed and evaluated runs use the
    exact tokenizer they trained with); otherwise the new one is saved there.
    """
    docs = load_corpus(
        cfg.corpus,
        glob=cfg.glob,
        jsonl_field=cfg.jsonl_field,
        max_corpus_bytes=cfg.max_corpus_bytes,
    )
    corpus_sha = corpus_fingerprint(docs)
    split = split_corpus(docs, val_fraction=cfg.val_fraction, seed=cfg.split_seed)
    split_info = {"corpus": cfg.corpus, "corpus_sha256": corpus_sha, **split.info}
    cache = resolve_cache_dir(cfg)

    tokenizer = _get_tokenizer(cfg, split.train, corpus_sha, cache, run_dir)
    key = _sha256_json(
        {
            "version": CACHE_VERSION,
            "corpus_sha256": corpus_sha,
            "val_fraction": cfg.val_fraction,
            "split_seed": cfg.split_seed,
            "tokenizer_sha256": tokenizer.fingerprint(),
        }
    )
    token_dir = cache / "tokens" / key
    hit = (token_dir / "meta.json").is_file()
    if not hit:
        _write_token_cache(token_dir, tokenizer, split.train, split.val, split_info)
    val_text = "".join(d.text for d in split.val)
    train_tokens = np.load(token_dir / "train.npy", mmap_mode="r")
    train_bytes = split.info["train_bytes"]
    if cfg.train_fraction < 1.0:  # the cache holds the whole split; the run reads its prefix
        kept = max(int(train_tokens.size * cfg.train_fraction), 2)
        train_bytes = round(train_bytes * kept / train_tokens.size)
        train_tokens = train_tokens[:kept]
    return Data(
        train_tokens=train_tokens,
        val_tokens=np.load(token_dir / "val.npy", mmap_mode="r"),
        tokenizer=tokenizer,
        train_bytes=train_bytes,
        val_bytes=split.info["val_bytes"],
        val_text=val_text,
        split=split_info,
        cache_key=key,
        cache_hit=hit,
    )


def _sha256_json(obj: dict) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _get_tokenizer(
    cfg: DataConfig,
    train: list[Document],
    corpus_sha: str,
    cache: Path,
    run_dir: str | os.PathLike | None,
) -> ByteTokenizer | BpeTokenizer:
    if run_dir is not None and (Path(run_dir) / TOKENIZER_FILE).is_file():
        tok = load_tokenizer(run_dir)
        expected = configured_vocab_size(cfg) or tok.vocab_size  # "hf": the import's own
        if tok.kind != cfg.tokenizer or tok.vocab_size != expected:
            raise DataError(
                f"run directory {str(run_dir)!r} holds a {tok.kind} tokenizer with vocab "
                f"{tok.vocab_size}, but data.tokenizer={cfg.tokenizer!r} (vocab {expected}); "
                "use the run's own config or a new run directory"
            )
        return tok
    if cfg.tokenizer == "bpe":
        # Training takes seconds on pystdlib; keyed by what it is trained on so runs share it.
        import tokenizers

        key = _sha256_json(
            {
                "corpus_sha256": corpus_sha,
                "val_fraction": cfg.val_fraction,
                "split_seed": cfg.split_seed,
                "vocab_size": cfg.bpe_vocab_size,
                "tokenizers": tokenizers.__version__,
            }
        )
        tok_dir = cache / "tokenizers" / key
        if (tok_dir / TOKENIZER_FILE).is_file():
            tok = load_tokenizer(tok_dir)
        else:
            tok = make_tokenizer(cfg, [d.text for d in train])
            tok.save(tok_dir)
    else:
        tok = make_tokenizer(cfg, [])
    if run_dir is not None:
        tok.save(run_dir)
    return tok


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits (half the memory and disk of int32), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 65536 else np.uint32)


def tokenize_documents(tokenizer: ByteTokenizer | BpeTokenizer, docs: list[Document]) -> np.ndarray:
    """<eos> doc_0 <eos> doc_1 <eos> ... doc_n <eos> as one 1-D array of token_dtype."""
    pieces = tokenizer.encode_batch([d.text for d in docs])
    out = np.empty(1 + sum(p.size + 1 for p in pieces), token_dtype(tokenizer.vocab_size))
    out[0] = tokenizer.eos_id
    pos = 1
    for p in pieces:
        out[pos : pos + p.size] = p
        out[pos + p.size] = tokenizer.eos_id
        pos += p.size + 1
    return out


def _write_token_cache(
    token_dir: Path,
    tokenizer: ByteTokenizer | BpeTokenizer,
    train: list[Document],
    val: list[Document],
    split_info: dict,
) -> None:
    # Build the whole entry in a temporary sibling directory, then rename it into place: a crash
    # leaves only a stray temp directory, never a half-written cache that a later run would read.
    token_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=token_dir.parent, prefix=f".{token_dir.name}."))
    chmod_as_umask(tmp)  # mkdtemp's 0700 would make a shared cache private to its first user
    try:
        train_ids = tokenize_documents(tokenizer, train)
        val_ids = tokenize_documents(tokenizer, val)
        np.save(tmp / "train.npy", train_ids)
        np.save(tmp / "val.npy", val_ids)
        meta = {**split_info, "train_tokens": int(train_ids.size), "val_tokens": int(val_ids.size)}
        atomic_write_text(tmp / "meta.json", json.dumps(meta, indent=1))
        try:
            os.replace(tmp, token_dir)
        except OSError:
            # Another process finished the same entry first (the target is a non-empty dir);
            # its content is identical by construction.
            if not (token_dir / "meta.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# --- batches -------------------------------------------------------------------------------------

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer (Steele et al. 2014): a bijective, well-mixed 64-bit hash."""
    with np.errstate(over="ignore"):
        x = x + _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * _MIX1
        x = (x ^ (x >> np.uint64(27))) * _MIX2
        return x ^ (x >> np.uint64(31))


def batch_offsets(
    n_tokens: int, *, seed: int, step: int, batch_size: int, seq_len: int, row_start: int = 0
) -> np.ndarray:
    """Start positions of the windows of get_batch: hash(seed, step, row) mod #starts."""
    n_starts = n_tokens - seq_len  # a window is seq_len + 1 tokens
    if n_starts < 1:
        raise DataError(
            f"{n_tokens} tokens are too few for seq_len={seq_len} (need at least {seq_len + 1}); "
            "use a bigger corpus or a shorter sequence"
        )
    mask = (1 << 64) - 1  # int(): accept numpy / jax integer scalars; & mask: negative seeds
    key = _splitmix64(np.array([int(seed) & mask], np.uint64))
    key = _splitmix64(key ^ np.uint64(int(step) & mask))
    rows = np.arange(int(row_start), int(row_start) + batch_size, dtype=np.uint64)
    # Modulo bias is n_starts / 2**64 < 1e-12 for any corpus that fits on disk.
    return (_splitmix64(key + rows) % np.uint64(n_starts)).astype(np.int64)


def get_batch(
    tokens: Integer[np.ndarray, " N"],
    *,
    seed: int,
    step: int,
    batch_size: int,
    seq_len: int,
    row_start: int = 0,
) -> Int32[np.ndarray, "B T1"]:  # T1 = seq_len + 1 (inputs and next-token targets)
    """[batch_size, seq_len + 1] int32 windows at random offsets: inputs [:, :-1], targets [:, 1:].

    A pure function of (seed, step): a counter-based hash (SplitMix64 of seed, step, row) picks
    the offsets, not a stateful RNG, so a resumed run sees exactly the batches it would have seen,
    the result does not depend on call order, and it cannot change with numpy's RNG streams.
    Row r is the same whatever batch_size is, so a host in multi-host data parallelism can build
    only its rows [row_start, row_start + batch_size) of the global batch.
    """
    starts = batch_offsets(
        tokens.size,
        seed=seed,
        step=step,
        batch_size=batch_size,
        seq_len=seq_len,
        row_start=row_start,
    )
    idx = starts[:, None] + np.arange(seq_len + 1)[None, :]
    return np.asarray(tokens[idx], dtype=np.int32)


class EvalBatch(NamedTuple):
    """tokens [B, T+1] int32 (pad where unused); mask [B, T] bool: which targets tokens[:, 1:]
    to score. Summed over all batches, the mask selects every target exactly once."""

    tokens: Int32[np.ndarray, "B T+1"]
    mask: Bool[np.ndarray, "B T"]


def eval_batches(
    tokens: Integer[np.ndarray, " N"],
    *,
    batch_size: int,
    seq_len: int,
    max_tokens: int | None = None,
    pad_id: int = 0,
) -> Iterator[EvalBatch]:
    """Non-overlapping windows over tokens[:max_tokens], each token after the first scored once.

    Window w covers tokens[w*T : w*T + T + 1] (T = seq_len); its targets are positions
    w*T+1 … w*T+T. The last window and the last batch are padded (mask False), so every batch
    has the same shape (one compiled eval step). Since the token stream starts with <eos>,
    scoring every target covers all of the validation text: bits/byte = sum(nats) / ln 2 /
    val_bytes, or use covered_bytes() when max_tokens cuts it short.
    """
    n = tokens.size if max_tokens is None else min(tokens.size, max_tokens)
    if n < 2:
        raise DataError(f"need at least 2 tokens to evaluate, got {n}")
    n_windows = -(-(n - 1) // seq_len)
    for first in range(0, n_windows, batch_size):
        out = np.full((batch_size, seq_len + 1), pad_id, np.int32)
        mask = np.zeros((batch_size, seq_len), bool)
        for row, w in enumerate(range(first, min(first + batch_size, n_windows))):
            start = w * seq_len
            stop = min(start + seq_len + 1, n)
            out[row, : stop - start] = tokens[start:stop]
            mask[row, : stop - start - 1] = True
        yield EvalBatch(out, mask)


def covered_bytes(
    tokenizer: ByteTokenizer | BpeTokenizer, tokens: np.ndarray, max_tokens: int | None = None
) -> int:
    """UTF-8 bytes of text that eval_batches(tokens, max_tokens=...) scores (its target tokens)."""
    n = tokens.size if max_tokens is None else min(tokens.size, max_tokens)
    return int(tokenizer.token_byte_lengths()[np.asarray(tokens[1:n])].sum())
