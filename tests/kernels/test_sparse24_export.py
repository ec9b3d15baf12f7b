"""jax.export of the real jax-triton 2:4 path for platform "cuda" works on a CPU-only machine."""

import pytest

from tests.kernels.export_support import check_case, requires_plugin, run_export_script

pytestmark = requires_plugin

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
    return run_export_script("sparse24", tmp_path_factory.mktemp("export24") / "out.json")


@pytest.mark.parametrize("case", list(CASES))
def test_export_for_cuda(exported, case):
    check_case(exported[case], CASES[case])
