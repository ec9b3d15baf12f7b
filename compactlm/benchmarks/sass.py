"""SASS instruction budget of the decode kernels: compiled as jax-triton does for sm_90, counted.

Why (docs/architecture.md §5): a decode matmul is memory bound only if each SM can issue the
instructions for the weights it streams. An H200 streams ~4.3 TB/s over 132 SMs at ~1.98 GHz, ~16.5
bytes per SM per clock, and issues 128 thread-instructions per SM per clock (4 schedulers × 32
lanes), so a kernel may spend ~4.0 thread-instructions per int4 weight (4.125 bits with bf16 scales
per 128), ~4.5 for NF4 / FP4 (4.25 bits at blocks of 64), ~8.8 per dense-equivalent weight for 2:4
bf16 (9 bits) and ~3.0 for int4+2:4 (``BUDGETS``). Over budget the kernel is issue-bound.

How, without a GPU: each case calls the production dispatch (``int4_matmul(impl="triton")``,
``sparse24_matmul`` ...) at M = 1, N = K = 8192 under ``jax.export(platforms=["cuda"])`` inside
``_launch.target(90, kind="h200")``, so jax-triton 0.4.1 itself specialises the kernel (ints equal
to 1 become constexprs, pointers 16-byte aligned, other ints plain i32) and lowers it to PTX; the
PTX is captured from jax-triton's ``_compile_kernel``, assembled with the ptxas of the triton
wheel for ``sm_90a`` (the target line jax-triton's PTX carries) and disassembled with its
cuobjdump. The hot loop is the largest backward branch; per iteration a program consumes one
``BLOCK_SIZE_K × BLOCK_SIZE_N`` dense-equivalent weight tile for BLOCK_SIZE_M rows of x (the
GEMVs: one row), so per weight of W the op issues

    warp-instructions in the loop × 32 × num_warps / (BK · BN) × ceil(M / BLOCK_SIZE_M).

If ptxas unrolled the loop this over-counts (safe direction). "program" adds the straight-line
code outside the loop, amortised over the weights one program owns. Lowering for "cuda" needs
jaxlib's ``gpu_triton`` from the jax-cuda13 plugin, installed ``--no-deps`` by
scripts/bootstrap.sh into ``<venv>/cuda-export``; the work runs in a subprocess with the Triton
interpreter off and that folder on its path.

CLI: ``compactlm bench kernels sass=1 [formats=int4,nf4] [ms=1] [shapes=8192x8192] [out=DIR]``.
"""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from compactlm.models.config import STORAGE_FORMATS

# The packed storage formats (models/config.py, the one vocabulary), with int4's affine packing
# option (zero points) as its own row.
FORMATS: tuple[str, ...] = (
    "int4",
    "int4_affine",
    *[f for f in STORAGE_FORMATS if f not in ("dense", "int4")],
)
# Thread-instructions per dense-equivalent weight an H200 SM can issue while streaming at the
# measured-class 4.3 TB/s (module docstring); the H100 (3.35 TB/s) is ~30 % looser.
BUDGETS: dict[str, float] = {
    "int4": 4.0,
    "int4_affine": 4.0,
    "nf4": 4.5,
    "fp4": 4.5,
    "sparse24": 8.8,
    "sparse24_int4": 3.0,
}
KIND = "h200"  # whose launch-config rows the compile uses (int4_configs)
COMPUTE_CAPABILITY = 90
PLUGIN_DIR = Path(os.environ.get("COMPACTLM_CUDA_EXPORT_DIR", Path(sys.prefix) / "cuda-export"))


class SassError(RuntimeError):
    """The SASS count cannot run here (plugin missing, compile failed); one-line message."""


# ============================================================================ worker side
# Runs in the subprocess (interpreter off, plugin importable): builds the abstract operands of
# one (format, M, N, K) case and calls the production dispatch under jax.export.


