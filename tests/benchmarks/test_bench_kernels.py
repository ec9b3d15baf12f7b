"""The kernel benchmark on CPU: rows as measured, honest labels, an independent error check."""

import csv

import numpy as np
import pytest

from compactlm.benchmarks import bench_kernels as B

TINY = {"tiny": (256, 128)}
FAST = dict(rotate_bytes=2**18, calls=3, repeats=2, bandwidth_bytes=2**20)


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    return out, B.run(["int4", "nf4"], TINY, [1, 4], out, impl="auto", **FAST)


def test_rows_label_the_fallback_and_the_measured_roofline(rows):
    out, rows = rows
    assert [(r["format"], r["M"]) for r in rows] == [
        (f, m) for m in (1, 4) for f in ("dense", "int4", "nf4")
    ]
    # impl=auto on a CPU falls back to the reference, and the row says so.
    assert {(r["format"], r["impl"], r["impl_used"]) for r in rows} == {
        ("dense", "xla", "xla"),
        ("int4", "auto", "reference"),
        ("nf4", "auto", "reference"),
    }
    bw = rows[0]["bandwidth_GB_s"]
    assert bw > 0 and all(r["bandwidth_GB_s"] == bw for r in rows)
    for r in rows:
        assert r["time_us"] > 0 and r["calls"] >= 3 and r["copies"] >= 2
        assert r["pct_bandwidth"] == pytest.approx(100 * r["GB_s"] / bw)
    with open(out / "bench_kernels.csv") as f:
        assert [row["format"] for row in csv.DictReader(f)] == [r["format"] for r in rows]
    assert "| format | shape | M | impl_used |" in (out / "bench_kernels.md").read_text()
    assert (out / "bench_kernels.png").stat().st_size > 0


def test_error_is_against_an_independent_float64_product(rows):
    """bf16 x and bf16 W products summed in f32, then y rounded to bf16: ~2^-8 relative. A wrong
    dequantization (or comparing the reference with itself, always 0) would not give this."""
    _, rows = rows
    for r in rows:
        assert 0 < r["max_rel_err"] < 2e-2, r


def test_bytes_moved_match_the_storage_formats():
    K = N = 4096
    act = B._act_bytes(1, N, K)
    dense = B.FORMATS["dense"].bytes(1, N, K) - act
    assert dense == 2 * K * N
    # int4 with bf16 scales per 128: 4.125 bits; affine adds the zeros: 4.25 bits.
    assert (B.FORMATS["int4"].bytes(1, N, K) - act) * 8 / (K * N) == 4.125
    assert (B.FORMATS["int4_affine"].bytes(1, N, K) - act) * 8 / (K * N) == 4.25
    assert (B.FORMATS["nf4"].bytes(1, N, K) - act) * 8 / (K * N) == 4.25  # absmax per 64


def test_measured_bandwidth_is_positive_and_finite():
    bw = B.measure_bandwidth(2**20, calls=2, repeats=2)
    assert np.isfinite(bw) and bw > 1e8  # > 0.1 GB/s on any machine


def test_bench_kernels_rejects_unknown_names(tmp_path):
    with pytest.raises(ValueError, match="registered: dense, int4"):
        B.run(["int3"], ["4096x4096"], [1], tmp_path)
    with pytest.raises(ValueError, match="known: 4096x4096.*or 'KxN'"):
        B.run(["int4"], ["5by5"], [1], tmp_path)
