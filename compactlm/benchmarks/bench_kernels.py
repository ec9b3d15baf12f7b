"""Kernel benchmark: packed-weight matmuls vs XLA's bf16 ``jnp.dot``, per shape, format and M.

What makes the figures honest (issue 7):
- The roofline is the bandwidth **measured in the same run** (``measure_bandwidth``: an
  elementwise pass over a buffer ≥ 4× L2, bytes read + written over the median time), beside
  the vendor figure; % of roofline is against the measured one.
- Each timed sample is one jitted function that makes ``calls`` (≥ 50) calls back to back,
  cycling through enough weight copies that their bytes exceed ``rotate_bytes`` (≥ 3× the
  H200's ~60 MB L2): dispatch overhead and L2 reuse vanish; the outputs are all returned, so no
  extra kernels sit between the calls. The median over ``repeats`` samples is reported (wall
  time around ``block_until_ready``; no device profiler here).
- Each row names the implementation that **actually ran** (``impl_used``: "triton" when the
  lowered program holds the Triton custom call, else "reference" or "xla"), whatever was
  requested: an ``impl="auto"`` that fell back to the reference says so. The GPU run passes
  ``impl=triton`` explicitly, which raises instead of falling back.
- The error is against an independent float64 NumPy product with the format's dequantized W
  (max |y − y64| / max |y64|), not the op's own reference.
- Rows are appended to ``bench_kernels.csv`` and printed as they are measured (a timeout keeps
  what was done); the markdown table and the PNG are written at the end.

Formats use the storage-format names of ``models/config.py`` (``dense`` is the bf16 baseline)
plus ``int4_affine`` (int4 with zero points, a packing option of the compression code); the
registry (``FORMATS``: name → ``KernelFormat``) takes more with ``register_format``.
CLI: ``compactlm bench kernels formats=int4,nf4 shapes=8192x8192 ms=1,16 impl=triton out=DIR``.
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

from compactlm.benchmarks import sass as sass_lib

# Vendor peak HBM bandwidth of the SXM parts, TB/s (for comparison; the roofline is measured).
PEAK_BANDWIDTH_TBS = {"h100": 3.35, "h200": 4.8}


def measure_cpu_bandwidth(nbytes: int = 256 * 2**20, repeats: int = 5) -> float:
    """Bytes/s of a large NumPy copy (read + write counted), best of `repeats`: the achievable
    DRAM bandwidth of this process (256 MiB: far beyond any cache here). The CPU's entry of the
    device table (`compactlm pick`, `bench decode peer=`)."""
    src = np.ones(nbytes // 8, np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best


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
L2_BYTES = 60 * 2**20  # H200 (H100: 50 MB)
ROTATE_BYTES = 3 * L2_BYTES  # weights cycled per timed sample
CALLS_PER_SAMPLE = 50
BANDWIDTH_BYTES = 4 * 2**30 // 16  # 256 MiB buffer for the measured roofline (≥ 4× L2)
MAX_COPIES = 64  # the sweep is unrolled in one jit; tiny weights then stay in L2 (said in the row)
BASELINE = "dense"


class KernelFormat(NamedTuple):
    """How to benchmark one weight format.

    prepare(w[K, N] f32 numpy) → tuple of device arrays (the stored weight);
    op(x, weights, impl) → y[M, N] (impl: "auto" | "triton" | "reference");
    bytes(M, N, K) → bytes a memory-bound call must move (weights + x + y);
    dense(weights) → the W[K, N] the op multiplies by, as f32 NumPy (for the f64 error check).
    """

    prepare: Callable[[np.ndarray], tuple[Any, ...]]
    op: Callable[[jax.Array, tuple[Any, ...], str], jax.Array]
    bytes: Callable[[int, int, int], int]
    dense: Callable[[tuple[Any, ...]], np.ndarray]


FORMATS: dict[str, KernelFormat] = {}


def register_format(name: str, fmt: KernelFormat) -> None:
    FORMATS[name] = fmt


def _act_bytes(m: int, n: int, k: int) -> int:
    return 2 * m * k + 2 * m * n  # bf16 x in, y out


def _dense_format() -> KernelFormat:
    def prepare(w):
        return (jnp.asarray(w, jnp.bfloat16),)

    def op(x, weights, impl):
        return jnp.dot(x, weights[0], preferred_element_type=jnp.float32).astype(x.dtype)

    def nbytes(m, n, k):
        return 2 * k * n + _act_bytes(m, n, k)

    return KernelFormat(prepare, op, nbytes, lambda weights: np.asarray(weights[0], np.float32))


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

    def dense(weights):
        qw, s, z = weights
        return np.asarray(packing.dequantize(qw, s, z, format=format), np.float32)

    return KernelFormat(prepare, op, nbytes, dense)


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

    def dense(weights):
        if not int4:
            return np.asarray(packing.decompress_24(*weights), np.float32)
        return np.asarray(packing.dequantize_sparse24_int4(*weights), np.float32)

    return KernelFormat(prepare, op, nbytes, dense)


register_format(BASELINE, _dense_format())
register_format("int4", _packed_format("int4", True, 128))
register_format("int4_affine", _packed_format("int4", False, 128))
register_format("nf4", _packed_format("nf4", True, 64))
register_format("fp4", _packed_format("fp4", True, 64))
register_format("sparse24", _sparse24_format(int4=False))
register_format("sparse24_int4", _sparse24_format(int4=True))


# ----------------------------------------------------------------------------- timing


def _median_sample(fn, args, calls: int, repeats: int) -> float:
    """Median seconds per call of ``fn(*args)`` (it makes ``calls`` calls); warmed up first."""
    jax.block_until_ready(fn(*args))  # compile + warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - t0) / calls)
    return statistics.median(times)


def measure_bandwidth(nbytes: int = BANDWIDTH_BYTES, calls: int = 10, repeats: int = 5) -> float:
    """Device memory bandwidth in bytes/s: ``a + 1`` over an f32 buffer of ``nbytes`` reads and
    writes it once per pass; ``calls`` passes per sample, kept apart by optimization barriers
    (XLA would otherwise fuse the chain into one pass)."""
    a = jnp.zeros((max(nbytes // 4, 1024),), jnp.float32)

    @jax.jit
    def passes(a):
        for _ in range(calls):
            a = jax.lax.optimization_barrier(a + 1.0)
        return a

    return 2 * a.nbytes / _median_sample(passes, (a,), calls, repeats)


def _time_rotated(fn, x, copies: Sequence[tuple[Any, ...]], calls: int, repeats: int) -> float:
    """Median seconds per call; one jitted sample makes ``calls`` calls, cycling weight copies.

    Every call gets a distinct (x, weights) pair (x is copied as often as needed) and every
    output is returned: identical calls would be merged by XLA's CSE, and extra ops between
    calls would be timed too.
    """
    n_x = -(-calls // len(copies))
    xs = [x] + [x.copy() for _ in range(n_x - 1)]

    @jax.jit
    def sample(xs, copies):
        return [fn(xs[i // len(copies)], copies[i % len(copies)]) for i in range(calls)]

    return _median_sample(sample, (xs, copies), calls, repeats)


def _impl_used(op, x, weights, impl: str) -> str:
    """What really runs: "triton" if the lowered program holds the Triton call, else ..."""
    text = jax.jit(lambda x, w: op(x, w, impl)).lower(x, weights).as_text()
    if "triton_kernel_call" in text:
        return "triton"
    return "xla" if impl == "xla" else "reference"


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


COLUMNS = ["device", "format", "shape", "M", "N", "K", "impl", "impl_used", "copies", "calls",
           "time_us", "GB_s", "TFLOP_s", "pct_bandwidth", "speedup_vs_dense", "max_rel_err",
           "bytes", "bandwidth_GB_s"]  # fmt: skip


def run(
    formats: Sequence[str] = ("int4", "int4_affine", "nf4", "fp4"),
    shapes: Sequence[str] | dict[str, tuple[int, int]] = ("4096x4096", "8192x8192"),
    ms: Sequence[int] = MS,
    out_dir: str | Path = "runs/bench_kernels",
    *,
    impl: str = "auto",
    dtype: Any = jnp.bfloat16,
    rotate_bytes: int = ROTATE_BYTES,
    calls: int = CALLS_PER_SAMPLE,
    repeats: int = 10,
    bandwidth_bytes: int = BANDWIDTH_BYTES,
    time_budget_s: float | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Benchmark ``formats`` (plus the dense bf16 baseline) on ``shapes`` × ``ms``.

    ``shapes``: names from ``SHAPES`` or a dict name → (K, N). ``time_budget_s``: stop starting
    new rows once exceeded. Rows go to ``out_dir/bench_kernels.csv`` (and stdout) as measured;
    the markdown table and PNG at the end. Returns the rows.
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown formats {unknown}; registered: {', '.join(FORMATS)}")
    if not isinstance(shapes, dict):
        shapes = {s: _parse_shape(s) for s in shapes}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kind = _device_kind()
    bandwidth = measure_bandwidth(bandwidth_bytes)
    print(f"bench_kernels: {kind}, measured bandwidth {bandwidth / 1e9:.1f} GB/s "
          f"(vendor {PEAK_BANDWIDTH_TBS.get(kind, '–')} TB/s)", flush=True)  # fmt: skip
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    csv_path = out / "bench_kernels.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for shape_name, (k, n) in shapes.items():
            w = (rng.standard_normal((k, n)) / math.sqrt(k)).astype(np.float32)
            prepared = {}
            for m in ms:
                if time_budget_s is not None and time.perf_counter() - start > time_budget_s:
                    print(f"bench_kernels: time budget reached, skipping {shape_name} M={m}")
                    continue
                x = jnp.asarray(rng.standard_normal((m, k)), dtype)
                x64 = np.asarray(x, np.float64)
                base_t = None
                for name in (BASELINE, *[f for f in formats if f != BASELINE]):
                    fmt = FORMATS[name]
                    if name not in prepared:
                        prepared[name] = fmt.prepare(w)
                    weights = prepared[name]
                    wbytes = sum(a.nbytes for a in weights if a is not None)
                    n_copies = min(MAX_COPIES, max(2, math.ceil(rotate_bytes / max(wbytes, 1))))
                    copies = [weights] + [
                        tuple(None if a is None else a.copy() for a in weights)
                        for _ in range(n_copies - 1)
                    ]
                    op_impl = "xla" if name == BASELINE else impl
                    op = fmt.op
                    t = _time_rotated(lambda x, wt, op=op, i=op_impl: op(x, wt, i), x, copies,
                                      max(calls, n_copies), repeats)  # fmt: skip
                    del copies
                    y = np.asarray(op(x, weights, op_impl), np.float64)
                    y64 = x64 @ fmt.dense(weights).astype(np.float64)
                    err = float(np.abs(y - y64).max() / max(np.abs(y64).max(), 1e-30))
                    nbytes = fmt.bytes(m, n, k)
                    gbs = nbytes / t / 1e9
                    if name == BASELINE:
                        base_t = t
                    row = dict(
                        device=kind, format=name, shape=shape_name, M=m, N=n, K=k,
                        impl=op_impl, impl_used=_impl_used(op, x, weights, op_impl),
                        copies=n_copies, calls=max(calls, n_copies), time_us=t * 1e6,
                        GB_s=gbs, TFLOP_s=2 * m * n * k / t / 1e12,
                        pct_bandwidth=100 * gbs * 1e9 / bandwidth,
                        speedup_vs_dense=base_t / t, max_rel_err=err, bytes=nbytes,
                        bandwidth_GB_s=bandwidth / 1e9,
                    )  # fmt: skip
                    rows.append(row)
                    writer.writerow(row)
                    f.flush()
                    print("  " + " ".join(f"{c}={_cell(c, row[c])}" for c in COLUMNS[1:16]),
                          flush=True)  # fmt: skip
    write_report(rows, out, bandwidth=bandwidth, kind=kind)
    return rows


# ----------------------------------------------------------------------------- report


def _cell(column: str, v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if column == "max_rel_err" else f"{v:.2f}"
    return "–" if v is None else str(v)


def write_report(rows: list[dict[str, Any]], out_dir: str | Path, *, bandwidth, kind) -> None:
    """The markdown table and the PNG (the CSV was written row by row)."""
    out = Path(out_dir)
    if not rows:
        return
    cols = ["format", "shape", "M", "impl_used", "time_us", "GB_s", "pct_bandwidth",
            "speedup_vs_dense", "max_rel_err"]  # fmt: skip
    lines = [
        f"Device: {kind}; measured bandwidth {bandwidth / 1e9:.1f} GB/s (vendor "
        f"{PEAK_BANDWIDTH_TBS.get(kind, '–')} TB/s); jax {jax.__version__}; "
        f"{time.strftime('%Y-%m-%d')}; {rows[0]['calls']}+ calls per sample",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    lines += ["| " + " | ".join(_cell(c, r[c]) for c in cols) + " |" for r in rows]
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
        base = {r["M"]: r["bytes"] for r in sub if r["format"] == BASELINE}
        for f in dict.fromkeys(r["format"] for r in sub):
            pts = sorted((r["M"], r["speedup_vs_dense"]) for r in sub if r["format"] == f)
            ax.plot(*zip(*pts, strict=True), marker="o", label=f)
            if f != BASELINE:  # memory-bound ideal: the ratio of bytes moved
                ideal = sorted((r["M"], base[r["M"]] / r["bytes"]) for r in sub
                               if r["format"] == f and r["M"] in base)  # fmt: skip
                ax.plot(*zip(*ideal, strict=True), ls="--", lw=0.8, color="gray")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("M (tokens)")
        ax.set_ylabel("speed-up vs dense bf16 jnp.dot")
        ax.set_title(f"{shape} ({kind}); dashed: bytes roofline")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@dataclasses.dataclass(frozen=True, kw_only=True)
class BenchKernelsConfig:
    """Options of ``compactlm bench kernels key=value ...`` (the CLI's one override language)."""

    formats: tuple[str, ...] = sass_lib.FORMATS  # besides the dense baseline, always measured
    # SHAPES names or "KxN"; None: 4096x4096,8192x8192 (timings), 8192x8192 (sass).
    shapes: tuple[str, ...] | None = None
    ms: tuple[int, ...] | None = None  # activation rows per call; None: MS (timings), 1 (sass)
    out: str = "runs/bench_kernels"  # folder for the CSV / markdown / PNG (or sass.md)
    impl: Literal["auto", "triton", "reference"] = "auto"  # the GPU run passes triton
    repeats: int = 10  # timed samples per row (the median is reported)
    calls: int = CALLS_PER_SAMPLE  # calls per timed sample (dispatch overhead vanishes)
    rotate_mb: int = ROTATE_BYTES // 2**20  # weight bytes cycled per sample (≥ 3× L2)
    bandwidth_mb: int = BANDWIDTH_BYTES // 2**20  # buffer of the measured-bandwidth roofline
    time_budget_s: float | None = None  # stop starting new rows after this many seconds
    # The SASS instruction count instead of timings (compactlm/benchmarks/sass.py; CPU is enough):
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
        for name in ("repeats", "calls", "rotate_mb", "bandwidth_mb"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


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
    rows = run(
        cfg.formats, shapes, ms, cfg.out, impl=cfg.impl, repeats=cfg.repeats, calls=cfg.calls,
        rotate_bytes=cfg.rotate_mb * 2**20, bandwidth_bytes=cfg.bandwidth_mb * 2**20,
        time_budget_s=cfg.time_budget_s,
    )  # fmt: skip
    print((Path(cfg.out) / "bench_kernels.md").read_text() if rows else "no rows")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
