"""Compression baselines: the standard library directly, the xz CLI, and the per-split cache."""

import bz2
import gzip
import lzma
import shutil
import subprocess

import numpy as np
import pytest

from compactlm.evaluation.baselines import compression_bpb, conditional_xz_bpb


def test_compression_bpb_matches_direct_computation() -> None:
    from pydoc_data.topics import topics

    data = "".join(topics[k] for k in sorted(topics)[:10]).encode()
    got = compression_bpb(data)
    assert got["bytes"] == len(data)
    assert got["gzip"] == len(gzip.compress(data, 9, mtime=0)) * 8 / len(data)
    assert got["xz"] == len(lzma.compress(data, preset=9)) * 8 / len(data)
    assert got["bz2"] == len(bz2.compress(data, 9)) * 8 / len(data)
    assert compression_bpb(data.decode()) == got  # str is UTF-8 encoded
    assert all(0.5 < got[k] < 5 for k in ("gzip", "xz", "bz2"))  # English text compresses


def test_compression_bpb_rejects_empty() -> None:
    with pytest.raises(ValueError):
        compression_bpb(b"")


def _topics(lo: int, hi: int) -> bytes:
    from pydoc_data.topics import topics

    keys = sorted(topics)
    return "".join(topics[k] for k in keys[lo:hi]).encode()


@pytest.mark.skipif(shutil.which("xz") is None, reason="the xz command-line tool is not installed")
def test_conditional_xz_matches_the_xz_command() -> None:
    # The definition with an independent encoder: the xz CLI, single-threaded, level -9e.
    def xz_size(b: bytes) -> int:
        proc = subprocess.run(["xz", "-9e", "-c", "-T1"], input=b, capture_output=True, check=True)
        return len(proc.stdout)

    ctx, val = _topics(0, 30), _topics(60, 70)
    expected = (xz_size(ctx + val) - xz_size(ctx)) * 8 / len(val)
    assert conditional_xz_bpb(ctx, val) == expected


def test_conditional_xz_uses_the_context() -> None:
    ctx, val = _topics(0, 30), _topics(60, 70)
    alone = compression_bpb(val)["xz"]
    given = conditional_xz_bpb(ctx, val)
    assert given < alone  # related English text helps
    assert conditional_xz_bpb(ctx + val, val) < 0.05 * alone  # a repeat costs almost nothing
    noise = bytes(np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8))
    assert conditional_xz_bpb(ctx, noise) > 7.9  # nothing to reuse: ~8 bits per random byte
    with pytest.raises(ValueError):
        conditional_xz_bpb(ctx, b"")


def test_cached_baselines_computed_once_per_split(tmp_path, monkeypatch) -> None:
    from compactlm.data import DataConfig, prepare_data
    from compactlm.evaluation import baselines

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(12):
        (corpus / f"doc{i:02d}.txt").write_bytes(_topics(i * 3, i * 3 + 3))
    cfg = DataConfig(corpus=str(corpus), cache_dir=str(tmp_path / "cache"), val_fraction=0.2)
    data = prepare_data(cfg)
    first = baselines.cached_baselines(cfg, data.split, data.val_text)
    train = "".join((corpus / f"doc{i:02d}.txt").read_text() for i in range(12))
    val = data.val_text
    assert first["xz"] == compression_bpb(val)["xz"] and first["bytes"] == len(val.encode())
    # The training split is every document not in validation, in corpus order.
    train_text = "".join(
        t
        for t in (corpus.joinpath(f"doc{i:02d}.txt").read_text() for i in range(12))
        if t not in val
    )
    assert len(train_text) + len(val) == len(train)
    assert first["xz_given_train"] == conditional_xz_bpb(train_text, val)
    assert len(list((tmp_path / "cache" / "baselines").glob("*.json"))) == 1

    # Second call: read from the cache, nothing recomputed.
    monkeypatch.setattr(baselines, "conditional_xz_bpb", lambda *a: pytest.fail("recomputed"))
    assert baselines.cached_baselines(cfg, data.split, data.val_text) == first
