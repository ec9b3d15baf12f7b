"""Compile raw Triton kernels for Hopper (sm_90) without a GPU: the script and its test runner.

``python tests/kernels/hopper_compile.py specs.json results.json`` with TRITON_INTERPRET=0 (the
test suite's interpreter would otherwise replace every ``@triton.jit`` at import); the compile
tests call ``compile_for_hopper`` (the script in a subprocess) and ``check_compiled``. Each spec::

    {"id": "gemm_nf4", "module": "compactlm.kernels.int4_kernels",
     "kernel": "_int4_matmul_kernel", "pointers": {"x_ptr": "bf16", ...},
     "constexprs": {"BLOCK_SIZE_M": 128, ...}, "num_warps": 8, "num_stages": 3}

Parameters that are neither pointers nor constexprs compile as i32 scalars; pointers are marked
16-byte aligned, as jax-triton launches them. Each result records the kernel's static shared
memory, whether the PTX uses wgmma / mma.sync, and the error text if compilation failed. ptxas
ships in the triton wheel, so this produces a real cubin. Shared by the int4 and 2:4 tests.
"""

import importlib
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


def split_config(cfg: dict) -> tuple[dict, dict]:
    """An int4_configs row → (constexprs, launch options num_warps / num_stages)."""
    launch = {k: cfg[k] for k in ("num_warps", "num_stages") if k in cfg}
    return {k: v for k, v in cfg.items() if k not in launch}, launch


def compile_for_hopper(specs: list[dict], tmp: Path) -> dict:
    """Run this script on ``specs`` in a subprocess (interpreter off); results by spec id."""
    (tmp / "specs.json").write_text(json.dumps(specs))
    env = dict(os.environ, TRITON_INTERPRET="0", PYTHONPATH=str(ROOT),
               TRITON_CACHE_DIR=str(tmp / "cache"))  # fmt: skip
    proc = subprocess.run(
        [sys.executable, __file__, str(tmp / "specs.json"), str(tmp / "out.json")],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((tmp / "out.json").read_text())


def check_compiled(result: dict, mma: str) -> None:
    """It compiled, fits Hopper's shared memory, and tl.dot lowered to ``mma``: "wgmma"; "mma"
    (wgmma or mma.sync: tiles of 16 rows sit below wgmma's m64 shape); "fma" (no tensor-core
    instruction: a GEMV, or IEEE f32, which has none)."""
    assert result["ok"], result.get("error")
    assert 0 < result["shared"] <= HOPPER_SMEM_PER_BLOCK, result
    tensor_core = result["wgmma"] or result["mma_sync"]
    expected = {"wgmma": result["wgmma"], "mma": tensor_core, "fma": not tensor_core}[mma]
    assert expected, f"expected {mma}: {result}"


def compile_one(spec: dict) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget

    fn = getattr(importlib.import_module(spec["module"]), spec["kernel"])
    pointers, constexprs = spec["pointers"], spec["constexprs"]
    signature = {}
    for name in fn.arg_names:
        if name in pointers:
            signature[name] = "*" + pointers[name]
        elif name in constexprs:
            signature[name] = "constexpr"
        else:
            signature[name] = "i32"
    attrs = {(fn.arg_names.index(p),): [["tt.divisibility", 16]] for p in pointers}
    src = triton.compiler.ASTSource(fn, signature, constexprs=constexprs, attrs=attrs)
    options = {k: spec[k] for k in ("num_warps", "num_stages") if k in spec}
    t0 = time.perf_counter()
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)
    ptx = compiled.asm["ptx"]
    return {
        "ok": True,
        "shared": compiled.metadata.shared,
        "wgmma": "wgmma.mma_async" in ptx,
        "mma_sync": "mma.sync" in ptx,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def main(spec_path: str, out_path: str) -> None:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("run with TRITON_INTERPRET=0: the interpreter replaces @triton.jit")
    with open(spec_path) as f:
        specs = json.load(f)
    results = {}
    for spec in specs:
        try:
            results[spec["id"]] = compile_one(spec)
        except Exception:  # report every kernel, not just the first failure
            results[spec["id"]] = {"ok": False, "error": traceback.format_exc()[-3000:]}
    with open(out_path, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:3])
