"""int4 / NF4 / FP4 matmul: raw Triton kernels (interpreter) vs the reference; vjp; dispatch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compactlm.kernels import int4_kernels as IK
from compactlm.kernels import int4_matmul as I
from compactlm.kernels import packing as P
from compactlm.kernels._interpret import interpret_call
from tests.tolerances import tol

# triton 3.6's interpreter takes int() of 1-element arrays for runtime loop bounds (the reason
# for numpy < 2.4, docs/architecture.md §3); numpy 2.3 warns about it on every launch.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Conversion of an array with ndim:DeprecationWarning"
)

# (format, symmetric): the four storage variants the kernels decode.
VARIANTS = [("int4", True), ("int4", False), ("nf4", True), ("fp4", True)]
VARIANT_IDS = ["int4_sym", "int4_affine", "nf4", "fp4"]

# Small explicit tiles (STYLE: tests call the raw kernel with small blocks).
GEMM = dict(BLOCK_SIZE_M=16, BLOCK_SIZE_N=16, BLOCK_SIZE_K=32, GROUP_SIZE_M=2)
DECODE = dict(BLOCK_SIZE_M=16, BLOCK_SIZE_N=16, BLOCK_SIZE_K=32, SPLIT_K=2)
KERNELS = {  # path: (launcher, config, reference); bwd takes dy[M, N] where the others take x[M, K]
    "gemm": (IK.launch_int4_matmul, GEMM, I.reference_int4_matmul),
    "decode": (IK.launch_int4_matmul, DECODE, I.reference_int4_matmul),
    "bwd": (IK.launch_int4_matmul_bwd, GEMM, I.reference_int4_matmul_bwd),
}

# Ragged in every dimension w.r.t. the 16 × 16 × 32 tiles. G = 32 == BLOCK_SIZE_K: one scale
# row per tile; per-channel groups (None) with ragged K: scales gathered per row.
SHAPES_GEMM = [(37, 40, 128, 32), (21, 24, 136, None)]  # (M, N, K, G)
# K = 200 with SPLIT_K = 2 leaves the second split a ragged last tile; G = 64 on K = 192
# broadcasts a scale row.
SHAPES_DECODE = [(24, 200, None), (40, 192, 64)]  # (N, K, G); M in 1, 3, 16
CASES = [  # (path, M, N, K, G)
    *[(path, m, n, k, g) for path in ("gemm", "bwd") for m, n, k, g in SHAPES_GEMM],
    *[("decode", m, n, k, g) for m in (1, 3, 16) for n, k, g in SHAPES_DECODE],
]


def _weights(rng, k, n, format, symmetric, group_size):
    w = rng.standard_normal((k, n)).astype(np.float32)
    qw, s, z = P.quantize(w, format, group_size, symmetric=symmetric)
    return np.asarray(qw), np.asarray(s), None if z is None else np.asarray(z)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.mark.parametrize("case", CASES, ids=["-".join(map(str, c)) for c in CASES])
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_kernel_matches_reference(rng, variant, case):
    (format, symmetric), (path, m, n, k, g) = variant, case
    launch, config, reference = KERNELS[path]
    qw, s, z = _weights(rng, k, n, format, symmetric, g)
    a = rng.standard_normal((m, n if path == "bwd" else k)).astype(np.float32)
    got = launch(interpret_call, a, qw, s, z, format=format, config=config, dot_fp32=True)
    want = reference(jnp.asarray(a), qw, s, z, format=format)
    np.testing.assert_allclose(got, want, **tol("int4_kernel"))


def test_gemm_kernel_f16_activations(rng):
    qw, s, z = _weights(rng, 64, 24, "int4", False, 32)
    x = rng.standard_normal((19, 64)).astype(np.float16)
    got = IK.launch_int4_matmul(
        interpret_call, x, qw, s, z, format="int4", config=GEMM, dot_fp32=True
    )
    assert got.dtype == np.float16
    want = I.reference_int4_matmul(jnp.asarray(x), qw, s, z, format="int4")
    np.testing.assert_allclose(got.astype(np.float32), want.astype(jnp.float32),
                               **tol("int4_kernel", "float16"))  # fmt: skip


def test_gemm_kernel_big_tiles_small_problem(rng):
    """Tiles larger than the problem in every dimension: everything is masked edges."""
    qw, s, z = _weights(rng, 64, 8, "nf4", True, 64)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    cfg = dict(BLOCK_SIZE_M=32, BLOCK_SIZE_N=32, BLOCK_SIZE_K=128, GROUP_SIZE_M=1)
    got = IK.launch_int4_matmul(
        interpret_call, x, qw, s, z, format="nf4", config=cfg, dot_fp32=True
    )
    want = I.reference_int4_matmul(jnp.asarray(x), qw, s, z, format="nf4")
    np.testing.assert_allclose(got, want, **tol("int4_kernel"))


@pytest.mark.parametrize("path", list(KERNELS))
def test_empty_batch_returns_empty_without_launching(rng, path):
    launch, config, reference = KERNELS[path]
    qw, s, z = _weights(rng, 64, 24, "int4", True, 32)
    a = np.zeros((0, 24 if path == "bwd" else 64), np.float32)

    def no_launch(*args, **kwargs):
        raise AssertionError("an empty grid must not be launched")

    got = launch(no_launch, a, qw, s, z, format="int4", config=config)
    want = reference(jnp.asarray(a), qw, s, z, format="int4")
    assert got.shape == want.shape and got.dtype == want.dtype


# ----------------------------------------------------------------------------- custom_vjp


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_gradient_matches_dequantized_dot(rng, variant):
    format, symmetric = variant
    qw, s, z = _weights(rng, 64, 24, format, symmetric, 32)
    x = jnp.asarray(rng.standard_normal((2, 3, 64)).astype(np.float32))
    w = P.dequantize(qw, s, z, format=format)

    def loss_kernel(x):
        return jnp.sum(jnp.sin(I.int4_matmul(x, qw, s, z, format=format, group_size=32)))

    def loss_dense(x):
        return jnp.sum(jnp.sin(jnp.dot(x, w, preferred_element_type=jnp.float32)))

    np.testing.assert_allclose(loss_kernel(x), loss_dense(x), **tol("f32_reorder"))
    g_kernel = jax.jit(jax.grad(loss_kernel))(x)
    np.testing.assert_allclose(g_kernel, jax.grad(loss_dense)(x), **tol("f32_reorder"))


def test_weight_is_frozen(rng):
    """The op treats W as a constant (QLoRA): its gradient equals the reference's with W under
    stop_gradient, while y does depend on the scales (so the zeros are a stop, not a no-op)."""
    qw, s, z = _weights(rng, 64, 8, "int4", False, 32)
    x = jnp.asarray(rng.standard_normal((2, 64)).astype(np.float32))
    ct = jnp.asarray(rng.standard_normal((2, 8)).astype(np.float32))

    def loss(op):
        return lambda x, s, z: jnp.sum(ct * op(x, s, z))

    def frozen_reference(x, s, z):
        s, z = jax.lax.stop_gradient(s), jax.lax.stop_gradient(z)
        return I.reference_int4_matmul(x, qw, s, z)

    got = jax.grad(loss(lambda x, s, z: I.int4_matmul(x, qw, s, z)), argnums=(0, 1, 2))(x, s, z)
    want = jax.grad(loss(frozen_reference), argnums=(0, 1, 2))(x, s, z)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, **tol("f32_reorder"))
    live = jax.grad(loss(lambda x, s, z: I.reference_int4_matmul(x, qw, s, z)), argnums=1)
    assert np.abs(live(x, s, z)).max() > 1e-3  # a trainable W would get this gradient


# ----------------------------------------------------------------------------- dispatch


def test_auto_is_reference_on_cpu(rng):
    qw, s, z = _weights(rng, 64, 8, "fp4", True, 64)
    x = jnp.asarray(rng.standard_normal((4, 64)).astype(np.float32))
    got = I.int4_matmul(x, qw, s, format="fp4")
    np.testing.assert_array_equal(got, I.reference_int4_matmul(x, qw, s, format="fp4"))


def test_dispatch_errors(rng):
    qw, s, z = _weights(rng, 64, 8, "int4", False, 32)
    x = jnp.ones((4, 64), jnp.float32)
    with pytest.raises(ValueError, match="impl='triton'.*CUDA device"):
        I.int4_matmul(x, qw, s, z, impl="triton")
    with pytest.raises(ValueError, match="unknown impl 'cuda'; valid: auto, triton, reference"):
        I.int4_matmul(x, qw, s, z, impl="cuda")
    with pytest.raises(ValueError, match="unknown format"):
        I.int4_matmul(x, qw, s, z, format="int3")
    with pytest.raises(ValueError, match="no zero point"):
        I.int4_matmul(x, qw, s, z, format="nf4")
    with pytest.raises(ValueError, match="x has 32 features but the packed weight has K=64"):
        I.int4_matmul(jnp.ones((4, 32)), qw, s, z)
    with pytest.raises(ValueError, match="group_size=64 disagrees"):
        I.int4_matmul(x, qw, s, z, group_size=64)


def test_supports():
    assert I.supports((1, 4096, 4096), jnp.bfloat16, "nf4")
    assert (
        I.unsupported_reason((4, 64, 64), jnp.int8)
        == "activation dtype int8 is not bf16, f16 or f32"
    )
    assert "multiple of 8" in I.unsupported_reason((4, 64, 60), jnp.float16)
    assert not I.supports((4, 64, 64), jnp.float32, "int8")


def test_interpret_call_generic():
    """The helper on its own, as the 2:4 kernels use it: pointer args, scalars, output last."""
    import triton
    import triton.language as tl

    @triton.jit
    def axpy(x_ptr, y_ptr, a, n, out_ptr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        x = tl.load(x_ptr + offs, mask=mask)
        y = tl.load(y_ptr + offs, mask=mask)
        tl.store(out_ptr + offs, a * x + y, mask=mask)

    x, y = np.arange(10, dtype=np.float32), np.ones(10, np.float32)
    out = interpret_call(
        axpy, lambda meta: (triton.cdiv(10, meta["BLOCK"]),), x, y, 2.0, 10,
        out_shape=jax.ShapeDtypeStruct((10,), jnp.float32), BLOCK=4, num_warps=1,
    )  # fmt: skip
    np.testing.assert_array_equal(out, 2 * x + y)
