"""Dev check (not CI): llama.cpp on an F32 GGUF export against compactlm, with llama.cpp's CPU
shortcuts taken out of the comparison, so that what is left is the export.

scripts/check_gguf_llamacpp.py compares with llama.cpp's defaults. Two of them round to float16
on CPU (llama.cpp as vendored in llama-cpp-python 0.3.36): the KV cache (type_k / type_v F16)
and, for GeGLU models (Gemma 3), ggml-cpu's GELU, which is a lookup table indexed by the
f16-rounded input holding f16 values (vec.h, GGML_GELU_FP16). Here llama.cpp runs with an F32 KV
cache, and compactlm's GeGLU uses that table's values (gelu_tanh of f16(x), rounded to f16), so
both sides compute the same function in f32. Run with compactlm's venv and llama-cpp-python on
PYTHONPATH (docs/deployment.md):

    PYTHONPATH=/path/with/llama_cpp .venv/bin/python scripts/check_gguf_llamacpp_f32.py \
        RUN_DIR F32_EXPORT/model.gguf

Prints the max |logit diff| over every prompt position, with llama.cpp's defaults and with the
two shortcuts removed, and whether the greedy continuations (F32 KV cache) are equal.
"""

from __future__ import annotations

import sys

import numpy as np

PROMPT = "The Python Language Reference"
NEW_TOKENS = 24
GGML_TYPE_F32 = 0  # ggml.h's enum ggml_type


def ggml_cpu_gelu(exact):
    """ggml-cpu's f32 GELU (GGML_GELU_FP16): table[f16(x)] in f16; 0 below −10, x above 10."""
    import jax.numpy as jnp

    def gelu(x, approximate=True):
        x16 = x.astype(jnp.float16).astype(jnp.float32)
        y = exact(x16, approximate=True).astype(jnp.float16).astype(jnp.float32)
        return jnp.where(x <= -10.0, 0.0, jnp.where(x >= 10.0, x, y)).astype(x.dtype)

    return gelu


def compactlm_logits(run_dir: str, ids: list[int], n: int) -> tuple[np.ndarray, list[int]]:
    """Logits of every prompt position, and the greedy continuation (full forward each step)."""
    import jax.numpy as jnp

    from compactlm.train.loop import load_run

    trainer = load_run(run_dir)
    model = trainer.program.model(trainer.state)
    prompt = np.asarray(model(jnp.asarray([ids], jnp.int32)), np.float32)[0]
    seq = list(ids)
    for _ in range(n):
        seq.append(int(np.argmax(np.asarray(model(jnp.asarray([seq], jnp.int32)))[0, -1])))
    return prompt, seq[len(ids) :]


def llamacpp_logits(path: str, ids: list[int], n: int, **kw) -> tuple[np.ndarray, list[int]]:
    from llama_cpp import Llama

    llm = Llama(model_path=path, n_ctx=128, logits_all=True, verbose=False, seed=0, **kw)
    llm.eval(ids)
    prompt = np.array(llm.scores[: len(ids)], np.float32)
    out: list[int] = []
    for tok in llm.generate(ids, top_k=1, top_p=1.0, temp=0.0, reset=True) if n else ():
        out.append(int(tok))
        if len(out) == n:
            break
    return prompt, out


def main(argv: list[str]) -> int:
    import jax

    from compactlm.data import load_tokenizer
    from compactlm.train.run_dir import read_config

    run_dir, path = argv
    ids = [int(i) for i in load_tokenizer(run_dir).encode(PROMPT)]
    default, _ = llamacpp_logits(path, ids, 0)
    f32_kv = {"type_k": GGML_TYPE_F32, "type_v": GGML_TYPE_F32}
    theirs, their_greedy = llamacpp_logits(path, ids, NEW_TOKENS, **f32_kv)
    ours, our_greedy = compactlm_logits(run_dir, ids, NEW_TOKENS)
    V = theirs.shape[-1]
    print(
        f"{len(ids)} prompt positions; llama.cpp defaults: max |logit diff| "
        f"{np.max(np.abs(ours[:, :V] - default)):.3g}"
    )
    geglu = read_config(run_dir).model.mlp_activation == "gelu_tanh"
    if geglu:
        jax.nn.gelu = ggml_cpu_gelu(jax.nn.gelu)  # read when the model is built
        ours, our_greedy = compactlm_logits(run_dir, ids, NEW_TOKENS)
    diff = float(np.max(np.abs(ours[:, :V] - theirs)))
    print(
        f"llama.cpp F32 KV cache{', compactlm with ggml-cpu GELU' if geglu else ''}: max |logit "
        f"diff| {diff:.3g}; greedy {NEW_TOKENS} tokens equal: {our_greedy == their_greedy}"
    )
    return 0 if our_greedy == their_greedy and diff <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
