"""Validation loss, perplexity and bits-per-byte: every validation token scored exactly once."""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np

from compactlm.data import eval_batches
from compactlm.train.mesh import shard_batch


def evaluate_tokens(
    program: Any,
    state: Any,
    tokens: np.ndarray,
    *,
    byte_lengths: np.ndarray,
    batch_size: int,
    seq_len: int,
    max_tokens: int = 0,
) -> dict[str, float]:
    """loss (nats/token), perplexity and bits-per-byte of `tokens` under the model in `state`.

    bits-per-byte = total NLL / ln 2 / UTF-8 bytes of the scored targets (the tokenizer's
    token_byte_lengths), so it is comparable across tokenizers and with gzip / xz.
    """
    total_nll, total_tokens, total_bytes = 0.0, 0.0, 0.0
    limit = max_tokens or None
    for batch in eval_batches(tokens, batch_size=batch_size, seq_len=seq_len, max_tokens=limit):
        mask = batch.mask.astype(np.float32)
        nll, count = program.eval_step(
            state.params,
            state.frozen,
            shard_batch(batch.tokens, program.batch_sharding),
            shard_batch(mask, program.batch_sharding),
        )
        nll, count = jax.device_get((nll, count))
        total_nll += float(nll)
        total_tokens += float(count)
        total_bytes += float((byte_lengths[batch.tokens[:, 1:]] * mask).sum())
    loss = total_nll / max(total_tokens, 1.0)
    return {
        "loss": loss,
        "ppl": math.exp(min(loss, 700.0)),
        "bpb": total_nll / math.log(2) / max(total_bytes, 1.0),
        "tokens": total_tokens,
        "bytes": total_bytes,
    }
