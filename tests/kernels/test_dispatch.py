"""impl dispatch: the reference wherever Triton cannot run, a named reason when it was asked for."""

import jax.numpy as jnp
import pytest

from compactlm.kernels import _dispatch


@pytest.mark.parametrize(
    "impl, reason, expected",
    [
        ("auto", None, "triton"),
        ("auto", "needs a CUDA device", "reference"),
        ("reference", None, "reference"),  # asked for: even where Triton could run
        ("reference", "needs a CUDA device", "reference"),
        ("triton", None, "triton"),
    ],
)
def test_resolve_impl(impl, reason, expected):
    assert _dispatch.resolve_impl(impl, "int4_matmul", reason) == expected


def test_explicit_triton_that_cannot_run_names_the_op_and_the_constraint():
    with pytest.raises(ValueError, match=r"int4_matmul\(impl='triton'\) cannot run: K % 8 != 0"):
        _dispatch.resolve_impl("triton", "int4_matmul", "K % 8 != 0")


def test_unknown_impl_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown impl 'cuda'; valid: auto, triton, reference"):
        _dispatch.resolve_impl("cuda", "int4_matmul", None)


def test_device_reason_on_this_cpu_machine(monkeypatch):
    """No CUDA device on the CPU test machine: every dtype gets that reason (auto falls back)."""
    monkeypatch.setattr(_dispatch._launch, "aot_target", lambda: None)
    for dtype in (jnp.float32, jnp.bfloat16, jnp.float16):
        reason = _dispatch.device_reason(dtype)
        assert reason is not None and "needs a CUDA device" in reason and "'cpu'" in reason


def _fake_cuda(monkeypatch, cc, jax_triton_error=None):
    """device_reason's view of a CUDA machine of compute capability `cc` (no GPU needed)."""
    monkeypatch.setattr(_dispatch._launch, "on_cuda", lambda: True)
    monkeypatch.setattr(_dispatch._launch, "compute_capability", lambda: cc)

    def jax_triton():
        if jax_triton_error is not None:
            raise ImportError(jax_triton_error)

    monkeypatch.setattr(_dispatch._launch, "_jax_triton", jax_triton)


def test_bf16_needs_ampere_or_newer_and_other_dtypes_do_not(monkeypatch):
    _fake_cuda(monkeypatch, (7, 5))  # Turing: no bf16 tensor-core dot
    reason = _dispatch.device_reason(jnp.bfloat16)
    assert reason == "bf16 tensor-core dots need compute capability >= 8.0, found (7, 5)"
    assert _dispatch.device_reason(jnp.float16) is None
    _fake_cuda(monkeypatch, (9, 0))  # Hopper: everything runs
    assert _dispatch.device_reason(jnp.bfloat16) is None
    assert _dispatch.resolve_impl("auto", "int4_matmul", None) == "triton"


def test_a_missing_jax_triton_is_the_reason_auto_falls_back(monkeypatch):
    _fake_cuda(monkeypatch, (9, 0), jax_triton_error="jax_triton is not installed: pip install ...")
    reason = _dispatch.device_reason(jnp.float32)
    assert reason == "jax_triton is not installed: pip install ..."
    assert _dispatch.resolve_impl("auto", "int4_matmul", reason) == "reference"
    with pytest.raises(ValueError, match="cannot run: jax_triton is not installed"):
        _dispatch.resolve_impl("triton", "int4_matmul", reason)
