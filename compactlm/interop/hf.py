"""Hugging Face checkpoints in and out (Llama, Qwen2, Qwen3: interop/hf_config.py's Family
table): config.json + *.safetensors + tokenizer.json.

Only JSON and safetensors are read or written: loading never executes code from a checkpoint
(no pickle, no `trust_remote_code`). Names and orientation are transformers' `LlamaForCausalLM`:
its weights are `[out, in]` (torch `nn.Linear`), ours `[in, out]` (Flax). compactlm's decoder
is exactly that architecture (rotate-half RoPE, GQA, SwiGLU, RMSNorm), so the mapping is a
transpose, except for the two fused projections, which split into HF's separate ones:

- `attn.qkv_proj.kernel [D, K·(G+2)·H]`, column `(k, j, h)`: query head `n = k·G + j` for
  `j < G`, key (`j = G`) and value (`j = G + 1`) of kv head k. Taking `j < G` in (k, j) order
  gives query columns in head order n, exactly `q_proj.weight.T`'s columns.
- `mlp.gate_up_proj.kernel [D, 2F]`: gate = columns `[0, F)`, up = `[F, 2F)`.
- Qwen2's `attn.qkv_bias [K·(G+2)·H]` has the kernel's column layout: `q_proj.bias`,
  `k_proj.bias`, `v_proj.bias` are its q / k / v views. Qwen3's `attn.q_norm.scale` /
  `attn.k_norm.scale [H]` are `self_attn.q_norm.weight` / `k_norm.weight`.

Tokenizers: a BPE run's tokenizer.json is its own (our specials appended at their ids); a byte
run gets a `tokenizers` BPE model whose vocabulary is the 256 GPT-2 byte characters at ids equal
to the byte values, no merges, then our specials — so transformers maps the same bytes to the
same ids. config.json keeps the whole compactlm config under "compactlm", so export → import
restores the run exactly; checkpoints without it get the defaults and a "hf" tokenizer.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from compactlm import interrupt
from compactlm.config import Config, to_dict, to_json
from compactlm.data.tokenizer import chmod_as_umask
from compactlm.interop import safetensors_io
from compactlm.interop.hf_config import (
    HF_CONFIG,
    InteropError,
    config_from_hf,
    config_from_llama,
    hf_config,
    llama_config,
)
from compactlm.interop.hf_tensors import _flatten, from_hf_tensors, split_qkv, to_hf_tensors
from compactlm.interop.hf_tokenizer import HF_TOKENIZER, hf_tokenizer_json, tokenizer_from_hf
from compactlm.interop.safetensors_io import HF_WEIGHTS, read_safetensors
from compactlm.train.metrics import stage

# ---------------------------------------------------------------------------------------------
# Run directories
# ---------------------------------------------------------------------------------------------


def _one_device() -> Any:
    """Export and import run on one device: a run trained on N devices reads anywhere."""
    from compactlm.train.mesh import MeshConfig, make_mesh

    return make_mesh(MeshConfig(devices=1))


def load_run_params(run_dir: str | os.PathLike) -> tuple[Config, Any, dict, int]:
    """(config, tokenizer, parameter tree, step) of a run's latest checkpoint; writes nothing.

    The corpus is not needed: only config.json, tokenizer.json and the checkpoint are read.
    """
    from flax import nnx

    from compactlm.data import load_tokenizer
    from compactlm.train import checkpoint as ckpt
    from compactlm.train.loop import resolve_vocab
    from compactlm.train.program import program_and_state
    from compactlm.train.run_dir import read_base, read_config

    run = Path(run_dir)
    cfg = read_config(run)
    tokenizer = load_tokenizer(run)
    cfg = resolve_vocab(cfg, tokenizer.vocab_size)
    if not (run / "checkpoints").is_dir():
        raise ckpt.CheckpointError(f"no checkpoint found in {run / 'checkpoints'}")
    program, state = program_and_state(cfg, run, base=read_base(run), mesh=_one_device())
    model = program.model(state)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    # Packed (quantized / 2:4) storage lives in non-Param variables: exporting only the Params
    # would silently drop those layers. Refuse, naming the way to a dense run.
    extra = sorted(set(_flatten(nnx.to_pure_dict(nnx.state(model)))) - set(_flatten(params)))
    if extra:
        name = "/".join(map(str, extra[0]))
        raise InteropError(
            f"{run_dir} stores {name} (compressed or adapter weights), which a Hugging Face "
            f"Llama has no place for; run `compactlm merge {run_dir} workdir=MERGED "
            "dequantize=true` and export MERGED"
        )
    return cfg, tokenizer, params, int(state.step)


def _fresh_dir(out_dir: Path) -> Path:
    """A temporary sibling of out_dir, renamed into place when complete (never a half export)."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InteropError(f"{out_dir} already exists and is not empty; choose a new workdir")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    chmod_as_umask(tmp)  # mkdtemp's 0700 would make the export (or imported run) private
    return tmp


