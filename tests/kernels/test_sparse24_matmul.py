"""2:4 sparse matmul: references vs NumPy, every raw Triton kernel (interpreter), custom_vjp."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from compactlm.kernels import packing
from compactlm.kernels import sparse24_kernels as SK
from compactlm.kernels import sparse24_matmul as S
from compactlm.kernels._interpret import interpret_call
from tests.kernels.test_sparse24_packing import random_24
from tests.tolerances import tol

# triton 3.6's interpreter turns a 1-element loop bound into an index with int(ndarray), which
# numpy >= 1.25 deprecates; harmless here (the bound is a scalar) and not ours to fix.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Conversion of an array with ndim > 0 to a scalar:DeprecationWarning"
)

# Small explicit blocks (STYLE: tests call the raw kernels, production the tuned configs). K is a
# multiple of 32 by contract (64 for int4 with G = 32), so K tiles of 128 make K ragged too.
GEMM = dict(BLOCK_SIZE_M=16, BLOCK_SIZE_N=16, BLOCK_SIZE_K=128, GROUP_SIZE_M=2)
DECODE_DOT = dict(BLOCK_SIZE_N=16, BLOCK_SIZE_K=128, SPLIT_K=3)
DECODE_GEMV = dict(BLOCK_SIZE_N=16, BLOCK_SIZE_K=64, SPLIT_K=2)  # gemv_kernels.py, M <= 4
BWD = dict(BLOCK_SIZE_M=16, BLOCK_SIZE_N=16, BLOCK_SIZE_K=128, GROUP_SIZE_M=2)
G = 32  # int4 group over the compressed axis: K/2 must be a multiple


def make_weight(variant, K, N, seed=0, values_dtype=np.float32, group_size=G):
    """(dense W in f32 as the kernels see it, weight operands for the launchers)."""
    w = random_24(np.random.default_rng(seed), K, N, values_dtype)
    if variant == "values":
        values, meta = packing.compress_24(jnp.asarray(w))
        return w.astype(np.float32), (values, meta, None, None)
    qvalues, meta, scales, zeros = packing.quantize_sparse24_int4(
        jnp.asarray(w), group_size, symmetric=variant == "int4_sym"
    )
    dense = numpy_dequantize(qvalues, meta, scales, zeros, group_size or K // 2)
    return dense, (qvalues, meta, scales, zeros)


def numpy_dequantize(qvalues, meta, scales, zeros, group_size=G):
    """Independent NumPy reading of the int4+2:4 contract (nibbles, groups, 2:4 positions)."""
    q, meta, s = np.asarray(qvalues), np.asarray(meta), np.asarray(scales, np.float32)
    K2, N = q.shape[0] * 8, q.shape[1]
    codes = np.stack([(q >> (4 * j)) & 0xF for j in range(8)], axis=1).reshape(K2, N)
    if zeros is None:
        codes = np.where(codes >= 8, codes - 16, codes).astype(np.float32)
    else:
        zeros = np.repeat(np.asarray(zeros, np.float32), group_size, axis=0)
        codes = codes.astype(np.float32) - zeros
    return numpy_decompress(codes * np.repeat(s, group_size, axis=0), meta)


def numpy_decompress(values, meta):
    K, N = values.shape[0] * 2, values.shape[1]
    w = np.zeros((K, N), values.dtype)
    cols = np.arange(N)
    for g in range(K // 4):
        nib = (meta[g // 8] >> (4 * (g % 8))) & 0xF
        w[4 * g + (nib & 3), cols] = values[2 * g]
        w[4 * g + (nib >> 2), cols] = values[2 * g + 1]
    return w


def reference(x, variant, ops, out_dtype=jnp.float32):
    values, meta, scales, zeros = ops
    if variant == "values":
        return S.reference_sparse24_matmul(x, values, meta, out_dtype=out_dtype)
    return S.reference_sparse24_int4_matmul(x, values, meta, scales, zeros, out_dtype=out_dtype)


VARIANTS = ["values", "int4_sym", "int4_affine"]


# ------------------------------------------------------------------------------ references


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("x_dtype", ["float32", "bfloat16"])
def test_reference_vs_numpy_dense(variant, x_dtype):
    K, N = 128, 24
    dense, ops = make_weight(variant, K, N, seed=1)
    x = np.random.default_rng(2).standard_normal((2, 3, K)).astype(np.float32)
    xd = np.dtype(ml_dtypes.bfloat16) if x_dtype == "bfloat16" else np.dtype(np.float32)
    x = x.astype(xd)
    y = reference(jnp.asarray(x), variant, ops)
    assert y.shape == (2, 3, N) and y.dtype == jnp.float32
    # The spec: W in x's dtype, exact products, f32-or-better accumulation.
    want = x.astype(np.float64) @ dense.astype(xd).astype(np.float64)
    np.testing.assert_allclose(np.asarray(y), want, **tol("f32_reorder"))
    assert reference(jnp.asarray(x), variant, ops, out_dtype=None).dtype == xd


def test_reference_values_dtype_is_kept_bit_exact():
    """bf16 values with f32 activations: W is upcast exactly, nothing is rounded on the way."""
    dense, ops = make_weight("values", 64, 8, seed=3, values_dtype=ml_dtypes.bfloat16)
    assert ops[0].dtype == jnp.bfloat16
    eye = jnp.eye(64, dtype=jnp.float32)
    np.testing.assert_array_equal(np.asarray(reference(eye, "values", ops)), dense)


# ------------------------------------------------------------------------------ raw kernels


def launch(path, variant, x, ops, out_dtype=jnp.float32):
    if path == "gemm":
        return SK._launch_matmul(
            interpret_call, x, *ops, out_dtype=out_dtype, config=GEMM, dot_fp32=True
        )
    if path == "decode_gemv":  # no tl.dot: the interpreter's f32 products need no upcast flag
        return SK._launch_gemv(interpret_call, x, *ops, out_dtype=out_dtype, config=DECODE_GEMV)
    return SK._launch_decode(
        interpret_call, x, *ops, out_dtype=out_dtype, config=DECODE_DOT, dot_fp32=True
    )


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(
    "path,M,N,K",
    [
        ("gemm", 37, 45, 160),  # M, N, K all ragged against the 16 / 16 / 128 tiles
        ("gemm", 17, 9, 96),  # N and K smaller than one tile
        ("decode_dot", 5, 45, 192),  # 2 splits (1 K tile each), the second short
        ("decode_dot", 16, 33, 160),
        ("decode_gemv", 1, 45, 192),
        ("decode_gemv", 3, 20, 96),
    ],
)
def test_kernel_vs_reference(variant, path, M, N, K):
    if variant != "values":
        K = -(-K // (2 * G)) * 2 * G  # int4 groups need K/2 % 32 == 0
    _, ops = make_weight(variant, K, N, seed=M + N)
    x = jnp.asarray(np.random.default_rng(M).standard_normal((M, K)).astype(np.float32))
    y = launch(path, variant, x, ops)
    assert y.shape == (M, N)
    np.testing.assert_allclose(np.asarray(y), np.asarray(reference(x, variant, ops)), **tol(
        "sparse24_kernel"))  # fmt: skip


@pytest.mark.parametrize(
    "K,group_size,path",
    [
        (256, 64, "gemm"),  # 2·G = BLOCK_SIZE_K: one scale row per tile
        (256, 64, "decode_dot"),
        (96, None, "decode_gemv"),  # per-channel, K/2 = 48 < BLOCK_SIZE_K / 2, not a power of 2
        (96, None, "bwd"),
        (320, None, "gemm"),  # per-channel, K/2 = 160, ragged K
        (320, None, "bwd"),
    ],
)
def test_kernel_int4_group_sizes(K, group_size, path):
    dense, ops = make_weight("int4_affine", K, 20, seed=K, group_size=group_size)
    M = 3 if path.startswith("decode") else 21
    x = jnp.asarray(np.random.default_rng(K).standard_normal((M, K)).astype(np.float32))
    if path == "bwd":
        dy = jnp.asarray(np.random.default_rng(1).standard_normal((M, 20)).astype(np.float32))
        got = SK._launch_matmul_bwd(interpret_call, dy, *ops, config=BWD, dot_fp32=True)
        want = S._reference_backward(dy, *ops, jnp.float32)
    else:
        got, want = launch(path, "int4_affine", x, ops), reference(x, "int4_affine", ops)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), **tol("sparse24_kernel"))
    np.testing.assert_allclose(
        np.asarray(reference(x, "int4_affine", ops)), np.asarray(x) @ dense, **tol("f32_reorder")
    )


@pytest.mark.parametrize(
    "values_dtype,path",
    [(ml_dtypes.bfloat16, "gemm"), (np.float16, "decode_dot"), (ml_dtypes.bfloat16, "decode_gemv")],
)
def test_kernel_f16_activations_and_16bit_values(values_dtype, path):
    """f16 x, 16-bit values cast to f16 (exact for f16, rounding for bf16) as the spec says."""
    M = 33 if path == "gemm" else 4
    _, ops = make_weight("values", 96, 24, seed=5, values_dtype=values_dtype)
    x = jnp.asarray(np.random.default_rng(6).standard_normal((M, 96)).astype(np.float16))
    for out_dtype, name in ((jnp.float32, "float32"), (jnp.float16, "float16")):
        y = launch(path, "values", x, ops, out_dtype=out_dtype)
        assert y.dtype == out_dtype
        want = reference(x, "values", ops, out_dtype=out_dtype)
        np.testing.assert_allclose(
            np.asarray(y, np.float32), np.asarray(want, np.float32), **tol("sparse24_kernel", name)
        )


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("M,N,K", [(37, 45, 192), (5, 20, 96)])
def test_backward_kernel_vs_reference(variant, M, N, K):
    if variant != "values":
        K = -(-K // (2 * G)) * 2 * G
    dense, ops = make_weight(variant, K, N, seed=7)
    dy = jnp.asarray(np.random.default_rng(8).standard_normal((M, N)).astype(np.float32))
    dx = SK._launch_matmul_bwd(interpret_call, dy, *ops, config=BWD, dot_fp32=True)
    assert dx.shape == (M, K)
    want = S._reference_backward(dy, *ops, jnp.float32)
    np.testing.assert_allclose(np.asarray(dx), np.asarray(want), **tol("sparse24_kernel"))
    np.testing.assert_allclose(np.asarray(want), np.asarray(dy) @ dense.T, **tol("f32_reorder"))


def test_triton_forward_routes_decode_and_gemm():
    """The launch code production runs, with a config holding both kernels' keys."""
    _, ops = make_weight("int4_affine", 128, 20, seed=9)
    cfg = {**GEMM, "SPLIT_K": 2}
    for M in (2, 16, 17):
        x = jnp.asarray(np.random.default_rng(M).standard_normal((M, 128)).astype(np.float32))
        y = SK.launch_sparse24_matmul(
            interpret_call, x, *ops, out_dtype=jnp.float32, config=cfg, dot_fp32=True
        )
        np.testing.assert_allclose(
            np.asarray(y), np.asarray(reference(x, "int4_affine", ops)), **tol("sparse24_kernel")
        )
    assert SK.launch_sparse24_matmul(
        interpret_call, x[:0], *ops, out_dtype=jnp.float32, config=cfg
    ).shape == (0, 20)


