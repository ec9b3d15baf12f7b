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

import contextlib
import json
import logging
import mmap
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
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


@contextlib.contextmanager
def written_whole(out: Path) -> Iterator[Path]:
    """A temporary sibling of `out` to write an export into, renamed into place when the block
    completes (a signal stops it before the rename), removed on any error: never a half
    export. Every export format writes through it."""
    tmp = _fresh_dir(out)
    try:
        yield tmp
        interrupt.check("stopped before the export was moved into place")
        _commit(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_tokenizer_files(out: Path, cfg: Config, tokenizer: Any) -> None:
    """tokenizer.json, generation_config.json and tokenizer_config.json as transformers reads
    them: our specials for our runs; an imported run's own specials, chat template and eos list
    back (what tokenizer_from_hf read)."""
    (out / HF_TOKENIZER).write_text(hf_tokenizer_json(tokenizer))
    ids = {f"{n}_token_id": getattr(tokenizer, f"{n}_id") for n in ("bos", "eos", "pad")}
    stops = list(getattr(tokenizer, "stop_ids", ()))
    if len(stops) > 1:  # an imported checkpoint's eos list (Llama 3 instruct), eos first
        ids["eos_token_id"] = stops
    _write_json(out / "generation_config.json", ids)
    names: dict[str, Any] = {}
    if tokenizer.kind != "hf":
        from compactlm.data.tokenizer import SPECIAL_TOKENS

        names = dict(zip(("eos_token", "pad_token", "bos_token"), SPECIAL_TOKENS, strict=True))
    else:
        names = dict(tokenizer.special_tokens)
        if tokenizer.chat_template:
            names["chat_template"] = tokenizer.chat_template
    tok_cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": cfg.model.max_seq_len,
        "clean_up_tokenization_spaces": False,
        **names,
    }
    _write_json(out / "tokenizer_config.json", tok_cfg)


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
    with written_whole(out) as tmp:
        _write_json(tmp / HF_CONFIG, hf_config(cfg, tokenizer))
        size = sum(w.nbytes for w in tensors.values())
        with stage(f"export: writing {HF_WEIGHTS} ({size / 2**20:,.1f} MiB)", enabled=many):
            save_file(tensors, str(tmp / HF_WEIGHTS), metadata={"format": "pt"})
        chmod_as_umask(tmp / HF_WEIGHTS)  # safetensors creates it 0600
        write_tokenizer_files(tmp, cfg, tokenizer)
    n_params = sum(int(np.prod(w.shape)) for w in tensors.values())
    return {"step": step, "tensors": len(tensors), "parameters": n_params, "out": str(out)}


def import_hf(
    hf_dir: str | os.PathLike, out_dir: str | os.PathLike, overrides: Sequence[str] = ()
) -> dict[str, Any]:
    """Make `out_dir` a compactlm run directory (step-0 checkpoint) from a Llama HF directory.

    Memory: about the weights once, plus the tensors of one parameter while it is converted,
    plus orbax's write buffers (docs/models.md, "Real sizes on this machine"). Nothing is
    initialised at random to be overwritten: the state's shapes come from `abstract_state`,
    each parameter is read from disk when its turn comes (`SafetensorsReader`), and the
    checkpoint is written from host arrays (`_step0_state`); the tokenizer is read last.
    """
    import jax
    from flax import nnx

    from compactlm.train import checkpoint as ckpt
    from compactlm.train.metrics import StageProgress
    from compactlm.train.program import make_program
    from compactlm.train.step import abstract_state

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
    from compactlm.data import load_corpus

    d = cfg.data  # eval / finetune will read it: a wrong data.corpus fails now, not later
    load_corpus(d.corpus, glob=d.glob, jsonl_field=d.jsonl_field, max_corpus_bytes=1 << 16)
    tensors = safetensors_io.SafetensorsReader(src)  # headers only
    many = tensors.nbytes > safetensors_io.PROGRESS_BYTES
    out = Path(out_dir)
    tmp = _fresh_dir(out)
    try:
        program = make_program(cfg, mesh=_one_device())
        target = abstract_state(program, cfg.model, seed=cfg.train.seed)  # shapes, no memory
        if jax.tree.leaves(target.frozen):
            raise InteropError(
                "import writes a dense model; this config also holds frozen storage (packed "
                "weights or an adapter's base): import first, then `compactlm quantize` / "
                "`compactlm finetune` the imported run"
            )
        n_files = len(tensors.files)
        bar = StageProgress(
            f"import: reading weights from {n_files} file{'s' * (n_files > 1)}",
            total=len(tensors),
            unit="tensor",
            lines=10,
            enabled=many,
        )
        seen: set[str] = set()

        def advance(name: str) -> None:
            if name not in seen:  # (a tied lm_head.weight is read again to compare)
                seen.add(name)
                bar.advance()

        tensors.on_read = advance
        with bar:
            loaded = from_hf_tensors(tensors, nnx.to_pure_dict(target.params), cfg.model)
        n_params = sum(int(np.prod(w.shape)) for w in _flatten(loaded).values())
        state = _step0_state(program, target, loaded, seed=cfg.train.seed)
        del loaded
        with stage("import: writing the step-0 checkpoint", enabled=many):
            manager = ckpt.make_manager(tmp, max_to_keep=cfg.train.keep_checkpoints)
            meta = {"step": 0, "seed": cfg.train.seed, "time": time.time(), "metrics": {}}
            extra = {**meta, "imported_from": str(src.absolute())}
            with _host_arrays_written_in_place():
                ckpt.save(manager, 0, state, extra, to_dict(cfg))
            manager.close()
        # The tokenizer after the weights are written and dropped: a 151k-id
        # tokenizers.Tokenizer holds ~0.2 GB (Qwen2.5's shape), which would otherwise add to
        # the weights' peak (glibc keeps a freed heap resident, so dropping it early is no help).
        del state
        tokenizer = tokenizer_from_hf(src, hf, cfg)
        tokenizer.save(tmp)
        (tmp / "config.json").write_text(to_json(cfg) + "\n")
        _commit(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"tensors": len(tensors), "parameters": n_params, "out": str(out), "config": cfg}


