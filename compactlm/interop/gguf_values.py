"""A run computing with a GGUF file's weights: what a lossy GGUF export costs, in eval loss.

NF4, FP4 (and int4 whose groups are not whole 32-blocks) have no GGUF block type; the export
writes them as Q8_0 and must say what that changes (DESIGN §7: nothing changed silently). This
module reads the block linears back from the written `model.gguf` with gguf-py
(`gguf.GGUFReader` + `gguf.quants.dequantize`, llama.cpp's own decoding), undoes the llama q / k
row permutation, and loads them into the dense model of the run (`finetune.merged_trainer`: a
packed base dequantized, adapters folded), so compactlm's own eval scores the file's values.
Used by `export format=gguf` (requantized linears) and scripts/check_gguf_transformers.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from compactlm.interop.gguf_arch import PERMUTED, llama_permute_index
from compactlm.interop.hf_config import InteropError


def read_linears(gguf_path: str, cfg: Any, arch: str) -> dict[str, np.ndarray]:
    """HF name → f32 [out, in] of every block linear in the file, dequantized by gguf-py and (for
    the llama / smollm3 architectures) with the q / k rows back in HF's rotate-half order."""
    import gguf

    m = cfg.model
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], m.n_layers)
    reader = gguf.GGUFReader(gguf_path)
    parts = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
    parts += ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
    wanted = [f"model.layers.{i}.{p}.weight" for i in range(m.n_layers) for p in parts]
    by_gguf = {names.get_name(n, try_suffixes=(".weight",)): n for n in wanted}
    out: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        hf = by_gguf.get(t.name)
        if hf is None:
            continue
        w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32)
        if arch in PERMUTED and (".q_proj." in hf or ".k_proj." in hf):
            heads = m.n_heads if ".q_proj." in hf else m.n_kv_heads
            w = w[np.argsort(llama_permute_index(w.shape[0], heads))]
        out[hf] = w
    missing = [n for n in wanted if n not in out]
    if missing:
        raise InteropError(f"{gguf_path} has no tensor for {missing[0]}")
    return out


def trainer_with(trainer: Any, linears: dict[str, np.ndarray]) -> Any:
    """A read-only dense Trainer on `trainer`'s run whose block linears are `linears` (HF names,
    [out, in]); every other weight is the run's own (dense: its dequantized / merged model)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from compactlm.interop.hf_tensors import from_hf_tensors, to_hf_tensors
    from compactlm.train.finetune import merged_trainer
    from compactlm.train.step import state_from_model

    dense = merged_trainer(trainer)
    m = dense.cfg.model
    model = dense.program.model(dense.state)
    state = nnx.state(model, nnx.Param)
    params = nnx.to_pure_dict(state)
    tensors = to_hf_tensors(params, m) | linears
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, from_hf_tensors(tensors, params, m)))
    nnx.update(model, state)
    new = state_from_model(dense.program, model, seed=dense.cfg.train.seed)
    dense.state = new.replace(step=trainer.state.step)
    return dense


def eval_change(run_dir: str, gguf_path: str, arch: str, n: int) -> dict[str, float]:
    """Validation loss (nats/token) of the run as it computes, and of the run computing with the
    file's block linears, over the first `n` validation tokens (eval_batches' windows)."""
    from compactlm.train.loop import load_run

    trainer = load_run(run_dir)
    before = trainer.evaluate(max_tokens=n)
    after = trainer_with(trainer, read_linears(gguf_path, trainer.cfg, arch)).evaluate(n)
    return {"before": before["loss"], "after": after["loss"], "tokens": before["tokens"]}
