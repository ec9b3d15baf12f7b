"""Compression baselines match a direct computation with the standard library."""

import bz2
import gzip
import lzma

import pytest

from compactlm.eval.baselines import compression_bpb


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
