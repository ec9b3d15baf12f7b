"""Every int4 / NF4 / FP4 Triton kernel compiles for Hopper (sm_90): wgmma, shared memory fits."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from compactlm.kernels import int4_configs

ROOT = Path(__file__).resolve().parents[2]
MODULE = "compactlm.kernels.int4_kernels"
# Opt-in dynamic + static shared memory per block on sm_90 (228 KB per SM, 1 KB reserved).
HOPPER_SMEM_PER_BLOCK = 227 * 1024

FMT = {"int4_sym": 0, "int4_affine": 1, "nf4": 2, "fp4": 2}


def _split(cfg: dict) -> tuple[dict, dict]:
    launch = {k: cfg[k] for k in ("num_warps", "num_stages") if k in cfg}
    meta = {k: v for k, v in cfg.items() if k not in launch}
    return meta, launch


def _spec(id_, kernel, act, scale, fmt, group, bucket, extra=None):
    meta, launch = _split(int4_configs.DEFAULTS[bucket])
    out = {"_int4_matmul_bwd_kernel": "dx_ptr", "_int4_splitk_kernel": "partial_ptr"}
    first = "dy_ptr" if kernel == "_int4_matmul_bwd_kernel" else "x_ptr"
    out_ptr = out.get(kernel, "y_ptr")
    out_dtype = "fp32" if out_ptr == "partial_ptr" else act
    pointers = {first: act, "qweight_ptr": "i32", "scales_ptr": scale, "zeros_ptr": scale,
                "codebook_ptr": "fp32", out_ptr: out_dtype}  # fmt: skip
    constexprs = dict(meta, GROUP_SIZE=group, FMT=FMT[fmt], DOT_FP32=False, **(extra or {}))
    return dict(id=id_, module=MODULE, kernel=kernel, pointers=pointers, constexprs=constexprs,
                **launch)  # fmt: skip


SPECS = [
    # (id, kernel, activations, scales, format, group size, config bucket, extra constexprs)
    ("gemm_large_int4_sym", "_int4_matmul_kernel", "bf16", "bf16", "int4_sym", 128, "large"),
    ("gemm_large_int4_affine", "_int4_matmul_kernel", "bf16", "fp32", "int4_affine", 128, "large"),
    ("gemm_medium_nf4", "_int4_matmul_kernel", "bf16", "fp32", "nf4", 64, "medium"),
    # G = 32 < BLOCK_SIZE_K = 64: the per-row scale gather path; f16 activations.
    ("gemm_small_fp4_g32", "_int4_matmul_kernel", "fp16", "fp16", "fp4", 32, "small"),
    ("decode_int4_sym", "_int4_splitk_kernel", "bf16", "bf16", "int4_sym", 128, "decode",
     {"SPLIT_K": 4}),
    ("decode_nf4", "_int4_splitk_kernel", "bf16", "fp32", "nf4", 64, "decode", {"SPLIT_K": 8}),
    ("bwd_int4_affine", "_int4_matmul_bwd_kernel", "bf16", "bf16", "int4_affine", 128, "backward"),
    ("bwd_nf4_g32", "_int4_matmul_bwd_kernel", "bf16", "fp32", "nf4", 32, "backward"),
]  # fmt: skip


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hopper")
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
    assert 0 < r["shared"] <= HOPPER_SMEM_PER_BLOCK, r
    if spec[6] == "decode":
        # A 16-row tile is below wgmma's m64 instruction shape: Triton emits mma.sync, which is
        # fine for a memory-bound GEMV-like kernel.
        assert r["mma_sync"] or r["wgmma"], r
    else:
        assert r["wgmma"], f"{spec[0]}: tl.dot did not lower to wgmma on sm_90: {r}"