def _case(format: str, m: int, n: int, k: int):
    """(function, abstract arguments) calling the production dispatch for ``format``."""
    import jax
    import jax.numpy as jnp

    from compactlm.kernels.int4_matmul import int4_matmul
    from compactlm.kernels.sparse24_matmul import sparse24_int4_matmul, sparse24_matmul

    def aval(shape, dtype):
        return jax.ShapeDtypeStruct(shape, dtype)

    bf16, i32 = jnp.bfloat16, jnp.int32
    x = aval((m, k), bf16)
    if format in ("int4", "int4_affine", "nf4", "fp4"):
        g = 128 if format.startswith("int4") else 64  # the formats' default groups (packing)
        kernel_format = "int4" if format.startswith("int4") else format
        qw, s = aval((k // 8, n), i32), aval((k // g, n), bf16)
        if format == "int4_affine":
            z = aval((k // g, n), bf16)
            fn = lambda x, qw, s, z: int4_matmul(x, qw, s, z, impl="triton")  # noqa: E731
            return fn, [x, qw, s, z]
        fn = lambda x, qw, s: int4_matmul(x, qw, s, format=kernel_format, impl="triton")  # noqa: E731
        return fn, [x, qw, s]
    meta = aval((k // 32, n), i32)
    if format == "sparse24":
        fn = lambda x, v, meta: sparse24_matmul(x, v, meta, impl="triton")  # noqa: E731
        return fn, [x, aval((k // 2, n), bf16), meta]
    if format == "sparse24_int4":
        fn = lambda x, q, meta, s: sparse24_int4_matmul(x, q, meta, s, impl="triton")  # noqa: E731
        return fn, [x, aval((k // 16, n), i32), meta, aval((k // 2 // 128, n), bf16)]
    raise SassError(f"unknown format {format!r}; valid: {', '.join(FORMATS)}")


def capture(format: str, m: int, n: int, k: int) -> list[dict[str, Any]]:
    """Export the case for CUDA and return what jax-triton compiled: one dict per kernel."""
    import jax
    from jax import export

    from compactlm.kernels import _launch

    _launch._jax_triton()  # the triton 3.6 shim must precede jax_triton's own import
    from jax_triton import triton_lib

    compiled, launches = [], []
    original_compile = triton_lib.TritonFunction._compile_kernel
    original_call = _launch.triton_call

    def compile_kernel(self, spec, gpu_target, backend, backend_options):
        out = original_compile(self, spec, gpu_target, backend, backend_options)
        result = out[3]
        compiled.append(
            dict(
                kernel=result.name,
                signature=dict(spec.signature),
                constants={k: v for k, v in spec.constants.items() if _jsonable(v)},
                divisible_16=sorted(
                    self.non_constexpr_param_names[i[0]]
                    for i, a in spec.attrs.items()
                    if ["tt.divisibility", 16] in a
                ),
                pointers=sorted(n for n, t in spec.signature.items() if t.startswith("*")),
                # scalars jax-triton baked in (== 1), and those left plain i32 (no hint)
                specialised=sorted(set(spec.constants) - self.constexpr_param_names),
                i32=sorted(name for name, t in spec.signature.items() if t == "i32"),
                num_warps=backend_options["num_warps"],
                num_stages=backend_options["num_stages"],
                shared=result.shared_mem_bytes,
                ptx=result.binary,
            )
        )
        return out

    def triton_call(kernel, grid, *args, out_shape, **meta):
        launches.append(dict(kernel=kernel.__name__, grid=list(grid)))
        return original_call(kernel, grid, *args, out_shape=out_shape, **meta)

    fn, args = _case(format, m, n, k)
    for name, module in list(sys.modules.items()):  # compile afresh: fp4 shares nf4's binary
        if name.startswith("compactlm.kernels."):
            for obj in vars(module).values():
                getattr(obj, "_jT_kernel_cache", {}).clear()
    checks = [export.DisabledSafetyCheck.custom_call("triton_kernel_call_ffi")]
    triton_lib.TritonFunction._compile_kernel = compile_kernel
    _launch.triton_call = triton_call
    try:
        with _launch.target(COMPUTE_CAPABILITY, kind=KIND):
            export.export(jax.jit(fn), platforms=["cuda"], disabled_checks=checks)(*args)
    finally:
        triton_lib.TritonFunction._compile_kernel = original_compile
        _launch.triton_call = original_call
    grids = {launch["kernel"]: launch["grid"] for launch in launches}
    for c in compiled:
        c["grid"] = grids.get(c["kernel"])
    return compiled


def _jsonable(v: Any) -> bool:
    return isinstance(v, (bool, int, float, str)) or v is None


# ============================================================================ SASS analysis


def _nvidia_bin(tool: str) -> str:
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / tool
    if not path.exists():
        raise SassError(f"{tool} not found in the triton wheel ({path})")
    return str(path)


def assemble(ptx: str, workdir: Path, name: str) -> tuple[bytes, dict[str, int]]:
    """PTX → cubin with the wheel's ptxas (Triton's flags); ptxas -v's registers and spills."""
    arch = re.search(r"^\s*\.target\s+(\w+)", ptx, re.M)
    src, cubin = workdir / f"{name}.ptx", workdir / f"{name}.cubin"
    src.write_text(ptx)
    gpu = arch.group(1) if arch else "sm_90a"
    cmd = [_nvidia_bin("ptxas"), "-lineinfo", "-v", f"--gpu-name={gpu}", str(src), "-o", str(cubin)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SassError(f"ptxas failed on {name}: {proc.stderr.strip().splitlines()[-1:]}")
    log = proc.stderr

    def grab(pattern: str) -> int:
        found = re.search(pattern, log)
        return int(found.group(1)) if found else 0

    res = dict(
        registers=grab(r"Used (\d+) registers"),
        stack_frame=grab(r"(\d+) bytes stack frame"),
        spill_stores=grab(r"(\d+) bytes spill stores"),
        spill_loads=grab(r"(\d+) bytes spill loads"),
    )
    return cubin.read_bytes(), res


_INSTR = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_BRANCH = re.compile(r"\bBRA\b(?:\.\S+)?\s+(?:`\(\.L_x_\d+\)|(0x[0-9a-f]+))")


def parse_sass(text: str) -> list[tuple[int, str]]:
    """``cuobjdump -sass`` text → [(address, instruction text without predicate)]."""
    out = []
    for line in text.splitlines():
        found = _INSTR.match(line)
        if found:
            out.append((int(found.group(1), 16), found.group(2)))
    return out


def opcode(instr: str) -> str:
    """``@!P2 LDG.E.U16 R10, [R8.64]`` → ``LDG.E.U16``."""
    parts = instr.split()
    if parts and parts[0].startswith("@"):
        parts = parts[1:]
    return parts[0] if parts else ""


def hot_loop(instrs: list[tuple[int, str]]) -> tuple[int, int] | None:
    """(first, last) instruction index of the largest backward-branch loop, or None."""
    index = {addr: i for i, (addr, _) in enumerate(instrs)}
    best = None
    for i, (addr, text) in enumerate(instrs):
        if not opcode(text).startswith("BRA"):
            continue
        target = re.search(r"(0x[0-9a-f]+)\s*$", text)
        if not target:
            continue
        t = int(target.group(1), 16)
        if t < addr and t in index and (best is None or i - index[t] > best[1] - best[0]):
            best = (index[t], i)
    return best


def load_bytes(op: str) -> int | None:
    """Bytes per thread of a global load (LDG / LDGSTS), None for other instructions."""
    if not (op.startswith("LDG.") or op == "LDG" or op.startswith("LDGSTS")):
        return None
    if op.startswith("LDGDEPBAR"):
        return None
    for suffix, size in ((".128", 16), (".64", 8), (".U16", 2), (".S16", 2), (".U8", 1),
                         (".S8", 1)):  # fmt: skip
        if suffix in op:
            return size
    return 4


def analyse(compiled: dict[str, Any], cubin: bytes, workdir: Path, m: int, n: int, k: int) -> dict:
    """Loop and program instruction counts per weight, loads, shared memory of one kernel."""
    path = workdir / f"{compiled['kernel']}.cubin"
    path.write_bytes(cubin)
    sass = subprocess.run([_nvidia_bin("cuobjdump"), "-sass", str(path)], capture_output=True,
                          text=True, check=True).stdout  # fmt: skip
    instrs = parse_sass(sass)
    while instrs and opcode(instrs[-1][1]) in ("NOP", "BRA"):  # the trailing self-loop padding
        instrs.pop()
    c = compiled["constants"]
    bk, bn = c.get("BLOCK_SIZE_K"), c.get("BLOCK_SIZE_N")
    threads = 32 * compiled["num_warps"]
    grid = compiled.get("grid") or [1]
    programs = 1
    for g in grid:
        programs *= g
    loop = hot_loop(instrs)
    body = instrs[loop[0] : loop[1] + 1] if loop else []
    ops = collections.Counter(opcode(t) for _, t in body)
    loads = collections.Counter()
    for op, count in ops.items():
        size = load_bytes(op)
        if size is not None:
            loads[f"{op.split('.')[0]}.{size}B"] += count
    load_total = sum(int(key.split(".")[1][:-1]) * v for key, v in loads.items())
    wide = sum(16 * v for key, v in loads.items() if key.endswith(".16B"))
    per_tile = bk * bn if bk and bn else None
    # Programs that cover BLOCK_SIZE_M rows of x each (the GEMVs: 1) re-read and re-decode W
    # for every row block: per weight of W the op issues that many times the loop's work.
    reads = -(-m // c.get("BLOCK_SIZE_M", 1))
    weights_per_program = k * n * reads / programs
    row = dict(
        kernel=compiled["kernel"],
        tile=f"{c.get('BLOCK_SIZE_M', 1)}x{bn}x{bk}",  # the GEMVs: one row of x per program
        warps=compiled["num_warps"],
        stages=compiled["num_stages"],
        grid="x".join(map(str, grid)),
        loop_instructions=len(body),
        total_instructions=len(instrs),
        loop_per_weight=reads * len(body) * threads / per_tile if per_tile and body else None,
        w_reads=reads,
        program_per_weight=None,
        loop_loads=dict(sorted(loads.items())),
        wide_load_share=wide / load_total if load_total else None,
        loop_shared=sum(v for op, v in ops.items() if op.startswith(("STS", "LDS", "LDSM"))),
        loop_barriers=sum(v for op, v in ops.items() if op.startswith("BAR")),
        shared=compiled["shared"],
        divisible_16=compiled["divisible_16"],
        pointers=compiled["pointers"],
        specialised=compiled["specialised"],
        i32=compiled["i32"],
    )
    if per_tile:
        trips = weights_per_program / per_tile
        dynamic = len(instrs) - len(body) + len(body) * trips if body else len(instrs)
        row["program_per_weight"] = reads * dynamic * threads / weights_per_program
    return row


# ============================================================================ driver


def _worker(spec_path: str, out_path: str) -> None:
    """Subprocess entry: capture + analyse every case in the spec file; JSON rows out."""
    spec = json.loads(Path(spec_path).read_text())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for format in spec["formats"]:
            for m in spec["ms"]:
                n, k = spec["n"], spec["k"]
                base = dict(format=format, M=m, N=n, K=k, budget=BUDGETS.get(format))
                try:
                    kernels = capture(format, m, n, k)
                    for i, compiled in enumerate(kernels):
                        cubin, res = assemble(compiled["ptx"], Path(tmp), f"{format}_{m}_{i}")
                        row = analyse(compiled, cubin, Path(tmp), m, n, k)
                        rows.append(dict(base, **row, **res))
                except Exception as e:  # report every case, not just the first failure
                    rows.append(dict(base, error=f"{type(e).__name__}: {e}"[:500]))
                Path(out_path).write_text(json.dumps(rows, indent=1))  # progressively
    Path(out_path).write_text(json.dumps(rows, indent=1))


def run(
    formats: Sequence[str] = FORMATS,
    ms: Sequence[int] = (1,),
    n: int = 8192,
    k: int = 8192,
    out_dir: str | Path | None = None,
    *,
    timeout_s: float = 900,
) -> list[dict[str, Any]]:
    """Count SASS per weight for ``formats`` × ``ms`` at N × K; rows (and sass.md/.json)."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise SassError(f"unknown formats {unknown}; valid: {', '.join(FORMATS)}")
    if not (PLUGIN_DIR / "jax_cuda13_plugin").is_dir():
        raise SassError(
            f"the SASS count lowers for CUDA and needs jax-cuda13-plugin==0.11.2 and "
            f"jax-cuda13-pjrt installed --no-deps into {PLUGIN_DIR} (scripts/bootstrap.sh does)"
        )
    root = Path(__file__).resolve().parents[2]
    with tempfile.TemporaryDirectory() as tmp:
        spec, out = Path(tmp) / "spec.json", Path(tmp) / "rows.json"
        spec.write_text(json.dumps(dict(formats=list(formats), ms=list(ms), n=n, k=k)))
        path = os.pathsep.join([str(root), str(PLUGIN_DIR), os.environ.get("PYTHONPATH", "")])
        env = dict(os.environ, TRITON_INTERPRET="0", JAX_PLATFORMS="cpu", PYTHONPATH=path,
                   TRITON_CACHE_DIR=str(Path(tmp) / "cache"))  # fmt: skip
        proc = subprocess.run(
            [sys.executable, "-m", "compactlm.benchmarks.sass", str(spec), str(out)],
            env=env, capture_output=True, text=True, timeout=timeout_s,
        )  # fmt: skip
        if proc.returncode or not out.exists():
            tail = proc.stderr.strip().splitlines()[-1:] if proc.stderr else []
            raise SassError(f"the SASS worker failed (exit {proc.returncode}): {tail}")
        rows = json.loads(out.read_text())
    if out_dir is not None:
        out_path = Path(out_dir)
        out_path.mkdir(parents=True, exist_ok=True)
        (out_path / "sass.json").write_text(json.dumps(rows, indent=1))
        (out_path / "sass.md").write_text(table(rows) + "\n")
    return rows


def _fmt(v: Any, digits: int = 2) -> str:
    return "–" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table of ``run``'s rows (one per compiled kernel)."""
    head = ["format", "M", "kernel", "tile MxNxK", "warps", "grid", "loop instr", "instr/weight",
            "program", "budget", "met", "regs", "spill B", "smem B", "16B loads", "loop loads",
            "loop smem ops", "loop bars"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['format']} | {r['M']} | error: {r['error'][:120]} |")
            continue
        per = r["loop_per_weight"]
        met = None if per is None or r["budget"] is None else per <= r["budget"]
        spills = r["spill_stores"] + r["spill_loads"]
        wide = None if r["wide_load_share"] is None else f"{100 * r['wide_load_share']:.0f}%"
        loads = " ".join(f"{op}×{v}" for op, v in r["loop_loads"].items())
        cells = [r["format"], r["M"], r["kernel"], r["tile"], r["warps"], r["grid"],
                 r["loop_instructions"], _fmt(per), _fmt(r["program_per_weight"]),
                 _fmt(r["budget"], 1), {None: "–", True: "yes", False: "no"}[met],
                 r["registers"], spills, r["shared"], wide or "–", loads or "–",
                 r["loop_shared"], r["loop_barriers"]]  # fmt: skip
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    _worker(*sys.argv[1:3])
