"""Smoke test of the kernel benchmark on CPU (reference impl, one tiny shape)."""

import csv

import pytest

from compactlm.eval import bench_kernels as B


def test_bench_kernels_runs_on_cpu(tmp_path):
    rows = B.run(["int4", "nf4"], {"tiny": (256, 128)}, [1, 4], tmp_path, impl="reference",
                 rotate_bytes=2**18, repeats=2)  # fmt: skip
    assert {(r["format"], r["M"]) for r in rows} == {
        (f, m) for f in ("bf16", "int4", "nf4") for m in (1, 4)
    }
    assert all(r["max_rel_err"] == 0 and r["time_us"] > 0 for r in rows)
    with open(tmp_path / "bench_kernels.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    assert "| format | shape | M |" in (tmp_path / "bench_kernels.md").read_text()
    assert (tmp_path / "bench_kernels.png").stat().st_size > 0


def test_bench_kernels_rejects_unknown_names(tmp_path):
    with pytest.raises(ValueError, match="registered: bf16, int4"):
        B.run(["int3"], ["4096x4096"], [1], tmp_path)
    with pytest.raises(ValueError, match="known: 4096x4096.*or 'KxN'"):
        B.run(["int4"], ["5by5"], [1], tmp_path)
