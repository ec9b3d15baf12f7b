"""llama.cpp (through llama-cpp-python) as the consumer of our GGUF files: perplexity, decode speed.

The one module that imports `llama_cpp`, and only inside its functions: compactlm works without
it. Without it every entry point raises `LlamaCppMissing` (an InteropError: one line, exit 2 at
the CLI) naming how to install it.

Tokens are OURS: the text is tokenized by the run's tokenizer and llama.cpp is fed the ids
(`Llama.eval`), never text, so a difference measures the weights and the arithmetic, not the
tokenizer (docs/deployment.md checks separately that llama.cpp's tokenizer gives our ids).

- `perplexity`: the windows of compactlm's validation eval (data/dataset.py `eval_batches`:
  non-overlapping windows of seq_len inputs, every target after the first token scored once),
  each evaluated from an empty KV cache with `logits_all`, log-softmax in float64 over llama.cpp's
  whole vocabulary (the padded embedding rows included, as compactlm's cross entropy does).
- `decode_timing`: greedy generation (`Llama.generate`, temperature 0) of `new_tokens` after a
  prompt of ids, batch 1: time to first token (prefill + first sample) and tokens/s of the rest.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from compactlm.interop.hf_config import InteropError

INSTALL = (
    "pip install llama-cpp-python (builds llama.cpp from source: cmake and a C++ compiler; "
    "docs/deployment.md, 'The real consumer')"
)


class LlamaCppMissing(InteropError):
    """llama-cpp-python is not importable here."""


def require() -> Any:
    """The `llama_cpp` module, or one line saying how to install it."""
    try:
        import llama_cpp
    except ImportError:
        missing = "llama.cpp is not installed (no module llama_cpp)"
        raise LlamaCppMissing(f"{missing}: {INSTALL}") from None
    return llama_cpp


def version() -> str:
    return str(getattr(require(), "__version__", "?"))


def load(path: str, *, n_ctx: int, logits_all: bool = False, threads: int = 0) -> Any:
    """A `llama_cpp.Llama` on the GGUF file (CPU; threads 0 = every core this process may use)."""
    llama_cpp = require()
    n = threads or len(os.sched_getaffinity(0))
    return llama_cpp.Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        n_batch=n_ctx,  # one decode call per window / prompt
        logits_all=logits_all,
        n_threads=n,
        n_threads_batch=n,
        n_gpu_layers=0,
        verbose=False,
        seed=0,
    )


def _log_softmax_at(logits_TV: np.ndarray, targets_T: np.ndarray) -> np.ndarray:
    """-log p(target) per row, in float64 (the logits are llama.cpp's float32)."""
    z = logits_TV.astype(np.float64)
    m = z.max(axis=-1, keepdims=True)
    log_z = (m + np.log(np.exp(z - m).sum(axis=-1, keepdims=True)))[:, 0]
    return log_z - z[np.arange(len(targets_T)), targets_T]


def perplexity(
    path: str,
    tokens: Sequence[int] | np.ndarray,
    *,
    byte_lengths: np.ndarray,
    seq_len: int,
    max_tokens: int = 0,
    threads: int = 1,
) -> dict[str, float]:
    """loss (nats/token), ppl and bits per byte of `tokens` (our ids) under llama.cpp, over
    exactly the windows and targets of compactlm's `evaluate_tokens` (same keys).

    threads=1: the numbers do not depend on it, and on a shared CPU ggml's spinning thread pool
    can cost far more than it gains (a 256-token window of tiny: 16 ms on 1 thread, 1.5 s on 2
    with the 2 cores oversubscribed, measured here 2026-12-06)."""
    tokens = np.asarray(tokens, np.int64)
    n = tokens.size if not max_tokens else min(tokens.size, max_tokens)
    llm = load(path, n_ctx=seq_len, logits_all=True, threads=threads)
    total_nll, total_tokens, total_bytes = 0.0, 0, 0
    for start in range(0, n - 1, seq_len):  # eval_batches' window w starts at w * seq_len
        stop = min(start + seq_len + 1, n)
        window = tokens[start:stop]
        inputs, targets = window[:-1], window[1:]
        llm.reset()  # an empty KV cache: each window sees only its own tokens, as ours does
        llm.eval([int(t) for t in inputs])
        logits_TV = np.asarray(llm.scores[: len(inputs)], np.float32)
        total_nll += float(_log_softmax_at(logits_TV, targets).sum())
        total_tokens += len(targets)
        total_bytes += int(byte_lengths[targets].sum())
    loss = total_nll / max(total_tokens, 1)
    return {
        "loss": loss,
        "ppl": math.exp(min(loss, 700.0)),
        "bpb": total_nll / math.log(2) / max(total_bytes, 1),
        "tokens": float(total_tokens),
        "bytes": float(total_bytes),
    }


@dataclasses.dataclass
class DecodeTiming:
    """Greedy decode of one prompt at batch 1 (median over the timed calls)."""

    ttft_s: float  # prompt prefill + the first new token
    tokens_per_s: float  # the new tokens after the first / the time after the first
    tokens: list[int]  # the greedy continuation (to compare with compactlm's)


def decode_timing(
    path: str, prompt: Sequence[int], new_tokens: int, *, repeats: int = 3, threads: int = 0
) -> DecodeTiming:
    """Time `Llama.generate` (temperature 0 = greedy) after one untimed warm-up call."""
    if new_tokens < 2:
        raise ValueError(f"new_tokens must be >= 2 (first token + decode), got {new_tokens}")
    llm = load(path, n_ctx=len(prompt) + new_tokens, threads=threads)
    ids = [int(t) for t in prompt]

    def once() -> tuple[float, float, list[int]]:
        llm.reset()  # n_tokens = 0: generate() must not reuse the last call's prompt cache
        out, t0 = [], time.perf_counter()
        t_first = 0.0
        for tok in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, reset=True):
            if not out:
                t_first = time.perf_counter()
            out.append(int(tok))
            if len(out) == new_tokens:
                break
        t_end = time.perf_counter()
        return t_first - t0, (new_tokens - 1) / (t_end - t_first), out

    once()
    runs = [once() for _ in range(repeats)]
    return DecodeTiming(
        ttft_s=statistics.median(r[0] for r in runs),
        tokens_per_s=statistics.median(r[1] for r in runs),
        tokens=runs[-1][2],
    )
