"""Compile the production launches for Hopper (sm_90) without a GPU: the script and its test runner.

``python tests/kernels/hopper_compile.py cases.json results.json`` with TRITON_INTERPRET=0 (the
test suite's interpreter would otherwise replace every ``@triton.jit`` at import); the compile
tests call ``compile_for_hopper`` (the script in a subprocess) and ``check_compiled``. Each case
names a production launcher and a problem::

    {"id": "gemv_int4", "op": "int4", "format": "int4", "symmetric": true,
     "M": 1, "N": 8192, "K": 8192, "group_size": 128, "backward": false}

The launcher runs with the launch config production would pick on an H200 (``int4_matmul._config``
/ ``sparse24_matmul._config`` under ``_launch.target(90, kind="h200")``) and a ``launch`` that
records each kernel call instead of running it. Each recorded call is specialised by
**jax-triton's own** ``KernelSpecialization.build`` (ints equal to 1 become constexprs, pointers
are 16-byte aligned, other ints plain i32, as on the GPU), then compiled with ``triton.compile``
for ``GPUTarget("cuda", 90, 32)`` (ptxas ships in the wheel: a real cubin). Each result records
the kernel, its static shared memory, whether the PTX uses wgmma / mma.sync, the registers and
spills, or the error text. Shared by the int4 and 2:4 tests.
"""

import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Opt-in dynamic + static shared memory per block on sm_90 (228 KB per SM, 1 KB reserved).
HOPPER_SMEM_PER_BLOCK = 227 * 1024


