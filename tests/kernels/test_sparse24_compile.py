"""Every 2:4 launch compiles for Hopper (sm_90) as jax-triton specialises it (hopper_compile.py)."""

import pytest

from tests.kernels.hopper_compile import check_compiled, compile_for_hopper

GEMV, DECODE = "_sparse24_gemv_kernel", "_sparse24_decode_kernel"
GEMM, BWD = "_sparse24_matmul_kernel", "_sparse24_matmul_bwd_kernel"
CASES = [
    # (id, format, symmetric, M, N, K, G, activations, backward, kernel, expected MMA)
    # M <= 4: the GEMV: kept values times the selected x, FMAs only; N = 11008 is ragged.
    ("gemv_bf16", "sparse24", True, 1, 4096, 4096, None, "bfloat16", False, GEMV, "none"),
    ("gemv_int4_affine_ragged", "sparse24_int4", False, 3, 11008, 4096, 128, "bfloat16", False,
     GEMV, "none"),
    # lane_table's other activation dtypes; K = 4160 leaves the last split's tiles past K.
    ("gemv_f16", "sparse24", True, 2, 4096, 4096, None, "float16", False, GEMV, "none"),
    ("gemv_int4_f32_uneven", "sparse24_int4", True, 1, 1000, 4160, 32, "float32", False, GEMV,
     "none"),
    # 16-row tiles sit below wgmma's m64 shape (mma.sync).
    ("decode_dot_bf16", "sparse24", True, 8, 4096, 4096, None, "bfloat16", False, DECODE,
     "mma.sync"),
    ("decode_dot_int4_sym", "sparse24_int4", True, 16, 4096, 4096, 128, "bfloat16", False,
     DECODE, "mma.sync"),
    ("gemm_large_bf16", "sparse24", True, 512, 4096, 4096, None, "bfloat16", False, GEMM,
     "wgmma"),
    ("gemm_small_f16", "sparse24", True, 40, 1024, 1024, None, "float16", False, GEMM, "wgmma"),
    ("gemm_medium_int4_sym", "sparse24_int4", True, 200, 1024, 1024, 128, "bfloat16", False,
     GEMM, "wgmma"),
    ("bwd_bf16", "sparse24", True, 256, 1024, 1024, None, "bfloat16", True, BWD, "wgmma"),
    # G = 32 compressed rows < BLOCK_SIZE_K / 2: several scale rows per tile.
    ("bwd_int4_sym_g32", "sparse24_int4", True, 256, 1024, 1024, 32, "bfloat16", True, BWD,
     "wgmma"),
]  # fmt: skip


def _case(id_, format, symmetric, m, n, k, g, act, backward, *_):
    return dict(id=id_, op="sparse24", format=format, symmetric=symmetric, M=m, N=n, K=k,
                group_size=g, dtype=act, backward=backward)  # fmt: skip


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    return compile_for_hopper([_case(*c) for c in CASES], tmp_path_factory.mktemp("hopper24"))


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_compiles_for_sm90(compiled, case):
    check_compiled(compiled[case[0]], kernel=case[9], mma=case[10])


def test_gemv_selects_x_through_lane_tables(compiled):
    """The compiled GEMVs pick x[4g + i0], x[4g + i1] with one shuffle each (lane_select: 16 per
    metadata word) from per-lane tables, with no shared-memory layout conversion."""
    for case in ("gemv_bf16", "gemv_int4_affine_ragged", "gemv_f16", "gemv_int4_f32_uneven"):
        assert compiled[case]["shuffles"] >= 16, compiled[case]
        assert compiled[case]["shared_ops"] == 0, compiled[case]
