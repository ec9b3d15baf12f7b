"""compactlm as an lm-evaluation-harness model (`compactlm`): any run directory, its own tokenizer.

lm-eval owns tasks, prompts and metrics (DESIGN.md §7); this file answers its three request
kinds with the semantics of lm-eval's HF backend (lm_eval/models/huggingface.py, HFLM):

- loglikelihood: context / continuation split on token boundaries by TemplateLM._encode_pair
  (encode context+continuation, then the context; trailing context spaces move to the
  continuation), an empty context conditioned on prefix_token_id; inputs left-truncated to
  max_length + 1 tokens; log-softmax over all the model's logits (fp32) at the continuation
  positions; is_greedy = every continuation token is the argmax.
- loglikelihood_rolling: lm_eval.utils.get_rolling_token_windows + make_disjoint_window
  (context_len=1), each window a loglikelihood request, summed per document.
- generate_until: greedy decoding on the KV cache (models/generate.py), the context
  left-truncated to max_length - max_gen_toks; the text cut at the first of the `until` strings
  (the eos string added), as HFLM's postprocess_generated_text does.

Batching: requests sorted by length, cut into batches, each right-padded to a bucket length
(powers of two up to the context) and a bucket batch size (powers of two up to batch_size), so
jit compiles a handful of shapes. Right padding is exact under causal attention: a real
position never attends to a later (padded) one, and only real positions are read.
Generation batches rows of equal prompt length (one cache index for the whole batch; left
padding would need an attention mask the decoder does not take), the batch padded by repeating
a row.
"""
# ruff: noqa: F722  (jaxtyping shape strings are not forward references)

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import (
    handle_stop_sequences,
    normalize_gen_kwargs,
    postprocess_generated_text,
)

MIN_BUCKET = 16  # shortest padded length: a handful of compiles covers 16 ... max_length


def bucket_length(n: int, max_length: int) -> int:
    """The padded length of a batch whose longest row has n tokens: the next power of two
    (at least MIN_BUCKET), capped at max_length."""
    return min(max(MIN_BUCKET, 1 << (max(n, 1) - 1).bit_length()), max(max_length, n))


def bucket_batch(n: int, batch_size: int) -> int:
    """The padded batch size of n rows: the next power of two, capped at batch_size."""
    return min(1 << (max(n, 1) - 1).bit_length(), max(batch_size, n))


@functools.partial(nnx.jit)
def _score(model, tokens_BT: jax.Array, targets_BT: jax.Array) -> tuple[jax.Array, jax.Array]:
    """log p(targets_BT[b, t] | tokens_BT[b, :t+1]) and whether it is the argmax, fp32, over
    all the model's logits (HFLM: log_softmax over the full output, padded rows included)."""
    logits_BTV = model(tokens_BT).astype(jnp.float32)
    logp_BTV = jax.nn.log_softmax(logits_BTV, axis=-1)
    logp_BT = jnp.take_along_axis(logp_BTV, targets_BT[..., None], axis=-1)[..., 0]
    greedy_BT = jnp.argmax(logits_BTV, axis=-1) == targets_BT
    return logp_BT, greedy_BT


