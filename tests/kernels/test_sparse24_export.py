"""jax.export of the real jax-triton 2:4 path for platform "cuda" works on a CPU-only machine."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("jax_cuda13_plugin") is None
    or importlib.util.find_spec("jax_triton") is None,
    reason="needs jax-cuda13-plugin==0.11.2 and jax-triton installed --no-deps "
    "(scripts/bootstrap.sh installs both; CI runs this test)",
)

CASES = {
    "gemm_values_bf16": ["bfloat16[64,256]"],
    "gemm_int4_affine": ["bfloat16[333,256]"],
    "decode_gemv_values": ["bfloat16[1,256]"],
    "decode_dot_int4_sym": ["bfloat16[7,256]"],
    "grad_values_fwd_and_bwd": ["float32[]", "bfloat16[128,512]"],  # value_and_grad
    "grad_int4_fwd_and_bwd": ["float32[]", "bfloat16[128,512]"],
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("export24") / "out.json"
    # The interpreter must be off so the kernels stay JITFunctions that jax-triton can lower.
    env = dict(os.environ, TRITON_INTERPRET="0", JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests/kernels/sparse24_cuda_export.py"), str(out)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("case", list(CASES))
def test_export_for_cuda(exported, case):
    r = exported[case]
    assert r["ok"], r.get("error")
    assert r["platforms"] == ["cuda"]
    assert r["triton_calls"] == r["expected_calls"], r
    assert r["out_avals"] == CASES[case]
