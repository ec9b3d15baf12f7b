"""Every 2:4 Triton kernel compiles for Hopper (sm_90) without a GPU (helper: hopper_compile.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from compactlm.kernels import int4_configs

ROOT = Path(__file__).resolve().parents[2]
MODULE = "compactlm.kernels.sparse24_kernels"
HOPPER_SMEM_PER_BLOCK = 227 * 1024  # opt-in shared memory per block on sm_90
OUT = {
    "_sparse24_matmul_kernel": "y_ptr",
    "_sparse24_decode_kernel": "partial_ptr",
    "_sparse24_matmul_bwd_kernel": "dx_ptr",
}


def _spec(id_, kernel, act, values, scale, zeros, bucket, extra=None):
    cfg = dict(int4_configs.DEFAULTS[bucket])
    launch = {k: cfg.pop(k) for k in ("num_warps", "num_stages")}
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
    return dict(id=id_, module=MODULE, kernel=kernel, pointers=pointers, constexprs=constexprs,
                **launch)  # fmt: skip


GEMM, DECODE, BWD = (
    "_sparse24_matmul_kernel",
    "_sparse24_decode_kernel",
    "_sparse24_matmul_bwd_kernel",
)
SPECS = [
    # (id, kernel, activations, values, scales, zeros?, config bucket, extra constexprs)
    ("gemm_large_bf16", GEMM, "bf16", "bf16", None, False, "large"),
    ("gemm_small_f16", GEMM, "fp16", "fp16", None, False, "small"),
    ("gemm_medium_int4_sym", GEMM, "bf16", "i32", "bf16", False, "medium"),
    ("gemm_large_int4_affine", GEMM, "bf16", "i32", "fp32", True, "large"),
    ("decode_dot_bf16", DECODE, "bf16", "bf16", None, False, "decode"),
    ("decode_gemv_bf16", DECODE, "bf16", "bf16", None, False, "decode", {"BLOCK_SIZE_M": 1}),
    ("decode_dot_int4_sym", DECODE, "bf16", "i32", "fp32", False, "decode"),
    ("decode_gemv_int4_affine", DECODE, "bf16", "i32", "bf16", True, "decode",
     {"BLOCK_SIZE_M": 1}),
    ("bwd_bf16", BWD, "bf16", "bf16", None, False, "backward"),
    ("bwd_int4_affine", BWD, "bf16", "i32", "bf16", True, "backward"),
    # G = 32 compressed rows < BLOCK_SIZE_K / 2: several scale rows per tile, repeated in registers.
    ("bwd_int4_sym_g32", BWD, "bf16", "i32", "bf16", False, "backward", {"QUANT_GROUP": 32}),
    ("gemm_f32_int4_g32", GEMM, "fp32", "i32", "fp32", True, "small", {"QUANT_GROUP": 32}),
]  # fmt: skip


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hopper24")
    (tmp / "specs.json").write_text(json.dumps([_spec(*s) for s in SPECS]))
    env = dict(os.environ, TRITON_INTERPRET="0", PYTHONPATH=str(ROOT),
               TRITON_CACHE_DIR=str(tmp / "cache"))  # fmt: skip
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests/kernels/hopper_compile.py"), str(tmp / "specs.json"),
         str(tmp / "out.json")],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((tmp / "out.json").read_text())


@pytest.mark.parametrize("spec", SPECS, ids=[s[0] for s in SPECS])
def test_compiles_for_sm90(compiled, spec):
    r = compiled[spec[0]]
    assert r["ok"], r.get("error")
    assert 0 <= r["shared"] <= HOPPER_SMEM_PER_BLOCK, r
    if spec[1] == DECODE:
        # 16-row tiles sit below wgmma's m64 shape (mma.sync), the GEMV uses no MMA at all.
        gemv = len(spec) > 7 and spec[7].get("BLOCK_SIZE_M", 16) < 16
        assert gemv or r["mma_sync"] or r["wgmma"], r
    elif spec[2] == "fp32":
        # IEEE f32 (the reference's precision) has no tensor-core instruction: FMA loop.
        assert not r["wgmma"], r
    else:
        assert r["wgmma"], f"{spec[0]}: tl.dot did not lower to wgmma on sm_90: {r}"