# ------------------------------------------------------------------------------ dispatch + vjp


@pytest.mark.parametrize("variant", VARIANTS)
def test_custom_vjp_grad_matches_dense_dot(variant):
    K, N = 64, 12
    dense, ops = make_weight(variant, K, N, seed=10)
    x = jnp.asarray(np.random.default_rng(11).standard_normal((2, 5, K)).astype(np.float32))
    ct = jnp.asarray(np.random.default_rng(12).standard_normal((2, 5, N)).astype(np.float32))

    def f(x, *ops):
        if variant == "values":
            y = S.sparse24_matmul(x, ops[0], ops[1])
        else:
            y = S.sparse24_int4_matmul(x, *ops, group_size=G)
        return jnp.sum(y * ct)

    got = jax.jit(jax.grad(f))(x, *ops)
    want = jax.grad(lambda x: jnp.sum(jnp.dot(x, jnp.asarray(dense)) * ct))(x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), **tol("f32_reorder"))
    # Frozen weights: the float weight operand (values, or the int4 scales) gets what a
    # reference holding it under stop_gradient gets, although y depends on it (live gradient).
    i = 0 if variant == "values" else 2
    g_w = jax.grad(f, argnums=1 + i)(x, *ops)

    def ref(w, stop):
        w = jax.lax.stop_gradient(w) if stop else w
        return jnp.sum(reference(x, variant, (*ops[:i], w, *ops[i + 1 :])) * ct)

    np.testing.assert_array_equal(np.asarray(g_w), np.asarray(jax.grad(ref)(ops[i], True)))
    assert np.abs(np.asarray(jax.grad(ref)(ops[i], False), np.float32)).max() > 1e-3


