"""jax.export of the real jax-triton int4 and 2:4 paths for platform "cuda"; a script, not a test.

``python tests/kernels/cuda_export.py {int4|sparse24} results.json`` with TRITON_INTERPRET=0 and
JAX_PLATFORMS=cpu (``export_support.run_export_script`` sets both): lowering for "cuda" needs the
jax-cuda13 plugin (it provides jaxlib's ``gpu_triton.TritonKernel``) but no GPU;
``_launch.target(90)`` supplies the compute capability that jax-triton would otherwise ask the
device for. Each case goes through the production launch code (GEMM, decode, custom_vjp
backward) and records whether the exported StableHLO holds the Triton custom call(s) and the
output avals, or the error.
"""

import json
import os
import sys
import traceback

K, N = 512, 256


def int4_cases(jax, jnp, np):
    """{name: (function, argument avals, number of Triton calls)} for int4 / NF4 / FP4."""
    from compactlm.kernels import _launch, int4_configs, packing
    from compactlm.kernels import int4_kernels as IK
    from compactlm.kernels import int4_matmul as I

    rng = np.random.default_rng(0)

    def packed(format, symmetric, g):
        w = rng.standard_normal((K, N)).astype(np.float32)
        qw, s, z = packing.quantize(w, format, g, symmetric=symmetric)
        return [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in (qw, s, z) if a is not None]

    def x(m):
        return jax.ShapeDtypeStruct((m, K), jnp.bfloat16)

    def forward(format, config):
        def f(x, qw, s, z=None):
            return IK.launch_int4_matmul(
                _launch.triton_call, x, qw, s, z, format=format, config=config
            )

        return f

    def grad(format):
        def loss(x, qw, s):
            return I._int4_matmul_vjp(x, qw, s, None, format, "triton").astype(jnp.float32).sum()

        return jax.value_and_grad(loss)

    gemm_cfg = int4_configs.get_config("h100", 64, N, K, "int4")
    decode_cfg = dict(int4_configs.get_config("h100", 8, N, K, "nf4"), SPLIT_K=4)
    gemv_cfg = int4_configs.get_config("h100", 1, N, K, "int4")

    def gemv(x, qw, s, z=None):
        return IK.launch_int4_gemv(_launch.triton_call, x, qw, s, z, format="int4",
                                   config=dict(gemv_cfg, SPLIT_K=2))  # fmt: skip

    return {
        "gemm_int4_affine_bf16": (
            forward("int4", gemm_cfg),
            [x(64), *packed("int4", False, 128)],
            1,
        ),
        "decode_nf4_splitk": (forward("nf4", decode_cfg), [x(8), *packed("nf4", True, 64)], 1),
        "gemv_int4_affine": (gemv, [x(1), *packed("int4", False, 128)], 1),
        # Forward and backward kernels both appear: two Triton custom calls.
        "grad_fp4_fwd_and_bwd": (grad("fp4"), [x(128), *packed("fp4", True, 64)], 2),
    }


def sparse24_cases(jax, jnp, np):
    """The same for 2:4 (bf16 values, int4 values), with the production configs."""
    from compactlm.kernels import _launch, packing
    from compactlm.kernels import sparse24_kernels as SK
    from compactlm.kernels import sparse24_matmul as S

    w = packing.mask_24_magnitude(jnp.asarray(np.random.default_rng(0).standard_normal((K, N))))
    values, meta = packing.compress_24(w.astype(jnp.bfloat16))
    q, meta4, s, z = packing.quantize_sparse24_int4(w.astype(jnp.float32), 128, symmetric=False)
    s, z = s.astype(jnp.bfloat16), z.astype(jnp.bfloat16)
    bf16 = jnp.dtype(jnp.bfloat16)

    def forward(*weights):
        def f(x):
            cfg = S._config(x.shape[0], N, K, S._format(weights[2]))
            return SK.launch_sparse24_matmul(
                _launch.triton_call, x, *weights, out_dtype=x.dtype, config=cfg
            )

        return f

    def grad(*weights):
        def loss(x):
            return S._sparse24_core(x, *weights, "triton", bf16, bf16).astype(jnp.float32).sum()

        return jax.value_and_grad(loss)

    def x(m):
        return [jax.ShapeDtypeStruct((m, K), jnp.bfloat16)]

    return {
        "gemm_values_bf16": (forward(values, meta, None, None), x(64), 1),
        "gemm_int4_affine": (forward(q, meta4, s, z), x(333), 1),
        "decode_gemv_values": (forward(values, meta, None, None), x(1), 1),
        "decode_dot_int4_sym": (forward(q, meta4, s, None), x(7), 1),
        # Forward and backward kernels: two Triton custom calls.
        "grad_values_fwd_and_bwd": (grad(values, meta, None, None), x(128), 2),
        "grad_int4_fwd_and_bwd": (grad(q, meta4, s, z), x(128), 2),
    }


def main(suite: str, out_path: str) -> None:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("run with TRITON_INTERPRET=0: the interpreter replaces @triton.jit")
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import export

    from compactlm.kernels import _launch

    cases = {"int4": int4_cases, "sparse24": sparse24_cases}[suite](jax, jnp, np)
    results = {}
    checks = [export.DisabledSafetyCheck.custom_call("triton_kernel_call_ffi")]
    for name, (fn, args, n_calls) in cases.items():
        try:
            with _launch.target(90):
                exp = export.export(jax.jit(fn), platforms=["cuda"], disabled_checks=checks)(*args)
            text = exp.mlir_module()
            results[name] = {
                "ok": True,
                "platforms": list(exp.platforms),
                "triton_calls": text.count("stablehlo.custom_call @triton_kernel_call"),
                "expected_calls": n_calls,
                "out_avals": [str(a) for a in exp.out_avals],
            }
        except Exception:
            results[name] = {"ok": False, "error": traceback.format_exc()[-3000:]}
    with open(out_path, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:3])
