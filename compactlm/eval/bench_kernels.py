"""Kernel benchmark: packed-weight matmuls vs XLA's bf16 ``jnp.dot``, per shape, format and M.

For every (format, shape, M) it reports the median time of one call with the weights rotated
through enough copies to exceed L2 (``rotate_bytes``, 56 MB: H100's L2 is 50 MB), achieved
GB/s and TFLOP/s, the share of the device's bandwidth roofline, the speed-up over the bf16
``jnp.dot`` baseline on the same shape and M, and the error against the format's reference
(max |y − y_ref| / max |y_ref|). Results go to ``out_dir`` as CSV, a markdown table and a PNG
(speed-up vs M per format, with the bytes-moved roofline ratio as the ideal).

Formats are a registry (``FORMATS``: name → ``KernelFormat(prepare, op, bytes)``) so that the
2:4 kernels can ``register_format`` theirs. Standalone:
``python -m compactlm.eval.bench_kernels --formats int4,nf4 --shapes 4096x4096 --out runs/bench``.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from compactlm.eval import sass as sass_lib

# Bandwidth rooflines, TB/s (vendor peak HBM bandwidth of the SXM parts).
PEAK_BANDWIDTH_TBS = {"h100": 3.35, "h200": 4.8}
# (K, N) of x[M, K] @ W[K, N]; Llama-style MLP projections (d_model → d_ff and back).
SHAPES: dict[str, tuple[int, int]] = {
    "4096x4096": (4096, 4096),
    "8192x8192": (8192, 8192),
    "llama2_7b_mlp_up": (4096, 11008),
    "llama2_7b_mlp_down": (11008, 4096),
    "llama3_8b_mlp_up": (4096, 14336),
    "llama3_8b_mlp_down": (14336, 4096),
}
MS = (1, 4, 16, 64, 256, 1024)
ROTATE_BYTES = 56 * 2**20
MAX_COPIES = 32


class KernelFormat(NamedTuple):
    """How to benchmark one weight format.

    prepare(w[K, N] f32 numpy) → tuple of device arrays (the stored weight);
    op(x, weights, impl) → y[M, N] (impl: "auto" | "triton" | "reference");
    bytes(M, N, K) → bytes a memory-bound call must move (weights + x + y).
    """

    prepare: Callable[[np.ndarray], tuple[Any, ...]]
    op: Callable[[jax.Array, tuple[Any, ...], str], jax.Array]
    bytes: Callable[[int, int, int], int]


FORMATS: dict[str, KernelFormat] = {}


def register_format(name: str, fmt: KernelFormat) -> None:
    FORMATS[name] = fmt


def _act_bytes(m: int, n: int, k: int) -> int:
    return 2 * m * k + 2 * m * n  # bf16 x in, y out


def _bf16_format() -> KernelFormat:
    def prepare(w):
        return (jnp.asarray(w, jnp.bfloat16),)

    def op(x, weights, impl):
        return jnp.dot(x, weights[0], preferred_element_type=jnp.float32).astype(x.dtype)

    return KernelFormat(prepare, op, lambda m, n, k: 2 * k * n + _act_bytes(m, n, k))


def _packed_format(format: str, symmetric: bool, group_size: int) -> KernelFormat:
    from compactlm.kernels import packing
    from compactlm.kernels.int4_matmul import int4_matmul

    def prepare(w):
        qw, s, z = packing.quantize(w, format, group_size, symmetric=symmetric)
        # bf16 scales / zeros: what a served model stores (halves their bytes vs f32).
        return (qw, s.astype(jnp.bfloat16), None if z is None else z.astype(jnp.bfloat16))

    def op(x, weights, impl):
        qw, s, z = weights
        return int4_matmul(x, qw, s, z, format=format, impl=impl)

    def nbytes(m, n, k):
        per_group = 2 * (1 if symmetric or format != "int4" else 2)
        return k * n // 2 + per_group * (k // group_size) * n + _act_bytes(m, n, k)

    return KernelFormat(prepare, op, nbytes)


def _sparse24_format(int4: bool, group_size: int = 128) -> KernelFormat:
    """2:4 along K (magnitude-pruned W): bf16 values, or int4 values (symmetric, bf16 scales)."""
    from compactlm.kernels import packing
    from compactlm.kernels.sparse24_matmul import sparse24_int4_matmul, sparse24_matmul

    def prepare(w):
        w24 = packing.mask_24_magnitude(jnp.asarray(w))
        if not int4:
            return packing.compress_24(w24.astype(jnp.bfloat16))
        q, meta, s, _ = packing.quantize_sparse24_int4(w24, group_size)
        return q, meta, s.astype(jnp.bfloat16)

    def op(x, weights, impl):
        if not int4:
            return sparse24_matmul(x, *weights, impl=impl)
        return sparse24_int4_matmul(x, *weights, impl=impl)

    def nbytes(m, n, k):
        meta = k // 32 * n * 4  # one int32 of 2-bit position pairs per 32 rows
        values = k * n // 4 + 2 * (k // 2 // group_size) * n if int4 else k * n  # K/2 rows
        # vs bf16's 2·K·N: 56.25% (bf16 values), 19.1% (int4, bf16 scales; 19.5% with f32).
        return values + meta + _act_bytes(m, n, k)

    return KernelFormat(prepare, op, nbytes)


register_format("bf16", _bf16_format())
register_format("int4", _packed_format("int4", True, 128))
register_format("int4_affine", _packed_format("int4", False, 128))
register_format("nf4", _packed_format("nf4", True, 64))
register_format("fp4", _packed_format("fp4", True, 64))
register_format("sparse24", _sparse24_format(int4=False))
register_format("sparse24_int4", _sparse24_format(int4=True))


# ----------------------------------------------------------------------------- timing


def _time_rotated(fn, x, copies: Sequence[tuple[Any, ...]], repeats: int) -> float:
    """Median seconds per call; one jitted sweep calls ``fn`` once on every weight copy."""

    @jax.jit
    def sweep(x, copies):
        acc = jnp.zeros((), jnp.float32)
        for weights in copies:  # unrolled: each call reads a different buffer (no L2 reuse)
            acc = acc + fn(x, weights)[0, 0].astype(jnp.float32)
        return acc

    sweep(x, copies).block_until_ready()  # compile + warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sweep(x, copies).block_until_ready()
        times.append((time.perf_counter() - t0) / len(copies))
    return statistics.median(times)


def _device_kind() -> str:
    from compactlm.kernels import _launch

    return _launch.device_kind() if jax.default_backend() == "gpu" else jax.default_backend()


def _parse_shape(name: str) -> tuple[int, int]:
    """A name from ``SHAPES`` or ``"KxN"`` (e.g. ``"256x128"``)."""
    if name in SHAPES:
        return SHAPES[name]
    parts = name.split("x")
    if len(parts) == 2 and all(p.isdigit() for p in parts):
        return int(parts[0]), int(parts[1])
    raise ValueError(f"unknown shape {name!r}; known: {', '.join(SHAPES)}, or 'KxN'")


def run(
    formats: Sequence[str] = ("int4", "int4_affine", "nf4", "fp4"),
    shapes: Sequence[str] | dict[str, tuple[int, int]] = ("4096x4096", "8192x8192"),
    ms: Sequence[int] = MS,
    out_dir: str | Path = "runs/bench_kernels",
    *,
    impl: str = "auto",
    dtype: Any = jnp.bfloat16,
    rotate_bytes: int = ROTATE_BYTES,
    repeats: int = 10,
    time_budget_s: float | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Benchmark ``formats`` (plus the bf16 baseline) on ``shapes`` × ``ms``; write the report.

    ``shapes``: names from ``SHAPES`` or a dict name → (K, N). ``time_budget_s``: stop starting
    new shapes once exceeded (the report is still written). Returns the result rows.
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown formats {unknown}; registered: {', '.join(FORMATS)}")
    if not isinstance(shapes, dict):
        shapes = {s: _parse_shape(s) for s in shapes}
    kind = _device_kind()
    peak = PEAK_BANDWIDTH_TBS.get(kind)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for shape_name, (k, n) in shapes.items():
        if time_budget_s is not None and time.perf_counter() - start > time_budget_s:
            print(f"bench_kernels: time budget reached, skipping shape {shape_name}")
            continue
        w = (rng.standard_normal((k, n)) / math.sqrt(k)).astype(np.float32)
        prepared = {f: FORMATS[f].prepare(w) for f in ("bf16", *formats) if f in FORMATS}
        for m in ms:
            if time_budget_s is not None and time.perf_counter() - start > time_budget_s:
                print(f"bench_kernels: time budget reached, skipping {shape_name} M={m}")
                continue
            x = jnp.asarray(rng.standard_normal((m, k)), dtype)
            base_t = None
            for f in ("bf16", *[f for f in formats if f != "bf16"]):
                fmt, weights = FORMATS[f], prepared[f]
                wbytes = sum(a.nbytes for a in weights if a is not None)
                # Capped: the sweep is unrolled in one jit; tiny weights then stay in L2.
                n_copies = min(MAX_COPIES, max(2, math.ceil(rotate_bytes / max(wbytes, 1))))
                copies = [weights] + [
                    tuple(None if a is None else a.copy() for a in weights)
                    for _ in range(n_copies - 1)
                ]
                op_impl = "auto" if f == "bf16" else impl
                t = _time_rotated(lambda x, wt, fmt=fmt, i=op_impl: fmt.op(x, wt, i), x, copies,
                                  repeats)  # fmt: skip
                y = np.asarray(fmt.op(x, weights, op_impl), np.float32)
                y_ref = np.asarray(fmt.op(x, weights, "reference"), np.float32)
                err = float(np.abs(y - y_ref).max() / max(np.abs(y_ref).max(), 1e-30))
                nbytes = fmt.bytes(m, n, k)
                gbs = nbytes / t / 1e9
                if f == "bf16":
                    base_t = t
                rows.append(
                    dict(
                        device=kind, format=f, shape=shape_name, M=m, N=n, K=k,
                        impl=op_impl, time_us=t * 1e6, GB_s=gbs,
                        TFLOP_s=2 * m * n * k / t / 1e12,
                        pct_roofline=None if peak is None else 100 * gbs / (peak * 1e3),
                        speedup_vs_bf16=base_t / t, max_rel_err=err, bytes=nbytes,
                    )
                )  # fmt: skip
                del copies
    write_report(rows, out_dir, peak=peak, kind=kind)
    return rows


# ----------------------------------------------------------------------------- report


def write_report(rows: list[dict[str, Any]], out_dir: str | Path, *, peak, kind: str) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not rows:
        return
    with open(out / "bench_kernels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    cols = ["format", "shape", "M", "time_us", "GB_s", "TFLOP_s", "pct_roofline",
            "speedup_vs_bf16", "max_rel_err"]  # fmt: skip
    lines = [
        f"Device: {kind}; bandwidth roofline: "
        + (f"{peak} TB/s" if peak else "n/a (not a benchmarked GPU)")
        + f"; jax {jax.__version__}; {time.strftime('%Y-%m-%d')}",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for r in rows:
        cells = []
        for c in cols:
            v = r[c]
            if isinstance(v, float):
                v = f"{v:.3g}" if c == "max_rel_err" else f"{v:.2f}"
            cells.append("–" if v is None else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    (out / "bench_kernels.md").write_text("\n".join(lines) + "\n")
    _plot(rows, out / "bench_kernels.png", kind)


def _plot(rows: list[dict[str, Any]], path: Path, kind: str) -> None:
    try:
        import matplotlib
    except ImportError:  # the GPU image may not ship it; CSV and markdown still written
        print("bench_kernels: matplotlib not installed, no plot")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    fig, axes = plt.subplots(1, len(shapes), figsize=(4.5 * len(shapes), 3.6), squeeze=False)
    for ax, shape in zip(axes[0], shapes, strict=True):
        sub = [r for r in rows if r["shape"] == shape]
        base = {r["M"]: r["bytes"] for r in sub if r["format"] == "bf16"}
        for f in dict.fromkeys(r["format"] for r in sub):
            pts = sorted((r["M"], r["speedup_vs_bf16"]) for r in sub if r["format"] == f)
            ax.plot(*zip(*pts, strict=True), marker="o", label=f)
            if f != "bf16":  # memory-bound ideal: the ratio of bytes moved
                ideal = sorted((r["M"], base[r["M"]] / r["bytes"]) for r in sub
                               if r["format"] == f and r["M"] in base)  # fmt: skip
                ax.plot(*zip(*ideal, strict=True), ls="--", lw=0.8, color="gray")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("M (tokens)")
        ax.set_ylabel("speed-up vs bf16 jnp.dot")
        ax.set_title(f"{shape} ({kind}); dashed: bytes roofline")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@dataclasses.dataclass(frozen=True, kw_only=True)
class BenchKernelsConfig:
    """Options of ``compactlm bench kernels key=value ...`` (the CLI's one override language)."""

    formats: tuple[str, ...] = ("int4", "int4_affine", "nf4", "fp4", "sparse24", "sparse24_int4")
    # SHAPES names or "KxN"; None: 4096x4096,8192x8192 (timings), 8192x8192 (sass).
    shapes: tuple[str, ...] | None = None
    ms: tuple[int, ...] | None = None  # activation rows per call; None: MS (timings), 1 (sass)
    out: str = "runs/bench_kernels"  # folder for the CSV / markdown / PNG (or sass.md)
    impl: Literal["auto", "triton", "reference"] = "auto"  # the GPU run passes triton
    repeats: int = 10  # timed samples per row (the median is reported)
    time_budget_s: float | None = None  # stop starting new rows after this many seconds
    # The SASS instruction count instead of timings (compactlm/eval/sass.py; CPU is enough):
    # each decode kernel compiled as jax-triton specialises it for sm_90, at N = K = 8192.
    sass: bool = False

    def __post_init__(self):
        known = tuple(FORMATS) if not self.sass else sass_lib.FORMATS
        unknown = [f for f in self.formats if f not in known]
        if unknown:
            raise ValueError(f"unknown formats {unknown}; valid: {', '.join(known)}")
        for shape in self.shapes or ():
            _parse_shape(shape)
        if self.ms is not None and (not self.ms or min(self.ms) < 1):
            raise ValueError(f"ms must be positive row counts, got {self.ms}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")


def _legacy_flags(argv: Sequence[str]) -> list[str]:
    """``--formats int4 --time-budget-s 60`` (the old flags) → ``formats=int4 time_budget_s=60``."""
    out, items = [], list(argv)
    while items:
        item = items.pop(0)
        if item.startswith("--") and item not in ("--help",):
            key, eq, value = item[2:].partition("=")
            if not eq:
                value = items.pop(0) if items and not items[0].startswith("--") else "true"
            item = f"{key.replace('-', '_')}={value}"
        out.append(item)
    return out


def main(argv: Sequence[str] = ()) -> int:
    """``compactlm bench kernels [key=value ...]``; bad keys/values raise ConfigError (exit 2)."""
    from compactlm.config import ConfigError, apply_overrides

    cfg = apply_overrides(BenchKernelsConfig(), _legacy_flags(argv))
    if cfg.sass:
        try:
            for k, n in [_parse_shape(s) for s in cfg.shapes or ("8192x8192",)]:
                rows = sass_lib.run(cfg.formats, cfg.ms or (1,), n, k, cfg.out)
                print(f"SASS thread-instructions per weight, sm_90 as jax-triton 0.4.1 "
                      f"specialises, N={n} K={k}:\n{sass_lib.table(rows)}")  # fmt: skip
        except sass_lib.SassError as e:
            raise ConfigError(str(e)) from None
        return 0
    shapes, ms = cfg.shapes or ("4096x4096", "8192x8192"), cfg.ms or MS
    rows = run(cfg.formats, shapes, ms, cfg.out, impl=cfg.impl, repeats=cfg.repeats,
               time_budget_s=cfg.time_budget_s)  # fmt: skip
    print((Path(cfg.out) / "bench_kernels.md").read_text() if rows else "no rows")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
