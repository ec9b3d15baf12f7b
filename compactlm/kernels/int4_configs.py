"""Launch configurations for the int4 / NF4 / FP4 kernels: data per GPU kind, never tuned at import.

Keys are ``(m_bucket, N, K, format)`` with ``m_bucket`` from ``m_bucket(M)``; ``"*"`` in a key
position matches anything. Values are the constexpr meta-parameters of the raw kernels plus the
launch options ``num_warps`` / ``num_stages``. Lookup order: exact key, then wildcards, then the
kind's ``"default"`` entry per bucket, then ``DEFAULTS``.

The entries below are priors from the Triton matmul tutorial, gemlite's and Marlin's published
tile choices for Hopper (decode: narrow N tiles and split-K so that ≥ 132 SMs have work; GEMM:
128×128×64 bf16 tiles, 4 warps, 3–4 stages), not yet measured on our kernels: replace them with
the best rows that ``compactlm.eval.bench_kernels`` finds on the device (docs/benchmarks.md).
"""

from __future__ import annotations

Config = dict[str, int]

M_BUCKETS = ("decode", "small", "medium", "large")


def m_bucket(m: int) -> str:
    """1–16 rows: the memory-bound decode kernel; larger M: the tiled GEMM."""
    if m <= 16:
        return "decode"
    if m <= 64:
        return "small"
    if m <= 256:
        return "medium"
    return "large"


DEFAULTS: dict[str, Config] = {
    # Decode: one 16-row tile (tl.dot's minimum), wide K tiles so each program streams
    # contiguous qweight rows; SPLIT_K chosen at launch to fill the SMs (see split_k_for).
    "decode": dict(BLOCK_SIZE_M=16, BLOCK_SIZE_N=64, BLOCK_SIZE_K=128, num_warps=4, num_stages=4),
    "small": dict(
        BLOCK_SIZE_M=64, BLOCK_SIZE_N=64, BLOCK_SIZE_K=64, GROUP_SIZE_M=8, num_warps=4, num_stages=4
    ),
    "medium": dict(
        BLOCK_SIZE_M=64,
        BLOCK_SIZE_N=128,
        BLOCK_SIZE_K=64,
        GROUP_SIZE_M=8,
        num_warps=4,
        num_stages=4,
    ),
    "large": dict(
        BLOCK_SIZE_M=128,
        BLOCK_SIZE_N=128,
        BLOCK_SIZE_K=64,
        GROUP_SIZE_M=8,
        num_warps=8,
        num_stages=3,
    ),
    # Backward dx = dy @ W^T (training, M = tokens per batch: large).
    "backward": dict(
        BLOCK_SIZE_M=128,
        BLOCK_SIZE_N=64,
        BLOCK_SIZE_K=128,
        GROUP_SIZE_M=8,
        num_warps=8,
        num_stages=3,
    ),
}

# Per device kind (``_launch.device_kind()``): (m_bucket, N, K, format) → config.
CONFIGS: dict[str, dict[tuple[str, int | str, int | str, str], Config]] = {
    "h100": {
        ("decode", "*", "*", "*"): dict(
            BLOCK_SIZE_M=16, BLOCK_SIZE_N=64, BLOCK_SIZE_K=128, num_warps=4, num_stages=4
        ),
    },
    "h200": {
        ("decode", "*", "*", "*"): dict(
            BLOCK_SIZE_M=16, BLOCK_SIZE_N=64, BLOCK_SIZE_K=128, num_warps=4, num_stages=4
        ),
    },
}

NUM_SMS = {"h100": 132, "h200": 132, "a100": 108}


def get_config(
    kind: str, m: int | str, n: int, k: int, format: str, *, backward: bool = False
) -> Config:
    """The launch configuration for one call (a fresh dict the caller may edit)."""
    bucket = "backward" if backward else (m if isinstance(m, str) else m_bucket(m))
    table = CONFIGS.get(kind, {})
    for key in (
        (bucket, n, k, format),
        (bucket, n, k, "*"),
        (bucket, "*", "*", format),
        (bucket, "*", "*", "*"),
    ):
        if key in table:
            return dict(table[key])
    return dict(DEFAULTS[bucket])


def split_k_for(kind: str, n: int, k: int, block_n: int, block_k: int) -> int:
    """Split K until the decode grid has about two programs per SM (Marlin-style split-K)."""
    sms = NUM_SMS.get(kind, 132)
    n_tiles = -(-n // block_n)
    k_tiles = -(-k // block_k)
    split = 1
    while n_tiles * split < 2 * sms and split * 2 <= k_tiles:
        split *= 2
    return split
