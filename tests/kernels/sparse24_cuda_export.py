"""jax.export of the real jax-triton 2:4 path for platform "cuda"; a script, not a test.

``python tests/kernels/sparse24_cuda_export.py results.json`` with TRITON_INTERPRET=0 and
JAX_PLATFORMS=cpu (see cuda_export.py, its int4 twin). The cases go through the production
launch code with the production configs (int4_configs' defaults: no GPU means no device kind),
so the GEMM, both decode flavours and the custom_vjp backward all lower and compile for sm_90.
"""

import json
import os
import sys
import traceback


def main(out_path: str) -> None:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("run with TRITON_INTERPRET=0: the interpreter replaces @triton.jit")
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import export

    from compactlm.kernels import _launch, packing
    from compactlm.kernels import sparse24_kernels as SK
    from compactlm.kernels import sparse24_matmul as S

    k, n = 512, 256
    w = packing.mask_24_magnitude(jnp.asarray(np.random.default_rng(0).standard_normal((k, n))))
    values, meta = packing.compress_24(w.astype(jnp.bfloat16))
    q, meta4, s, z = packing.quantize_sparse24_int4(w.astype(jnp.float32), 128, symmetric=False)
    s, z = s.astype(jnp.bfloat16), z.astype(jnp.bfloat16)
    bf16 = jnp.dtype(jnp.bfloat16)

    def forward(*weights):
        def f(x):
            cfg = S._config(x.shape[0], n, k, S._format(weights[2]))
            return SK.launch_sparse24_matmul(
                _launch.triton_call, x, *weights, out_dtype=x.dtype, config=cfg
            )

        return f

    def grad(*weights):
        def loss(x):
            return S._sparse24_core(x, *weights, "triton", bf16, bf16).astype(jnp.float32).sum()

        return jax.value_and_grad(loss)

    def x(m):
        return jax.ShapeDtypeStruct((m, k), jnp.bfloat16)

    cases = {
        "gemm_values_bf16": (forward(values, meta, None, None), x(64), 1),
        "gemm_int4_affine": (forward(q, meta4, s, z), x(333), 1),
        "decode_gemv_values": (forward(values, meta, None, None), x(1), 1),
        "decode_dot_int4_sym": (forward(q, meta4, s, None), x(7), 1),
        # Forward and backward kernels: two Triton custom calls.
        "grad_values_fwd_and_bwd": (grad(values, meta, None, None), x(128), 2),
        "grad_int4_fwd_and_bwd": (grad(q, meta4, s, z), x(128), 2),
    }
    results = {}
    checks = [export.DisabledSafetyCheck.custom_call("triton_kernel_call_ffi")]
    for name, (fn, arg, n_calls) in cases.items():
        try:
            with _launch.target(90):
                exp = export.export(jax.jit(fn), platforms=["cuda"], disabled_checks=checks)(arg)
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
    main(sys.argv[1])
