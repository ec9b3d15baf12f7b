"""Dev check (not CI): llama.cpp applies compactlm's GGUF LoRA adapter as compactlm does.

Run with compactlm's venv and llama-cpp-python on PYTHONPATH (docs/deployment.md says how it was
built here):

    PYTHONPATH=/path/with/llama_cpp .venv/bin/python scripts/check_gguf_lora_llamacpp.py \
        ADAPTER_RUN EXPORT_DIR

EXPORT_DIR is `compactlm export ADAPTER_RUN format=gguf adapter=separate type=f32
workdir=EXPORT_DIR` (model.gguf: the base, unmerged; adapter.gguf: the LoRA). Four models are
compared on one prompt (compactlm's token ids, fed to llama.cpp as ids):

- compactlm's base: the adapter run's base weights with no adapter (built as the export builds
  it: the run's linears' own weights, PiSSA's residual included), vs llama.cpp on model.gguf;
- compactlm's adapter run (its own forward, A and B applied unmerged) vs llama.cpp on
  model.gguf with `lora_path=adapter.gguf` (llama_adapter_lora_init + llama_set_adapters_lora,
  scale 1).

Printed per pair: max |logit difference| over every prompt position, and whether the greedy
continuations (NEW_TOKENS tokens, full forward each step) are equal; and how far the adapter
moves compactlm's own logits (so that "equal" is not the trivial "the adapter does nothing").
llama.cpp runs with an F32 KV cache (KV_TYPE), so that the comparison is of the weights and the
adapter. Exit 0 when both greedy continuations are equal and the logits agree within LOGIT_TOL.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

PROMPT = "The Python Language Reference"
NEW_TOKENS = 24
# llama.cpp's KV cache type: F32 (GGML_TYPE_F32 = 0), not its default F16, so that the check is
# of the weights and the adapter; with F16 keys / values the same files differ from compactlm by
# ~4e-3 in the logits of a 300-step nano run (measured: docs/deployment.md).
KV_TYPE = 0
# f32 weights both sides; llama.cpp's CPU matmuls sum in another order (the F32 base export
# agreed to 6e-6 in docs/deployment.md), and the adapter adds two more small products.
LOGIT_TOL = 1e-3


def compactlm_models(run_dir: str):
    """(base model, adapter model) of an adapter run, as compactlm computes them."""
    import dataclasses

    from flax import nnx

    from compactlm.models.config import AdapterConfig
    from compactlm.models.transfer import transfer_weights
    from compactlm.models.transformer import Transformer
    from compactlm.train.loop import load_run

    trainer = load_run(run_dir)
    adapted = trainer.program.model(trainer.state)
    base_cfg = dataclasses.replace(trainer.cfg.model, adapter=AdapterConfig())
    base = Transformer(base_cfg, rngs=nnx.Rngs(trainer.cfg.train.seed))
    transfer_weights(base, adapted)
    return base, adapted


def compactlm_run(model, ids: list[int], n: int) -> tuple[np.ndarray, list[int]]:
    """(prompt logits [T, V], greedy continuation) with a full forward per token."""
    import jax.numpy as jnp

    seq, out, prompt_logits = list(ids), [], None
    for _ in range(n):
        logits = np.asarray(model(jnp.asarray([seq], jnp.int32)), np.float32)[0]
        prompt_logits = logits if prompt_logits is None else prompt_logits
        seq.append(int(np.argmax(logits[-1])))
        out.append(seq[-1])
    return prompt_logits, out


def llamacpp_run(
    model_path: str, ids: list[int], n: int, lora: str | None
) -> tuple[np.ndarray, list[int]]:
    from llama_cpp import Llama

    llm = Llama(
        model_path=model_path,
        lora_path=lora,
        n_ctx=128,
        type_k=KV_TYPE,
        type_v=KV_TYPE,
        logits_all=True,
        verbose=False,
        seed=0,
    )
    llm.eval(ids)
    logits = np.array(llm.scores[: len(ids)], np.float32)
    out = []
    for tok in llm.generate(ids, top_k=1, top_p=1.0, temp=0.0, reset=True):
        out.append(int(tok))
        if len(out) == n:
            break
    llm.close()
    return logits, out


def main(argv: list[str]) -> int:
    from compactlm.data import load_tokenizer

    run_dir, export = argv[0], Path(argv[1])
    model_gguf, adapter_gguf = str(export / "model.gguf"), str(export / "adapter.gguf")
    tok = load_tokenizer(run_dir)
    ids = [int(i) for i in tok.encode(PROMPT)]
    base, adapted = compactlm_models(run_dir)
    ok = True
    ours: dict[str, tuple[np.ndarray, list[int]]] = {}
    for label, model, lora in (("base", base, None), ("base + LoRA", adapted, adapter_gguf)):
        our_logits, our_tokens = compactlm_run(model, ids, NEW_TOKENS)
        their_logits, their_tokens = llamacpp_run(model_gguf, ids, NEW_TOKENS, lora)
        V = their_logits.shape[1]
        diff = float(np.max(np.abs(our_logits[:, :V] - their_logits)))
        same = our_tokens == their_tokens
        ok &= same and diff < LOGIT_TOL
        ours[label] = (our_logits[:, :V], our_tokens)
        print(
            f"{label:<12} llama.cpp vs compactlm: max |logit diff| over {len(ids)} prompt "
            f"positions {diff:.3g}; greedy {NEW_TOKENS} tokens equal: {same}"
        )
        print(f"  compactlm: {tok.decode(our_tokens)!r}\n  llama.cpp: {tok.decode(their_tokens)!r}")
    moved = float(np.max(np.abs(ours["base + LoRA"][0] - ours["base"][0])))
    pairs = zip(ours["base"][1], ours["base + LoRA"][1], strict=True)
    first = next((i for i, (a, b) in enumerate(pairs) if a != b), None)
    print(
        f"the adapter moves compactlm's logits by up to {moved:.3g}; greedy continuations of base "
        f"and base + LoRA first differ at new token {first}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
