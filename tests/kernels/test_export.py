"""jax.export of the real jax-triton int4 path for platform "cuda" works on a CPU-only machine."""

import pytest

from tests.kernels.export_support import check_case, requires_plugin, run_export_script

pytestmark = requires_plugin

CASES = {
    "gemm_int4_affine_bf16": ["bfloat16[64,256]"],
    "decode_nf4_splitk": ["bfloat16[8,256]"],
    "gemv_int4_affine": ["bfloat16[1,256]"],
    "grad_fp4_fwd_and_bwd": ["float32[]", "bfloat16[128,512]"],  # value_and_grad
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return run_export_script("int4", tmp_path_factory.mktemp("export") / "out.json")


@pytest.mark.parametrize("case", list(CASES))
def test_export_for_cuda(exported, case):
    check_case(exported[case], CASES[case])
