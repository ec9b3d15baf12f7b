"""`compactlm bench decode RUN_DIR`: generation tokens/s of a compressed run vs its dense source.

Greedy decoding with the KV cache (`models/generate.py`: prefill, then one jitted while-loop of
decode steps), after a compile-and-warm-up call, median of `repeats` timed calls, at each batch
size. The dense model is the run that `compactlm quantize` / `prune` started from
(`compression.json`), in its own storage dtype. Which matmul ran is reported: on a CUDA device
`impl=auto` picks the Triton kernels where `supports()` holds; elsewhere the jnp reference
(dequantize, then a dense dot), which is *slower* than dense: it says so.

The figures are also written to RUN_DIR/bench_decode.json (every row, the dense source's too,
with the device they were measured on), where `compactlm pick` finds them: a measured decode
latency instead of its bandwidth floor.

`peer=llama.cpp`: the run's own model decoded by compactlm and by llama.cpp (its GGUF export)
side by side instead, batch 1, 128-token prompt, 128 new tokens, with time to first token and
the bandwidth used (benchmarks/bench_decode_peer.py; needs llama-cpp-python).
"""

from __future__ import annotations

import dataclasses
import json
import platform
import statistics
import time
import typing
from pathlib import Path

import jax
import numpy as np


@dataclasses.dataclass(frozen=True, kw_only=True)
class BenchDecodeConfig:
    """Options of `compactlm bench decode RUN_DIR`."""

    # Batch sizes (rows decoded together). 1 and 16: the memory-bound decode regime of §3.
    batch_sizes: tuple[int, ...] = (1, 16)
    # Tokens generated per timed call (after a 16-token prompt).
    new_tokens: int = 64
    # Timed calls per (model, batch size); the median is reported.
    repeats: int = 3
    # Another engine on the same model, side by side: batch 1, a 128-token prompt, 128 new tokens
    # (bench_decode_peer.py; batch_sizes and new_tokens do not apply). none: the run vs its
    # dense source.
    peer: typing.Literal["none", "llama.cpp"] = "none"
    # peer=llama.cpp: the GGUF file it reads; empty = export the run (type=auto) to a temp dir.
    gguf: str = ""

    def __post_init__(self) -> None:
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError(f"batch_sizes must be >= 1, got {self.batch_sizes}")
        if self.new_tokens < 1 or self.repeats < 1:
            raise ValueError("new_tokens and repeats must be >= 1")
        if self.gguf and self.peer != "llama.cpp":
            raise ValueError(
                "gguf= is the file peer=llama.cpp reads; valid: peer=llama.cpp gguf=PATH"
            )


BENCH_FILE = "bench_decode.json"


def device_name() -> str:
    """This process's device in `compactlm pick`'s vocabulary (cpu, h100, h200), else the
    device kind as JAX names it."""
    if jax.default_backend() == "cpu":
        return "cpu"
    kind = jax.devices()[0].device_kind
    return next((name for name in ("h100", "h200") if name in kind.lower()), kind)


def _tokens_per_second(model, batch: int, cfg: BenchDecodeConfig) -> float:
    from compactlm.models.generate import generate

    prompt = np.tile(np.arange(16, dtype=np.int32) % model.cfg.vocab_size, (batch, 1))
    jax.block_until_ready(generate(model, prompt, max_new_tokens=cfg.new_tokens, temperature=0))
    times = []
    for _ in range(cfg.repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(generate(model, prompt, max_new_tokens=cfg.new_tokens, temperature=0))
        times.append(time.perf_counter() - t0)
    return batch * cfg.new_tokens / statistics.median(times)


def _path(fmt: str) -> str:
    if fmt == "dense":
        return "dense dot"
    if jax.default_backend() == "gpu":
        return "Triton kernels (impl=auto, where supports() holds)"
    return f"jnp reference on {jax.default_backend()} (dequantize + dot; no kernel runs here)"


def bench_decode(run_dir: str, cfg: BenchDecodeConfig) -> list[dict]:
    from compactlm.train.loop import load_run

    if cfg.peer != "none":
        from compactlm.benchmarks.bench_decode_peer import bench_peer

        return bench_peer(run_dir, peer=cfg.peer, gguf=cfg.gguf, repeats=cfg.repeats)

    runs = [run_dir]
    report = Path(run_dir) / "compression.json"
    if report.is_file():
        try:
            runs.insert(0, str(json.loads(report.read_text())["source"]))
        except (ValueError, KeyError, TypeError):  # JSONDecodeError and UnicodeDecodeError too
            from compactlm.config import ConfigError

            raise ConfigError(
                f"{report} is not a compression report (a JSON object with the source run's "
                'path under "source"): was it edited by hand? Restore or delete it'
            ) from None
    rows = []
    t0 = time.time()
    for path in runs:
        trainer = load_run(path)
        model = trainer.program.model(trainer.state)
        fmt = trainer.cfg.model.weight_format
        for batch in cfg.batch_sizes:
            tps = _tokens_per_second(model, batch, cfg)
            rows.append(
                {"run": str(Path(path).resolve()), "format": fmt, "batch": batch,
                 "tokens_per_s": tps, "path": _path(fmt)}
            )  # fmt: skip
            print(
                f"  {fmt:<14} batch {batch:>3}  {tps:10.1f} tokens/s  ({_path(fmt)}; {path})",
                flush=True,
            )
    record = {
        "device": device_name(),
        "device_kind": jax.devices()[0].device_kind,
        "host": platform.node(),
        "time": t0,
        "config": dataclasses.asdict(cfg),
        # tokens_per_s = batch × new_tokens / median wall time of one generate call (prefill of
        # the 16-token prompt included): a decode step takes 1000 × batch / tokens_per_s ms.
        "rows": rows,
    }
    out = Path(run_dir) / BENCH_FILE  # the newest measurement replaces the last one
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"  written to {out}", flush=True)
    dense = {r["batch"]: r["tokens_per_s"] for r in rows if r["run"] == rows[0]["run"]}
    if len(runs) == 2:
        for r in rows[len(cfg.batch_sizes) :]:
            print(f"  {r['format']} / dense at batch {r['batch']}: "
                  f"{r['tokens_per_s'] / dense[r['batch']]:.2f}x")  # fmt: skip
    return rows
