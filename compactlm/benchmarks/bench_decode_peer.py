"""`compactlm bench decode RUN_DIR peer=llama.cpp`: compactlm and llama.cpp decoding one model.

Both on this CPU, in one process, one after the other: batch 1, a prompt of `PROMPT_TOKENS`
validation tokens (our tokenizer; llama.cpp is fed the same ids), `NEW_TOKENS` greedy new
tokens. llama.cpp reads the run's GGUF export (`gguf=PATH`, else `export format=gguf type=auto`
into a temporary directory: an f32 run gives F32, an int4 run with float16 scales Q4_0 holding
the very codes). Per engine, the median of `repeats` timed calls after a warm-up call:

- time to first token: the prompt's prefill and the first new token (compactlm: a
  `generate(max_new_tokens=1)` call, which also runs that token's decode step: it counts
  against us);
- tokens/s: the new tokens after the first ÷ the time after the first (compactlm: (N − 1) ÷
  (t(N) − t(1)), two calls of the same compiled loop); llama.cpp at 1 thread and at every core
  this process may use (ggml's workers spin-wait: on a shared, oversubscribed CPU one thread can
  beat two);
- bandwidth used (MosaicML, "LLM Inference Performance Engineering: Best Practices", 2023:
  model bandwidth utilization = bytes read per token × tokens/s ÷ peak bandwidth) with the
  weight bytes (KV cache left out) and, as the peak, the bandwidth a NumPy copy of 2 × 256 MiB
  reaches in this run (best of 5; bytes read + bytes written).
Nothing is written to RUN_DIR (bench_decode.json is `compactlm pick`'s, for compactlm's rows).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from compactlm.benchmarks.bench_kernels import measure_cpu_bandwidth

PEERS = ("none", "llama.cpp")
PROMPT_TOKENS = 128  # the protocol; prompt + new tokens = tiny's max_seq_len (256)
NEW_TOKENS = 128


def _compactlm_timing(model, prompt: np.ndarray, new_tokens: int, repeats: int):
    from compactlm.models.generate import generate

    def timed(n: int) -> tuple[float, np.ndarray]:
        t0 = time.perf_counter()
        out = jax.block_until_ready(generate(model, prompt, max_new_tokens=n, temperature=0))
        return time.perf_counter() - t0, out

    timed(1)  # compile both calls
    timed(new_tokens)
    t1 = statistics.median(timed(1)[0] for _ in range(repeats))
    runs = [timed(new_tokens) for _ in range(repeats)]
    t_n = statistics.median(t for t, _ in runs)
    tokens = [int(t) for t in np.asarray(runs[-1][1])[0, prompt.size :]]
    return t1, (new_tokens - 1) / (t_n - t1), tokens


def _gguf_bytes(path: str) -> tuple[int, str]:
    """Bytes of the tensors in the file and its block linears' types (e.g. "Q4_0")."""
    from gguf import GGUFReader

    tensors = GGUFReader(path).tensors
    types = sorted({t.tensor_type.name for t in tensors if t.name.startswith("blk.") and
                    t.name.endswith("weight") and len(t.shape) == 2})  # fmt: skip
    return sum(int(t.n_bytes) for t in tensors), "/".join(types)


def bench_peer(run_dir: str, *, peer: str, gguf: str = "", repeats: int = 3) -> list[dict]:
    """One row per engine: tokens/s, time to first token, weight bytes, bandwidth used."""
    from compactlm.interop import llamacpp

    llamacpp.require()  # before any work: a missing llama.cpp is one line, exit 2
    from compactlm.models.footprint import weight_bytes
    from compactlm.train.loop import load_run

    trainer = load_run(run_dir)
    model = trainer.program.model(trainer.state)
    prompt = np.asarray(trainer.data.val_tokens[:PROMPT_TOKENS], np.int32)
    if model.cfg.max_seq_len < PROMPT_TOKENS + NEW_TOKENS:
        from compactlm.config import ConfigError

        raise ConfigError(
            f"peer={peer} decodes {PROMPT_TOKENS} + {NEW_TOKENS} tokens; the run's "
            f"model.max_seq_len is {model.cfg.max_seq_len}"
        )
    with tempfile.TemporaryDirectory(prefix="compactlm-peer-") as tmp:
        if not gguf:
            from compactlm.interop.gguf import GGUFExportConfig, export_gguf

            gguf = export_gguf(run_dir, str(Path(tmp) / "gguf"), GGUFExportConfig())["out"]
            print(f"  exported {gguf} (type=auto)", flush=True)
        bandwidth = measure_cpu_bandwidth()
        fmt = trainer.cfg.model.weight_format
        ttft, tps, ours = _compactlm_timing(model, prompt, NEW_TOKENS, repeats)
        rows: list[dict[str, Any]] = [
            {"engine": "compactlm (JAX, CPU)", "format": fmt, "ttft_s": ttft,
             "tokens_per_s": tps, "weight_bytes": weight_bytes(model.cfg)["total"]}
        ]  # fmt: skip
        n_bytes, types = _gguf_bytes(gguf)
        cores = len(os.sched_getaffinity(0))
        for threads in sorted({1, cores}):  # ggml's thread pool spins: on a shared CPU 1 can win
            timing = llamacpp.decode_timing(
                gguf, prompt.tolist(), NEW_TOKENS, repeats=repeats, threads=threads
            )
            rows.append(
                {"engine": f"llama.cpp {llamacpp.version()}, {threads} thread(s)",
                 "format": types, "ttft_s": timing.ttft_s, "tokens_per_s": timing.tokens_per_s,
                 "weight_bytes": n_bytes}
            )  # fmt: skip
            theirs = timing.tokens
        bandwidth = max(bandwidth, measure_cpu_bandwidth())  # before and after: the better one
    same = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b), None)
    for r in rows:
        r["bandwidth_used"] = r["weight_bytes"] * r["tokens_per_s"] / bandwidth
        r["copy_bandwidth_gb_s"] = bandwidth / 1e9
    print(
        f"  batch 1, prompt {PROMPT_TOKENS} tokens, {NEW_TOKENS} new (greedy), median of "
        f"{repeats}; copy bandwidth {bandwidth / 1e9:.2f} GB/s; JAX on "
        f"{jax.devices()[0].device_kind}; greedy tokens of compactlm and llama.cpp "
        + ("identical" if same is None else f"first differ at new token {same}"),
        flush=True,
    )
    print(table(rows), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    head = ["engine", "weights", "bytes", "TTFT ms", "tokens/s", "bandwidth used"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["engine"], r["format"], f"{r['weight_bytes']:,}", f"{r['ttft_s'] * 1e3:.1f}",
                 f"{r['tokens_per_s']:.0f}", f"{r['bandwidth_used']:.1%}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
