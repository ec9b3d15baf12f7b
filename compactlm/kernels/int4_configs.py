"""Launch configurations for the int4 / NF4 / FP4 and 2:4 kernels: data per GPU kind, not tuned.

Keys are ``(m_bucket, N, K, format)`` with ``m_bucket`` from ``m_bucket(M)``; ``"*"`` in a key
position matches anything. Values are the constexpr meta-parameters of the raw kernels plus the
launch options ``num_warps`` / ``num_stages``. Lookup order: exact key, then ``(N, K)`` for any
format, then the format for any shape, then ``(bucket, "*", "*", "*")``, then ``DEFAULTS``.

The entries below are priors from the Triton matmul tutorial, gemlite's and Marlin's published
tile choices for Hopper (decode: narrow N tiles and split-K so that ≥ 132 SMs have work; GEMM:
128×128×64 bf16 tiles, 4 warps, 3–4 stages), not yet measured on our kernels: replace them with
the best rows that ``compactlm.benchmarks.bench_kernels`` finds on the device (docs/benchmarks.md).
"""

from __future__ import annotations

Config = dict[str, int]

M_BUCKETS = ("gemv", "decode", "small", "medium", "large")
# Rows served by the GEMV kernels (gemv_kernels.py; FMAs, no tl.dot), per format. The int4 /
# NF4 / FP4 GEMV decodes each W tile once for up to GEMV_ROWS rows of x; by the SASS count per
# weight of W (docs/benchmarks.md) it is cheaper than the 16-row tl.dot decode kernel (int4 9.1,
# NF4 / FP4 12.5 at any 4 < M <= 16) up to M = 4 (int4: 3.7 / 5.4 / 8.0 / 10.0 at M = 1..4).
# The 2:4 GEMV serves one row per program and stays cheaper up to M = 4 (2.4-2.8 per row vs
# 19-25).
GEMV_MAX_M: dict[str, int] = {"int4": 4, "nf4": 4, "fp4": 4, "sparse24": 4, "sparse24_int4": 4}
GEMV_ROWS = 4  # rows of x per int4 / NF4 / FP4 GEMV program (named accumulators: at most 4)


def gemv_rows(m: int, block_n: int) -> Config:
    """BLOCK_SIZE_M (rows per GEMV program) and BLOCK_SIZE_N for M rows: from 3 rows on, at
    most 512 columns (3-4 rows of 1024-column f32 partial sums need > 255 registers: spills)."""
    rows = min(m, GEMV_ROWS)
    return dict(BLOCK_SIZE_M=rows, BLOCK_SIZE_N=block_n if rows < 3 else min(block_n, 512))


def gemv_max_m(format: str) -> int:
    """The largest M that ``format``'s decode runs as a GEMV."""
    return GEMV_MAX_M.get(format, 1)


def m_bucket(m: int, format: str = "int4") -> str:
    """Up to ``gemv_max_m(format)`` rows: the GEMV; to 16: the split-K tl.dot decode kernel;
    larger M: the tiled GEMM."""
    if m <= gemv_max_m(format):
        return "gemv"
    if m <= 16:
        return "decode"
    if m <= 64:
        return "small"
    if m <= 256:
        return "medium"
    return "large"


def _tiles(m: int, n: int, k: int, warps: int, stages: int, *, group_m: int | None = 8) -> Config:
    """A config row: BLOCK_SIZE_M/N/K, num_warps, num_stages and (GEMM only) GROUP_SIZE_M."""
    cfg = dict(BLOCK_SIZE_M=m, BLOCK_SIZE_N=n, BLOCK_SIZE_K=k, num_warps=warps, num_stages=stages)
    return cfg if group_m is None else dict(cfg, GROUP_SIZE_M=group_m)


DEFAULTS: dict[str, Config] = {
    # GEMV (M ≤ gemv_max_m; up to GEMV_ROWS rows of x per program, gemv_rows): wide N tiles so
    # that each thread owns several 16-byte column chunks (the x values it loads serve all of
    # them), split K for ≥ 2 programs per SM (SPLIT_K from split_k_for), BLOCK_SIZE_K capped at
    # the group.
    "gemv": dict(BLOCK_SIZE_N=1024, BLOCK_SIZE_K=32, num_warps=4, num_stages=3),
    # Decode: one 16-row tile (tl.dot's minimum), wide K tiles so each program streams
    # contiguous qweight rows; SPLIT_K chosen at launch to fill the SMs (see split_k_for).
    "decode": _tiles(16, 64, 128, 4, 4, group_m=None),
    "small": _tiles(64, 64, 64, 4, 4),
    "medium": _tiles(64, 128, 64, 4, 4),
    "large": _tiles(128, 128, 64, 8, 3),
    # Backward dx = dy @ W^T (training, M = tokens per batch: large).
    "backward": _tiles(128, 64, 128, 8, 3),
}

# Per-format defaults where a format's kernel needs other tiles than the bucket's (SASS counts,
# docs/benchmarks.md). NF4 / FP4 decode their codes through a register table now and take the
# GEMV's 1024x32 like int4 (the tl.load code-book gather needed 256x64 not to spill).
FORMAT_DEFAULTS: dict[tuple[str, str], Config] = {}

# H100 and H200 share the SM (132 SMs, 227 KB shared memory per block); the H200's larger, faster
# HBM moves the decode roofline but not the tile shapes, so they start from the same rows (two
# tables: measured rows for one kind must not leak into the other).
_HOPPER: dict[tuple[str, int | str, int | str, str], Config] = {
    ("decode", "*", "*", "*"): _tiles(16, 64, 128, 4, 4, group_m=None),
}

# Per device kind (``_launch.device_kind()``): (m_bucket, N, K, format) → config.
CONFIGS: dict[str, dict[tuple[str, int | str, int | str, str], Config]] = {
    "h100": _HOPPER,
    "h200": dict(_HOPPER),
}

NUM_SMS = {"h100": 132, "h200": 132, "a100": 108}


def get_config(
    kind: str, m: int | str, n: int, k: int, format: str, *, backward: bool = False
) -> Config:
    """The launch configuration for one call (a fresh dict the caller may edit)."""
    bucket = "backward" if backward else (m if isinstance(m, str) else m_bucket(m, format))
    table = CONFIGS.get(kind, {})
    for key in (
        (bucket, n, k, format),
        (bucket, n, k, "*"),
        (bucket, "*", "*", format),
        (bucket, "*", "*", "*"),
    ):
        if key in table:
            return dict(table[key])
    return dict(FORMAT_DEFAULTS.get((bucket, format), DEFAULTS[bucket]))


def split_k_for(kind: str, n: int, k: int, block_n: int, block_k: int) -> int:
    """Split K until the decode grid has about two programs per SM (Marlin-style split-K)."""
    sms = NUM_SMS.get(kind, 132)
    n_tiles = -(-n // block_n)
    k_tiles = -(-k // block_k)
    split = 1
    while n_tiles * split < 2 * sms and split * 2 <= k_tiles:
        split *= 2
    return split
