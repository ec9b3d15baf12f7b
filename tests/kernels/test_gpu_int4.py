"""int4 / NF4 / FP4 Triton kernels on a GPU at bf16, real shapes (run by scripts/gpu_check.sh)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compactlm.kernels import _launch, packing
from compactlm.kernels import int4_matmul as I
from tests.tolerances import tol

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _needs_cuda():
    if not _launch.on_cuda():
        pytest.skip(f"needs a CUDA device; JAX's backend is {jax.default_backend()!r}")


VARIANTS = [("int4", True, 128), ("int4", False, 128), ("nf4", True, 64), ("fp4", True, 64)]
VARIANT_IDS = ["int4_sym", "int4_affine", "nf4", "fp4"]


def _packed(k, n, format, symmetric, g, scale_dtype=jnp.bfloat16, seed=0):
    w = np.random.default_rng(seed).standard_normal((k, n)).astype(np.float32)
    qw, s, z = packing.quantize(w, format, g, symmetric=symmetric)
    return qw, s.astype(scale_dtype), None if z is None else z.astype(scale_dtype)


def _x(m, k, dtype, seed=1):
    # 1/sqrt(K) keeps |y| ~ 1 so the bf16 rounding of y is ~4e-3 absolute.
    x = np.random.default_rng(seed).standard_normal((m, k)) / np.sqrt(k)
    return jnp.asarray(x, dtype)


def _close(got, want, dtype):
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                               **tol("int4_kernel_gpu", jnp.dtype(dtype).name))  # fmt: skip


@pytest.mark.parametrize("m", [1, 7, 16, 64, 333])
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_forward_bf16_4096(variant, m):
    format, symmetric, g = variant
    qw, s, z = _packed(4096, 4096, format, symmetric, g)
    x = _x(m, 4096, jnp.bfloat16)
    got = jax.jit(lambda x: I.int4_matmul(x, qw, s, z, format=format, impl="triton"))(x)
    want = I.reference_int4_matmul(x, qw, s, z, format=format)
    _close(got, want, jnp.bfloat16)


@pytest.mark.parametrize("m", [3, 200])
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_forward_ragged_llama_shape(variant, m):
    """N = 11008 is not a multiple of the 128-wide tiles; per-channel groups with K = 4104."""
    format, symmetric, _ = variant
    for k, n, g in [(4096, 11008, 64), (4104, 1000, None)]:
        qw, s, z = _packed(k, n, format, symmetric, g)
        x = _x(m, k, jnp.bfloat16)
        got = I.int4_matmul(x, qw, s, z, format=format, impl="triton")
        _close(got, I.reference_int4_matmul(x, qw, s, z, format=format), jnp.bfloat16)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.float32])
def test_forward_other_activation_dtypes(dtype):
    qw, s, z = _packed(2048, 1024, "int4", False, 128, scale_dtype=jnp.float32)
    for m in (4, 96):
        x = _x(m, 2048, dtype)
        got = I.int4_matmul(x, qw, s, z, impl="triton")
        _close(got, I.reference_int4_matmul(x, qw, s, z), dtype)


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_backward_bf16(variant):
    format, symmetric, g = variant
    qw, s, z = _packed(4096, 1536, format, symmetric, g)
    x = _x(256, 4096, jnp.bfloat16)
    dy = _x(256, 1536, jnp.bfloat16, seed=2)

    def vjp(impl):
        _, f = jax.vjp(lambda x: I.int4_matmul(x, qw, s, z, format=format, impl=impl), x)
        return f(dy)[0]

    _close(jax.jit(lambda: vjp("triton"))(), vjp("reference"), jnp.bfloat16)


def test_auto_picks_triton_on_cuda():
    qw, s, z = _packed(1024, 512, "nf4", True, 64)
    x = _x(8, 1024, jnp.bfloat16)
    text = jax.jit(lambda x: I.int4_matmul(x, qw, s, format="nf4")).lower(x).as_text()
    assert "triton_kernel_call" in text