def _step0_state(program: Any, target: Any, params: dict, *, seed: int) -> Any:
    """The step-0 TrainState of `params` (host arrays shaped like target.params), as
    `train.step.init_state` would give after loading them, without its device copies.

    Leaves stay NumPy arrays: orbax writes them as they are, and restoring into
    `abstract_state` places them on the devices (checkpoint.restore). The optimizer state is
    `program.tx.init(params)`: its leaves that do not depend on the parameters (counts, Muon's
    Newton-Schulz coefficients) are computed on a probe whose every dimension is 1, and the
    moment buffers, which optax starts at zeros_like(params), are `_untouched_zeros`, so
    AdamW's mu and nu (2x the weights in the parameters' dtype) cost no memory here. A
    transformation whose buffers do not start at zero (checked on the probe of ones) gets its
    real init instead.
    """
    import jax
    import jax.numpy as jnp
    from flax import nnx

    param_state = jax.tree.map(lambda x: x, target.params)  # a copy to fill (no arrays yet)
    nnx.replace_by_pure_dict(param_state, params)
    probe = jax.tree.map(lambda p: jnp.ones((1,) * p.ndim, p.dtype), param_state)
    probe_opt = program.tx.init(probe)
    abstract_opt = target.opt_state
    full, treedef = jax.tree.flatten(abstract_opt)
    small = jax.tree.leaves(probe_opt)

    def leaf(a: Any, p: Any) -> np.ndarray | None:
        if tuple(a.shape) == tuple(p.shape):  # independent of the parameters: the value itself
            return np.asarray(p, dtype=a.dtype)
        if not np.any(np.asarray(p)):  # a moment buffer: zeros_like(params)
            return _untouched_zeros(a.shape, a.dtype)
        return None

    same = jax.tree.structure(probe_opt) == treedef
    leaves = [leaf(a, p) for a, p in zip(full, small, strict=True)] if same else [None]
    if any(x is None for x in leaves):
        opt_state = jax.tree.map(np.asarray, jax.jit(program.tx.init)(param_state))
    else:
        opt_state = jax.tree.unflatten(treedef, leaves)
    state = target.replace(
        step=np.zeros((), np.int32),
        params=param_state,
        opt_state=opt_state,
        # As train/step.py's _state_of: the raw key data of seed + 1.
        rng=np.asarray(jax.random.key_data(jax.random.key(seed + 1))),
    )
    # The state must be exactly what restore expects: same tree, shapes and dtypes.
    jax.tree.map(_check_leaf, target, state)
    return state


def _untouched_zeros(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """Zeros whose pages are not resident until written: a private anonymous mapping, whose
    reads map the kernel's shared zero page (orbax reads them to write the checkpoint).
    np.zeros gives that only when malloc serves it with a fresh mmap: glibc does above its mmap
    threshold, but mimalloc, which the CLI preloads (compactlm/allocator.py), may reuse freed
    memory and clear it: the import's peak at Qwen2.5-0.5B's shape was 2.96 GiB with np.zeros
    under mimalloc, 2.47 GiB with this."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if nbytes < 2**20:  # (a page each at least; small leaves are not worth a mapping)
        return np.zeros(shape, dtype)
    pages = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return np.frombuffer(pages, dtype).reshape(shape)


@contextlib.contextmanager
def _host_arrays_written_in_place() -> Iterator[None]:
    """Within: orbax writes NumPy leaves without first deep-copying them.

    Its NumpyHandler copies every host array before writing (`deepcopy_host_arrays`), so that an
    asynchronous save is safe from a caller that mutates the arrays afterwards. This save is
    synchronous (checkpoint.make_manager) and the arrays are never touched again, and the copy
    would cost the weights once more and fill in every zero page of the optimizer state (2x
    the weights for AdamW): the import's peak at Qwen2.5-0.5B's shape was 5.2 GiB with it,
    2.5 GiB without. The global handler is swapped for the save only, then put back.
    """
    import orbax.checkpoint as ocp

    handlers = ocp.type_handlers
    previous = handlers.get_type_handler(np.ndarray)

    def register(handler: Any) -> None:
        absl = logging.getLogger("absl")  # (orbax warns on every override, on stderr)
        level = absl.level
        absl.setLevel(logging.ERROR)
        try:
            handlers.register_type_handler(np.ndarray, handler, override=True)
        finally:
            absl.setLevel(level)

    register(handlers.NumpyHandler(deepcopy_host_arrays=False))
    try:
        yield
    finally:
        register(previous)


def _check_leaf(want: Any, got: Any) -> None:
    if tuple(want.shape) != tuple(got.shape) or np.dtype(want.dtype) != np.dtype(got.dtype):
        raise AssertionError(f"step-0 state leaf {got.shape} {got.dtype}, expected {want}")


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
