"""Every 2:4 Triton kernel compiles for Hopper (sm_90) without a GPU (helper: hopper_compile.py)."""

import pytest

from compactlm.kernels import int4_configs
from tests.kernels.hopper_compile import check_compiled, compile_for_hopper, split_config

OUT = {"_sparse24_matmul_kernel": "y_ptr", "_sparse24_decode_kernel": "partial_ptr",
       "_sparse24_matmul_bwd_kernel": "dx_ptr"}  # fmt: skip


def _spec(id_, kernel, act, values, scale, zeros, bucket, mma, extra=None):
    cfg, launch = split_config(int4_configs.DEFAULTS[bucket])
    if kernel == "_sparse24_decode_kernel":
        cfg.pop("GROUP_SIZE_M", None)
    int4 = values == "i32"
    first = "dy_ptr" if kernel == "_sparse24_matmul_bwd_kernel" else "x_ptr"
    out = OUT[kernel]
    pointers = {first: act, "values_ptr": values, "meta_ptr": "i32",
                "scales_ptr": scale if int4 else "i32", "zeros_ptr": scale if int4 else "i32",
                out: "fp32" if out == "partial_ptr" else act}  # fmt: skip
    constexprs = dict(cfg, INT4=int4, HAS_ZEROS=zeros, QUANT_GROUP=128 if int4 else 1,
                      DOT_FP32=False)  # fmt: skip
    constexprs.update(extra or {})
    return dict(id=id_, module="compactlm.kernels.sparse24_kernels", kernel=kernel,
                pointers=pointers, constexprs=constexprs, **launch)  # fmt: skip


GEMM, DECODE, BWD = (
    "_sparse24_matmul_kernel",
    "_sparse24_decode_kernel",
    "_sparse24_matmul_bwd_kernel",
)
GEMV = {"BLOCK_SIZE_M": 1}  # the decode kernel's broadcast-multiply-sum path: no MMA at all
SPECS = [
    # (id, kernel, activations, values, scales, zeros?, config bucket, expected MMA, extra)
    ("gemm_large_bf16", GEMM, "bf16", "bf16", None, False, "large", "wgmma"),
    ("gemm_small_f16", GEMM, "fp16", "fp16", None, False, "small", "wgmma"),
    ("gemm_medium_int4_sym", GEMM, "bf16", "i32", "bf16", False, "medium", "wgmma"),
    ("gemm_large_int4_affine", GEMM, "bf16", "i32", "fp32", True, "large", "wgmma"),
    # 16-row tiles sit below wgmma's m64 shape (mma.sync).
    ("decode_dot_bf16", DECODE, "bf16", "bf16", None, False, "decode", "mma"),
    ("decode_gemv_bf16", DECODE, "bf16", "bf16", None, False, "decode", "fma", GEMV),
    ("decode_dot_int4_sym", DECODE, "bf16", "i32", "fp32", False, "decode", "mma"),
    ("decode_gemv_int4_affine", DECODE, "bf16", "i32", "bf16", True, "decode", "fma", GEMV),
    ("bwd_bf16", BWD, "bf16", "bf16", None, False, "backward", "wgmma"),
    ("bwd_int4_affine", BWD, "bf16", "i32", "bf16", True, "backward", "wgmma"),
    # G = 32 compressed rows < BLOCK_SIZE_K / 2: several scale rows per tile, repeated in registers.
    ("bwd_int4_sym_g32", BWD, "bf16", "i32", "bf16", False, "backward", "wgmma",
     {"QUANT_GROUP": 32}),
    # IEEE f32 (the reference's precision) has no tensor-core instruction: FMA loop.
    ("gemm_f32_int4_g32", GEMM, "fp32", "i32", "fp32", True, "small", "fma", {"QUANT_GROUP": 32}),
]  # fmt: skip


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    return compile_for_hopper([_spec(*s) for s in SPECS], tmp_path_factory.mktemp("hopper24"))


@pytest.mark.parametrize("spec", SPECS, ids=[s[0] for s in SPECS])
def test_compiles_for_sm90(compiled, spec):
    check_compiled(compiled[spec[0]], mma=spec[7])