def compile_for_hopper(cases: list[dict], tmp: Path) -> dict:
    """Run this script on ``cases`` in a subprocess (interpreter off); results by case id."""
    (tmp / "cases.json").write_text(json.dumps(cases))
    env = dict(os.environ, TRITON_INTERPRET="0", JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
               TRITON_CACHE_DIR=str(tmp / "cache"))  # fmt: skip
    proc = subprocess.run(
        [sys.executable, __file__, str(tmp / "cases.json"), str(tmp / "out.json")],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((tmp / "out.json").read_text())


def check_compiled(result: dict, kernel: str, mma: str) -> None:
    """It compiled as ``kernel``, fits Hopper's shared memory, no spills, and lowered its dots to
    ``mma``: "wgmma" (Hopper's warpgroup MMA), "mma.sync" (16-row tiles sit below wgmma's m64
    shape), or "none" (no tensor-core instruction: a GEMV, or IEEE f32, which has none)."""
    assert result["ok"], result.get("error")
    assert result["kernel"] == kernel, result
    assert 0 <= result["shared"] <= HOPPER_SMEM_PER_BLOCK, result
    assert result["spills"] == 0, result
    got = "wgmma" if result["wgmma"] else "mma.sync" if result["mma_sync"] else "none"
    assert got == mma, f"expected {mma}, the PTX has {got}: {result}"


# ============================================================================ subprocess side


def _operands(case: dict):
    """(activation, weight operands) of the case, zero-filled with the production dtypes."""
    import jax.numpy as jnp
    import numpy as np

    m, n, k, g = case["M"], case["N"], case["K"], case.get("group_size")
    act = jnp.dtype(case.get("dtype", "bfloat16"))
    rows = n if case.get("backward") else k
    x = np.zeros((m, rows), act)
    sdt = jnp.dtype(case.get("scale_dtype", "bfloat16"))
    if case["op"] == "int4":
        g = g or k
        qw, s = np.zeros((k // 8, n), np.int32), np.zeros((k // g, n), sdt)
        z = None if case.get("symmetric", True) else np.zeros((k // g, n), sdt)
        return x, (qw, s, z)
    meta = np.zeros((k // 32, n), np.int32)
    if case["format"] == "sparse24":
        return x, (np.zeros((k // 2, n), act), meta, None, None)
    g = g or k // 2
    s = np.zeros((k // 2 // g, n), sdt)
    z = None if case.get("symmetric", True) else np.zeros_like(s)
    return x, (np.zeros((k // 16, n), np.int32), meta, s, z)


def record_launches(case: dict) -> list[dict]:
    """Run the production launcher for ``case``; return the kernel calls it would make."""
    import numpy as np

    from compactlm.kernels import _launch, int4_configs
    from compactlm.kernels import int4_kernels as IK
    from compactlm.kernels import int4_matmul as I
    from compactlm.kernels import sparse24_kernels as SK
    from compactlm.kernels import sparse24_matmul as S

    calls = []

    def launch(kernel, grid, *args, out_shape, **meta):
        calls.append(dict(kernel=kernel, grid=grid, args=args, out_shape=out_shape, meta=meta))
        shape, dtype = (
            (out_shape.shape, out_shape.dtype) if hasattr(out_shape, "shape") else (out_shape)
        )
        return np.zeros(shape, dtype)

    x, weights = _operands(case)
    m, n, k, fmt, bwd = case["M"], case["N"], case["K"], case["format"], case.get("backward")
    with _launch.target(90, kind="h200"):
        if case["op"] == "int4":
            cfg = I._config(m, n, k, fmt, backward=bool(bwd))
            if bwd:
                IK.launch_int4_matmul_bwd(launch, x, *weights, format=fmt, config=cfg)
            elif m <= int4_configs.gemv_max_m(fmt):
                IK.launch_int4_gemv(launch, x, *weights, format=fmt, config=cfg)
            else:
                IK.launch_int4_matmul(launch, x, *weights, format=fmt, config=cfg)
        else:
            cfg = S._config(m, n, k, fmt, backward=bool(bwd))
            if bwd:
                SK.launch_sparse24_matmul_bwd(launch, x, *weights, config=cfg)
            else:
                SK.launch_sparse24_matmul(launch, x, *weights, out_dtype=x.dtype, config=cfg)
    return calls


def specialise(call: dict):
    """jax-triton 0.4.1's own specialisation of one recorded call: (fn, spec, options)."""
    import jax
    import numpy as np
    from jax import tree_util

    from compactlm.kernels import _launch

    _launch._jax_triton()  # the triton 3.6 shim first
    import triton
    from jax_triton import triton_lib

    fn = triton_lib.TritonFunction(call["kernel"])
    shapes = call["out_shape"] if isinstance(call["out_shape"], list) else [call["out_shape"]]

    def aval(a):
        shape, dtype = (a.shape, a.dtype) if hasattr(a, "shape") else a
        return jax.core.ShapedArray(tuple(shape), np.dtype(dtype))

    args = [aval(a) if hasattr(a, "shape") and np.ndim(a) else a for a in call["args"]]
    args += [aval(s) for s in shapes]  # outputs bind the trailing pointer parameters
    options = {k: call["meta"].pop(k) for k in ("num_warps", "num_stages") if k in call["meta"]}
    target = triton.backends.compiler.GPUTarget("cuda", 90, 32)
    spec = triton_lib.KernelSpecialization.build(
        fn.non_constexpr_param_names, args, list(map(triton_lib.get_type_id, args)),
        tree_util.tree_structure(args), [(i,) for i in range(len(args))], call["meta"],
        triton.compiler.make_backend(target),
    )  # fmt: skip
    return fn.fn, spec, target, options


def compile_case(case: dict) -> dict:
    import tempfile

    import triton

    from compactlm.benchmarks.sass import assemble

    results = []
    for call in record_launches(case):
        fn, spec, target, options = specialise(call)
        t0 = time.perf_counter()
        src = triton.compiler.ASTSource(fn, spec.signature, spec.constants, spec.attrs)
        compiled = triton.compile(src, target=target, options=options)
        ptx = compiled.asm["ptx"]
        with tempfile.TemporaryDirectory() as tmp:  # ptxas -v: registers and spills
            _, res = assemble(ptx, Path(tmp), compiled.metadata.name)
        results.append({
            "ok": True,
            "kernel": compiled.metadata.name,
            "shared": compiled.metadata.shared,
            "registers": res["registers"],
            "spills": res["spill_stores"] + res["spill_loads"],
            "wgmma": "wgmma.mma_async" in ptx,
            "mma_sync": "mma.sync" in ptx,
            # codebook_f32's register table (inline PTX): shuffles in the PTX, shared-memory ops
            "shuffles": ptx.count("shfl.sync.idx.b32"),
            "shared_ops": ptx.count("st.shared") + ptx.count("ld.shared"),
            "specialised": sorted(n for n in spec.constants if n in fn.arg_names and not
                                  fn.params[fn.arg_names.index(n)].is_constexpr),
            "seconds": round(time.perf_counter() - t0, 2),
        })  # fmt: skip
    assert len(results) == 1, f"expected one kernel launch, got {len(results)}"
    return results[0]


def main(case_path: str, out_path: str) -> None:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("run with TRITON_INTERPRET=0: the interpreter replaces @triton.jit")
    results = {}
    for case in json.loads(Path(case_path).read_text()):
        try:
            results[case["id"]] = compile_case(case)
        except Exception:  # report every case, not just the first failure
            results[case["id"]] = {"ok": False, "error": traceback.format_exc()[-3000:]}
    Path(out_path).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:3])
