"""Every int4 / NF4 / FP4 Triton kernel compiles for Hopper (sm_90): wgmma, shared memory fits."""

import pytest

from compactlm.kernels import int4_configs
from tests.kernels.hopper_compile import check_compiled, compile_for_hopper, split_config

FMT = {"int4_sym": 0, "int4_affine": 1, "nf4": 2, "fp4": 2}
OUT = {"_int4_matmul_kernel": "y_ptr", "_int4_splitk_kernel": "partial_ptr",
       "_int4_matmul_bwd_kernel": "dx_ptr"}  # fmt: skip


def _spec(id_, kernel, act, scale, fmt, group, bucket, mma, extra=None):
    meta, launch = split_config(int4_configs.DEFAULTS[bucket])
    first = "dy_ptr" if kernel == "_int4_matmul_bwd_kernel" else "x_ptr"
    out = OUT[kernel]
    pointers = {first: act, "qweight_ptr": "i32", "scales_ptr": scale, "zeros_ptr": scale,
                "codebook_ptr": "fp32", out: "fp32" if out == "partial_ptr" else act}  # fmt: skip
    constexprs = dict(meta, GROUP_SIZE=group, FMT=FMT[fmt], DOT_FP32=False, **(extra or {}))
    return dict(id=id_, module="compactlm.kernels.int4_kernels", kernel=kernel,
                pointers=pointers, constexprs=constexprs, **launch)  # fmt: skip


GEMM, DECODE, BWD = "_int4_matmul_kernel", "_int4_splitk_kernel", "_int4_matmul_bwd_kernel"
SPECS = [
    # (id, kernel, activations, scales, format, group size, config bucket, expected MMA, extra)
    ("gemm_large_int4_sym", GEMM, "bf16", "bf16", "int4_sym", 128, "large", "wgmma"),
    ("gemm_large_int4_affine", GEMM, "bf16", "fp32", "int4_affine", 128, "large", "wgmma"),
    ("gemm_medium_nf4", GEMM, "bf16", "fp32", "nf4", 64, "medium", "wgmma"),
    # G = 32 < BLOCK_SIZE_K = 64: the per-row scale gather path; f16 activations.
    ("gemm_small_fp4_g32", GEMM, "fp16", "fp16", "fp4", 32, "small", "wgmma"),
    # f32 activations: IEEE like the reference, so no TF32 wgmma.
    ("gemm_small_f32_int4_affine", GEMM, "fp32", "fp32", "int4_affine", 64, "small", "fma"),
    # A 16-row tile is below wgmma's m64 shape: mma.sync, fine for a memory-bound decode.
    ("decode_int4_sym", DECODE, "bf16", "bf16", "int4_sym", 128, "decode", "mma", {"SPLIT_K": 4}),
    ("decode_nf4", DECODE, "bf16", "fp32", "nf4", 64, "decode", "mma", {"SPLIT_K": 8}),
    ("bwd_int4_affine", BWD, "bf16", "bf16", "int4_affine", 128, "backward", "wgmma"),
    ("bwd_nf4_g32", BWD, "bf16", "fp32", "nf4", 32, "backward", "wgmma"),
]  # fmt: skip


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    return compile_for_hopper([_spec(*s) for s in SPECS], tmp_path_factory.mktemp("hopper"))


@pytest.mark.parametrize("spec", SPECS, ids=[s[0] for s in SPECS])
def test_compiles_for_sm90(compiled, spec):
    check_compiled(compiled[spec[0]], mma=spec[7])
