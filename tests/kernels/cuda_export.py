"""jax.export of the real jax-triton int4 path for platform "cuda"; a script, not a test.

``python tests/kernels/cuda_export.py results.json`` with TRITON_INTERPRET=0 and
JAX_PLATFORMS=cpu: lowering for "cuda" needs the jax-cuda13 plugin (it provides jaxlib's
``gpu_triton.TritonKernel``) but no GPU; ``_launch.target(90)`` supplies the compute capability
that jax-triton would otherwise ask the device for. Each case records whether the exported
StableHLO holds the Triton custom call(s) and the output avals, or the error.
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

    from compactlm.kernels import _launch, int4_configs, packing
    from compactlm.kernels import int4_kernels as IK
    from compactlm.kernels import int4_matmul as I

    rng = np.random.default_rng(0)
    k, n = 512, 256

    def packed(format, symmetric, g):
        w = rng.standard_normal((k, n)).astype(np.float32)
        return packing.quantize(w, format, g, symmetric=symmetric)

    def sds(a, dtype=None):
        return jax.ShapeDtypeStruct(a.shape, dtype or a.dtype)

    cases = {}
    qw, s, z = packed("int4", False, 128)
    cases["gemm_int4_affine_bf16"] = (
        lambda x, qw, s, z: IK.launch_int4_matmul(
            _launch.triton_call, x, qw, s, z, format="int4",
            config=int4_configs.get_config("h100", 64, n, k, "int4"),
        ),
        (jax.ShapeDtypeStruct((64, k), jnp.bfloat16), sds(qw), sds(s), sds(z)), 1,
    )  # fmt: skip
    qw4, s4, _ = packed("nf4", True, 64)
    decode_cfg = dict(int4_configs.get_config("h100", 4, n, k, "nf4"), SPLIT_K=4)
    cases["decode_nf4_splitk"] = (
        lambda x, qw, s: IK.launch_int4_matmul(
            _launch.triton_call, x, qw, s, None, format="nf4", config=decode_cfg
        ),
        (jax.ShapeDtypeStruct((4, k), jnp.bfloat16), sds(qw4), sds(s4)), 1,
    )  # fmt: skip
    qwf, sf, _ = packed("fp4", True, 64)

    def grad_fp4(x, qw, s):
        def loss(x):
            return I._int4_matmul_vjp(x, qw, s, None, "fp4", "triton").astype(jnp.float32).sum()

        return jax.value_and_grad(loss)(x)

    # Forward and backward kernels both appear: two Triton custom calls.
    cases["grad_fp4_fwd_and_bwd"] = (
        grad_fp4, (jax.ShapeDtypeStruct((128, k), jnp.bfloat16), sds(qwf), sds(sf)), 2,
    )  # fmt: skip

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
    main(sys.argv[1])