def _commit(tmp: Path, out_dir: Path) -> None:
    if out_dir.exists():
        out_dir.rmdir()  # empty (checked by _fresh_dir)
    os.replace(tmp, out_dir)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def export_hf(run_dir: str | os.PathLike, out_dir: str | os.PathLike) -> dict[str, Any]:
    """Write `out_dir` as a Hugging Face Llama directory; returns a summary."""
    from safetensors.numpy import save_file

    from compactlm.models.footprint import count_params
    from compactlm.train.run_dir import read_config

    model = read_config(run_dir).model  # (as stored: at most 4 bytes a parameter)
    many = count_params(model)["total"] * 4 > safetensors_io.PROGRESS_BYTES
    with stage(f"export: restoring the checkpoint of {run_dir}", enabled=many):
        cfg, tokenizer, params, step = load_run_params(run_dir)
    with stage("export: splitting and transposing to HF tensors", enabled=many):
        tensors = to_hf_tensors(params, cfg.model)
    interrupt.check("stopped before the export was written")  # safe points: here, and the rename
    out = Path(out_dir)
    tmp = _fresh_dir(out)
    try:
        _write_json(tmp / HF_CONFIG, hf_config(cfg, tokenizer))
        size = sum(w.nbytes for w in tensors.values())
        with stage(f"export: writing {HF_WEIGHTS} ({size / 2**20:,.1f} MiB)", enabled=many):
            save_file(tensors, str(tmp / HF_WEIGHTS), metadata={"format": "pt"})
        chmod_as_umask(tmp / HF_WEIGHTS)  # safetensors creates it 0600
        (tmp / HF_TOKENIZER).write_text(hf_tokenizer_json(tokenizer))
        ids = {f"{n}_token_id": getattr(tokenizer, f"{n}_id") for n in ("bos", "eos", "pad")}
        _write_json(tmp / "generation_config.json", ids)
        names = {}
        if tokenizer.kind != "hf":
            from compactlm.data.tokenizer import SPECIAL_TOKENS

            names = dict(zip(("eos_token", "pad_token", "bos_token"), SPECIAL_TOKENS, strict=True))
        _write_json(
            tmp / "tokenizer_config.json",
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "model_max_length": cfg.model.max_seq_len,
                "clean_up_tokenization_spaces": False,
                **names,
            },
        )
        interrupt.check("stopped before the export was moved into place")
        _commit(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    n_params = sum(int(np.prod(w.shape)) for w in tensors.values())
    return {"step": step, "tensors": len(tensors), "parameters": n_params, "out": str(out)}


def import_hf(
    hf_dir: str | os.PathLike, out_dir: str | os.PathLike, overrides: Sequence[str] = ()
) -> dict[str, Any]:
    """Make `out_dir` a compactlm run directory (step-0 checkpoint) from a Llama HF directory."""
    import jax
    from flax import nnx

    from compactlm.train import checkpoint as ckpt
    from compactlm.train.program import make_program
    from compactlm.train.step import init_state

    src = Path(hf_dir)
    if not (src / HF_CONFIG).is_file():
        raise FileNotFoundError(f"{src / HF_CONFIG} not found: is {str(hf_dir)!r} a HF model dir?")
    try:
        hf = json.loads((src / HF_CONFIG).read_text())
    except json.JSONDecodeError as e:
        raise InteropError(f"{src / HF_CONFIG} is not valid JSON ({e})") from e
    if not isinstance(hf, dict):
        raise InteropError(f"{src / HF_CONFIG} is not a JSON object")
    cfg = config_from_hf(hf, overrides)
    tokenizer = tokenizer_from_hf(src, hf, cfg)
    from compactlm.data import load_corpus

    d = cfg.data  # eval / finetune will read it: a wrong data.corpus fails now, not later
    load_corpus(d.corpus, glob=d.glob, jsonl_field=d.jsonl_field, max_corpus_bytes=1 << 16)
    tensors = read_safetensors(src)
    many = sum(np.asarray(w).nbytes for w in tensors.values()) > safetensors_io.PROGRESS_BYTES
    out = Path(out_dir)
    tmp = _fresh_dir(out)
    try:
        with stage("import: building the model", enabled=many):
            program = make_program(cfg, mesh=_one_device())
            state = init_state(program, cfg.model, seed=cfg.train.seed)
        with stage(f"import: converting {len(tensors)} tensors", enabled=many):
            template = nnx.to_pure_dict(state.params)
            loaded = from_hf_tensors(tensors, template, cfg.model)
            shardings = nnx.to_pure_dict(program.state_sharding.params)
            placed = jax.tree.map(jax.device_put, loaded, shardings)
            nnx.replace_by_pure_dict(state.params, placed)
        tokenizer.save(tmp)
        (tmp / "config.json").write_text(to_json(cfg) + "\n")
        with stage("import: writing the step-0 checkpoint", enabled=many):
            manager = ckpt.make_manager(tmp, max_to_keep=cfg.train.keep_checkpoints)
            meta = {"step": 0, "seed": cfg.train.seed, "time": time.time(), "metrics": {}}
            extra = {**meta, "imported_from": str(src.absolute())}
            ckpt.save(manager, 0, state, extra, to_dict(cfg))
            manager.close()
        _commit(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    n_params = sum(int(np.prod(w.shape)) for w in jax.tree.leaves(loaded))
    return {"tensors": len(tensors), "parameters": n_params, "out": str(out), "config": cfg}


__all__: list[str] = [
    "InteropError",
    "config_from_hf",
    "config_from_llama",
    "export_hf",
    "from_hf_tensors",
    "hf_tokenizer_json",
    "hf_config",
    "import_hf",
    "llama_config",
    "load_run_params",
    "read_safetensors",
    "split_qkv",
    "to_hf_tensors",
]