@register_model("compactlm")
class CompactLM(TemplateLM):
    """lm-eval model over a compactlm run (`model_args="run_dir=runs/nano"`): the run's own
    tokenizer and model, any storage (dense, int4, nf4, 2:4) and adapter, loaded with
    train.loop.load_run."""

    backend = "causal"

    def __init__(
        self,
        run_dir: str | None = None,
        *,
        batch_size: int | str = 16,
        max_gen_toks: int = 256,
        prefix_token_id: int | None = None,
        trainer: Any = None,
        **kwargs: Any,
    ) -> None:
        """run_dir: the run to evaluate (or `trainer`, an already loaded one). batch_size: rows
        per forward pass (lm-eval's "auto" means 16 here). prefix_token_id: what an empty
        context / the first rolling window is conditioned on; default: an imported checkpoint's
        BOS (HFLM's default), else the run's eos (our documents follow an <eos>, never a
        <bos>)."""
        super().__init__()
        if trainer is None:
            if not run_dir:
                raise ValueError("the compactlm lm-eval model needs run_dir=PATH")
            from compactlm.train.loop import load_run

            trainer = load_run(run_dir)
        self.trainer = trainer
        self.tok = trainer.data.tokenizer
        self.model = trainer.program.model(trainer.state)
        self._max_length = int(trainer.cfg.model.max_seq_len)
        bs = 16 if str(batch_size).startswith("auto") else int(batch_size)
        if bs < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = bs
        self._max_gen_toks = int(max_gen_toks)
        if prefix_token_id is None:
            prefix_token_id = self.tok.bos_id if self.tok.kind == "hf" else self.tok.eos_id
        self._prefix_token_id = int(prefix_token_id)

    # -- what lm-eval asks of a TemplateLM ---------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return int(self.tok.eos_id)

    @property
    def prefix_token_id(self) -> int:
        return self._prefix_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list:
        """The ids of `string`. add_special_tokens None / True: what the run's tokenizer adds to
        a prompt (an imported checkpoint's post-processor, e.g. Llama 3's BOS; ours: nothing),
        unless the string already starts with that BOS text (HFLM's has_bos_prefix)."""
        from compactlm.data.tokenizer import prompt_tokens

        if add_special_tokens is False or self.tok.kind != "hf":
            return [int(i) for i in self.tok.encode(string)]
        ids, added = prompt_tokens(self.tok, string)
        if add_special_tokens is None and added.size and added[0]:
            bos_text = self.tok._tok.id_to_token(int(ids[0])) or ""
            if bos_text and string.startswith(bos_text):
                return [int(i) for i in self.tok.encode(string)]
        return [int(i) for i in ids]

    def tok_decode(self, tokens, skip_special_tokens: bool = True) -> str:
        ids = [tokens] if np.ndim(tokens) == 0 else list(tokens)
        return self.tok.decode([int(i) for i in ids if int(i) < self.tok.vocab_size])

    # -- scoring ---------------------------------------------------------------------------
    def _loglikelihood_tokens(
        self, requests: Sequence[tuple[Any, list[int], list[int]]], disable_tqdm: bool = False
    ) -> list[tuple[float, bool]]:
        """(sum of log p of the continuation, all greedy) per (key, context ids, continuation
        ids), in request order. Rows: (context + continuation)[-(max_length + 1):][:-1] as HFLM
        builds them; the continuation is the last len(continuation) targets of the row."""
        rows = []
        for _, context, continuation in requests:
            if not context or not continuation:
                raise ValueError("each loglikelihood request needs context and continuation ids")
            if len(continuation) > self.max_length:
                raise ValueError(
                    f"a continuation of {len(continuation)} tokens is longer than the model's "
                    f"context ({self.max_length})"
                )
            whole = (list(context) + list(continuation))[-(self.max_length + 1) :]
            rows.append((np.asarray(whole[:-1], np.int32), np.asarray(whole[1:], np.int32)))
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
        out: list[tuple[float, bool]] = [(0.0, False)] * len(rows)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            T = bucket_length(len(rows[chunk[0]][0]), self.max_length)
            B = bucket_batch(len(chunk), self.batch_size)
            tokens_BT = np.zeros((B, T), np.int32)  # right padding: never read (causal)
            targets_BT = np.zeros((B, T), np.int32)
            for b, i in enumerate(chunk):
                n = len(rows[i][0])
                tokens_BT[b, :n], targets_BT[b, :n] = rows[i]
            logp_BT, greedy_BT = jax.device_get(_score(self.model, tokens_BT, targets_BT))
            for b, i in enumerate(chunk):
                n, k = len(rows[i][0]), len(requests[i][2])
                # float64 sum of the fp32 terms (HFLM sums in the softmax dtype: same to ~1e-6)
                out[i] = (
                    float(np.sum(logp_BT[b, n - k : n], dtype=np.float64)),
                    bool(np.all(greedy_BT[b, n - k : n])),
                )
        return out

    def rolling_windows(self, string: str) -> list[tuple[list[int], list[int]]]:
        """lm-eval's disjoint rolling windows of a document (HFLM: context_len=1): every token
        predicted exactly once, the first conditioned on prefix_token_id."""
        return [
            lm_utils.make_disjoint_window(window)
            for window in lm_utils.get_rolling_token_windows(
                token_list=self.tok_encode(string),
                prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length,
                context_len=1,
            )
        ]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Total log-likelihood of each document, all windows of all documents batched."""
        windows, owner = [], []
        for r, req in enumerate(requests):
            for context, continuation in self.rolling_windows(req.args[0]):
                windows.append((None, context, continuation))
                owner.append(r)
        totals = [0.0] * len(requests)
        for r, (logp, _) in zip(owner, self._loglikelihood_tokens(windows), strict=True):
            totals[r] += logp
        for req, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # -- generation ------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations cut at the first stop string (eos's text added to `until`)."""
        from compactlm.data.tokenizer import stop_ids
        from compactlm.models.generate import generate

        eos_text = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
        stops = stop_ids(self.tok)
        jobs: dict[tuple, list[tuple[int, list[int], list[str]]]] = {}
        for r, req in enumerate(requests):
            context, gen_kwargs = req.args
            kwargs = normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos_text or None)
            n_new = int(kwargs.pop("max_gen_toks"))
            if kwargs.get("do_sample") or float(kwargs.get("temperature", 0.0) or 0.0) > 0:
                raise ValueError(
                    "the compactlm lm-eval model decodes greedily; this task asks for sampling "
                    f"({gen_kwargs}); valid: do_sample=false / temperature=0"
                )
            max_ctx = self.max_length - n_new
            if max_ctx < 1:
                raise ValueError(
                    f"max_gen_toks={n_new} leaves no room for a prompt in the model's context "
                    f"({self.max_length})"
                )
            ids = self.tok_encode(context)[-max_ctx:]
            jobs.setdefault((len(ids), n_new), []).append((r, ids, until))
        out = [""] * len(requests)
        for (P, n_new), rows in sorted(jobs.items(), reverse=True):
            for start in range(0, len(rows), self.batch_size):
                chunk = rows[start : start + self.batch_size]
                B = bucket_batch(len(chunk), self.batch_size)
                prompt_BP = np.asarray([ids for _, ids, _ in chunk], np.int32)
                prompt_BP = np.concatenate([prompt_BP, np.repeat(prompt_BP[:1], B - len(chunk), 0)])
                tokens_BS = np.asarray(
                    generate(
                        self.model,
                        prompt_BP,
                        max_new_tokens=n_new,
                        temperature=0.0,
                        eos_id=stops,
                        vocab_limit=self.tok.vocab_size,
                    )
                )
                for b, (r, _, until) in enumerate(chunk):
                    new = [int(t) for t in tokens_BS[b, P:]]
                    ended = [j for j, t in enumerate(new) if t in stops]
                    text = self.tok_decode(new[: ended[0]] if ended else new)
                    out[r] = postprocess_generated_text(text, stop=until, think_end_token=None)
                    self.cache_hook.add_partial("generate_until", requests[r].args, out[r])
        return out