def test_auto_is_reference_on_cpu_and_keeps_dtype():
    _, ops = make_weight("values", 64, 8, seed=13, values_dtype=ml_dtypes.bfloat16)
    x = jnp.ones((3, 64), jnp.bfloat16)
    y = S.sparse24_matmul(x, ops[0], ops[1])
    assert y.dtype == jnp.bfloat16
    np.testing.assert_array_equal(
        np.asarray(y), np.asarray(S.sparse24_matmul(x, ops[0], ops[1], impl="reference"))
    )


def test_supports_names_constraints():
    assert S.supports((3, 8, 64), jnp.bfloat16) and S.supports(
        (1, 8, 64), jnp.float32, "sparse24_int4"
    )
    assert "multiple of 32" in S.unsupported_reason((3, 8, 48), jnp.bfloat16)
    assert "not bf16, f16 or f32" in S.unsupported_reason((3, 8, 64), jnp.int8)
    assert "format" in S.unsupported_reason((3, 8, 64), jnp.float32, "sparse24_nf4")
    assert "int32 offsets" in S.unsupported_reason((2**20, 4096, 4096), jnp.bfloat16)


def test_dispatch_errors():
    _, (values, meta, _, _) = make_weight("values", 64, 8)
    x = jnp.ones((2, 64))
    with pytest.raises(ValueError, match=r"matmul\(impl='triton'\) cannot run: .*CUDA device"):
        S.sparse24_matmul(x, values, meta, impl="triton")
    with pytest.raises(ValueError, match="unknown impl 'cuda'; valid: auto, triton, reference"):
        S.sparse24_matmul(x, values, meta, impl="cuda")
    with pytest.raises(ValueError, match="x has 32 features but the 2:4 weight has K=64"):
        S.sparse24_matmul(jnp.ones((2, 32)), values, meta)
    with pytest.raises(ValueError, match="values shape"):
        S.sparse24_matmul(x, values[:16], meta)
    _, (q, m, s, z) = make_weight("int4_affine", 128, 8)
    with pytest.raises(ValueError, match="group_size=64 disagrees"):
        S.sparse24_int4_matmul(jnp.ones((2, 128)), q, m, s, z, group_size=64)
    with pytest.raises(ValueError, match="qvalues must be int32"):
        S.sparse24_int4_matmul(jnp.ones((2, 128)), s, m, s, z)
    with pytest.raises(ValueError, match="decode kernel serves M <= 16"):
        SK._launch_decode(
            interpret_call, jnp.ones((17, 128)), q, m, s, z, out_dtype=jnp.float32, config=GEMM
        )
