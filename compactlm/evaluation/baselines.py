"""Bits per byte of standard compressors (gzip, xz, bz2 at level 9): the bar a model must beat.

Two kinds of figure, labelled apart in every report:
- standalone (`compression_bpb`): the validation text compressed on its own, as a file would be;
- conditional (`conditional_xz_bpb`): xz -9e given the training split as context, i.e.
  |xz(train + val)| - |xz(train)|, the cost of the validation bytes to a compressor that has
  seen what the model learned from. That is the fairer bar for a model trained on the same kind
  of text (pystdlib: ~1.40 against ~1.79 standalone); it takes seconds on a 10 MB split, so it is
  computed once per corpus split and cached (`cached_baselines`).
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import lzma
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from compactlm.data.config import DataConfig

# Bump when a figure's definition changes, so old cached values are never reported as new ones.
BASELINE_VERSION = 1
# xz -9's dictionary (64 MiB): context further back than this cannot be referenced anyway, so a
# larger training split contributes only its last 64 MiB (and the cost stays bounded).
XZ9_DICT_BYTES = 64 << 20
XZ9E = 9 | lzma.PRESET_EXTREME


def _utf8(text: bytes | str) -> bytes:
    return text.encode("utf-8") if isinstance(text, str) else bytes(text)


def compression_bpb(text: bytes | str) -> dict[str, float]:
    """{"gzip", "xz", "bz2"}: compressed bits per input byte (str is UTF-8 encoded), plus "bytes".

    Headers and checksums are included, as a file on disk would have them; they cost < 0.001
    bits/byte on the ~270 KB pystdlib validation split.
    """
    data = _utf8(text)
    if not data:
        raise ValueError("compression_bpb needs non-empty text")
    n = len(data)
    return {
        "gzip": len(gzip.compress(data, compresslevel=9, mtime=0)) * 8 / n,
        "xz": len(lzma.compress(data, preset=9)) * 8 / n,
        "bz2": len(bz2.compress(data, compresslevel=9)) * 8 / n,
        "bytes": n,
    }


def conditional_xz_bpb(context: bytes | str, text: bytes | str) -> float:
    """xz -9e bits per byte of `text` after `context`: (|xz(ctx + text)| - |xz(ctx)|)·8 / |text|.

    Both streams carry the same header and footer, so the difference is the cost of `text` alone.
    Only the last 64 MiB of `context` (xz -9's dictionary) is used.
    """
    ctx, data = _utf8(context)[-XZ9_DICT_BYTES:], _utf8(text)
    if not data:
        raise ValueError("conditional_xz_bpb needs non-empty text")
    both = len(lzma.compress(ctx + data, preset=XZ9E))
    alone = len(lzma.compress(ctx, preset=XZ9E))
    return (both - alone) * 8 / len(data)


def cached_baselines(cfg: DataConfig, split: dict, val_text: str) -> dict[str, float]:
    """compression_bpb of the validation text plus "xz_given_train", cached per corpus split.

    `split` is the run's split record (`Data.split`: corpus hash, fraction, seed); the training
    text is re-read from the corpus only when the cache misses. Cache: CACHE/baselines/<key>.json.
    """
    from compactlm.data import load_corpus, split_corpus
    from compactlm.data.dataset import resolve_cache_dir

    key = hashlib.sha256(
        json.dumps(
            {
                "version": BASELINE_VERSION,
                "corpus_sha256": split["corpus_sha256"],
                "val_fraction": split["val_fraction"],
                "split_seed": split["split_seed"],
                "val_sha256": hashlib.sha256(_utf8(val_text)).hexdigest(),
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()
    path = resolve_cache_dir(cfg) / "baselines" / f"{key}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    docs = load_corpus(
        cfg.corpus,
        glob=cfg.glob,
        jsonl_field=cfg.jsonl_field,
        max_corpus_bytes=cfg.max_corpus_bytes,
    )
    parts = split_corpus(docs, val_fraction=cfg.val_fraction, seed=cfg.split_seed)
    train_text = "".join(d.text for d in parts.train)
    result = {
        **compression_bpb(val_text),
        "xz_given_train": conditional_xz_bpb(train_text, val_text),
        "train_context_bytes": min(len(_utf8(train_text)), XZ9_DICT_BYTES),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{id(result)}")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(path)  # atomic: concurrent runs never read a half-written file
    except OSError:  # a read-only cache only costs the recomputation next time
        pass
    return result
