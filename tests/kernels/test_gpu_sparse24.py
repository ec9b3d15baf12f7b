"""2:4 sparse Triton kernels on a GPU at bf16, real shapes (run by scripts/gpu_check.sh)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compactlm.kernels import _launch, packing
from compactlm.kernels import sparse24_matmul as S
from tests.tolerances import tol

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _needs_cuda():
    if not _launch.on_cuda():
        pytest.skip(f"needs a CUDA device; JAX's backend is {jax.default_backend()!r}")


VARIANTS = ["values", "int4_sym", "int4_affine"]


def _weights(k, n, variant, dtype=jnp.bfloat16, group_size=128, seed=0):
    w = np.random.default_rng(seed).standard_normal((k, n)).astype(np.float32)
    w = packing.mask_24_magnitude(jnp.asarray(w))
    if variant == "values":
        values, meta = packing.compress_24(w.astype(dtype))
        return values, meta, None, None
    q, meta, s, z = packing.quantize_sparse24_int4(w, group_size, symmetric=variant == "int4_sym")
    return q, meta, s.astype(dtype), None if z is None else z.astype(dtype)


def _x(m, k, dtype, seed=1):
    # 1/sqrt(K) keeps |y| ~ 1, so a bf16 ulp of y is ~4e-3.
    return jnp.asarray(np.random.default_rng(seed).standard_normal((m, k)) / np.sqrt(k), dtype)


def _call(x, ops, impl):
    values, meta, scales, zeros = ops
    if scales is None:
        return S.sparse24_matmul(x, values, meta, impl=impl)
    return S.sparse24_int4_matmul(x, values, meta, scales, zeros, impl=impl)


def _close(got, want, dtype):
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                               **tol("sparse24_kernel", jnp.dtype(dtype).name))  # fmt: skip


@pytest.mark.parametrize("m", [1, 7, 333])  # GEMV, 16-row tl.dot decode, GEMM (compiles add up)
@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_bf16_4096(variant, m):
    ops = _weights(4096, 4096, variant)
    x = _x(m, 4096, jnp.bfloat16)
    got = jax.jit(lambda x: _call(x, ops, "triton"))(x)
    _close(got, _call(x, ops, "reference"), jnp.bfloat16)


@pytest.mark.parametrize("m", [3, 200])
@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_ragged_llama_shape(variant, m):
    """N = 11008 is not a multiple of the tiles; per-channel int4 groups with K = 4128."""
    for k, n, g in [(4096, 11008, 64), (4128, 1000, None)]:
        ops = _weights(k, n, variant, group_size=g)
        x = _x(m, k, jnp.bfloat16)
        _close(_call(x, ops, "triton"), _call(x, ops, "reference"), jnp.bfloat16)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.float32])
def test_forward_other_activation_dtypes(dtype):
    for variant in ("values", "int4_affine"):
        ops = _weights(2048, 1024, variant, dtype=dtype)
        for m in (4, 96):
            x = _x(m, 2048, dtype)
            _close(_call(x, ops, "triton"), _call(x, ops, "reference"), dtype)


@pytest.mark.parametrize("variant", VARIANTS)
def test_backward_bf16(variant):
    ops = _weights(4096, 1536, variant)
    x = _x(256, 4096, jnp.bfloat16)
    dy = _x(256, 1536, jnp.bfloat16, seed=2)

    def vjp(impl):
        _, f = jax.vjp(lambda x: _call(x, ops, impl), x)
        return f(dy)[0]

    _close(jax.jit(lambda: vjp("triton"))(), vjp("reference"), jnp.bfloat16)


def test_auto_picks_triton_on_cuda():
    ops = _weights(1024, 512, "values")
    text = jax.jit(lambda x: _call(x, ops, "auto")).lower(_x(8, 1024, jnp.bfloat16)).as_text()
    assert "triton_kernel_call" in text
