"""The 2:4 formats in the kernel benchmark registry: they run on CPU and count the right bytes."""

from compactlm.benchmarks import bench_kernels as B


def test_sparse24_formats_run_and_count_bytes(tmp_path):
    rows = B.run(["sparse24", "sparse24_int4"], {"tiny": (256, 128)}, [1], tmp_path,
                 impl="reference", rotate_bytes=2**18, calls=2, repeats=1,
                 bandwidth_bytes=2**20)  # fmt: skip
    assert {r["format"] for r in rows} == {"dense", "sparse24", "sparse24_int4"}
    # Against the f64 product of each format's own (pruned, quantized) W: bf16 rounding only.
    assert all(0 < r["max_rel_err"] < 2e-2 for r in rows)
    assert {r["impl_used"] for r in rows if r["format"] != "dense"} == {"reference"}
    K = N = 4096
    act = B._act_bytes(1, N, K)
    dense = B.FORMATS["dense"].bytes(1, N, K) - act
    # DESIGN §3: 2:4 bf16 moves 56% of dense bf16's weight bytes, int4+2:4 about a fifth.
    assert (B.FORMATS["sparse24"].bytes(1, N, K) - act) / dense == 0.5625
    assert abs((B.FORMATS["sparse24_int4"].bytes(1, N, K) - act) / dense - 0.191) < 1e-3
