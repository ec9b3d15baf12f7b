"""GGUF LoRA adapters for llama.cpp's `--lora`: a run's A / B factors beside its unmerged base.

`compactlm export RUN_DIR format=gguf adapter=separate workdir=OUT` writes `OUT/model.gguf` from
the run's base weights (as interop/gguf.py writes any run, nothing merged) and `OUT/adapter.gguf`
as llama.cpp's convert_lora_to_gguf.py writes one and src/llama-adapter.cpp reads it:

- metadata: `general.architecture` (the base's: llama.cpp refuses a mismatch),
  `general.type = "adapter"`, `adapter.type = "lora"`, `adapter.lora.alpha` (f32);
- per adapted projection W (GGUF [out, in], ne = [in, out]): `<W's name>.lora_a`, NumPy
  [r, in] (ne = [in, r]; PEFT's lora_A.weight) and `<W's name>.lora_b`, NumPy [out, r]
  (ne = [r, out]; lora_B.weight). llama.cpp checks a.ne0 = W.ne0, b.ne1 = W.ne1, a.ne1 = b.ne0
  and computes W·x + (alpha / r)·lora_b·(lora_a·x) with r = lora_b's ne0
  (`llama_adapter_lora_weight::get_scale`, `build_lora_mm`).

Ours (models/lora.py): A_p [in, r], B_p [r, out_p] per part p of a fused projection (q / k / v
of qkv_proj, gate / up of gate_up_proj, in the columns `Layout.split` names: HF's row order),
ΔW_p = s·A_p·B_p in our [in, out] orientation. So lora_a = A_pᵀ, lora_b = B_pᵀ, and
alpha = s·r: `adapter.alpha` for LoRA (s = alpha / r), alpha·√r for rsLoRA (s = alpha / √r).
Where the base's q / k rows are permuted into interleaved RoPE pairs (llama, smollm3:
gguf_arch.PERMUTED, gguf.py `_permuted`), lora_b's rows get the same permutation, which keeps
lora_b·lora_a the permuted ΔW (convert_lora_to_gguf runs LlamaModel.permute on its
LoraTorchTensor, which permutes B only); gguf.py passes the base's own rule as `permute`.

What GGUF LoRA cannot express is refused before any weight loads: DoRA (its magnitude rescales
each output column by m / ‖W + s·A·B‖; llama.cpp only adds s·B·A), adapter.alpha = 0 (llama.cpp
reads alpha 0 as "scale 1"). PiSSA is a plain LoRA on the residual base W − s·A·B: the run holds
that residual as its base, so model.gguf gets it, and the adapter fits that file only.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

from compactlm.interop.hf_config import InteropError

ADAPTER_FILE = "adapter.gguf"
# our adapter part (models/linear.py layouts) → HF module under model.layers.{i}
_HF_PART = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj",
    "up": "mlp.up_proj",
    "down": "mlp.down_proj",
}


@dataclasses.dataclass
class LoraFactors:
    """A run's adapter in HF orientation: HF weight name → (lora_a [r, in], lora_b [out, r])."""

    scale: float  # s in W + s·B·A
    rank: int
    init: str  # kaiming | gaussian | pissa (pissa: the base is the residual)
    factors: dict[str, tuple[np.ndarray, np.ndarray]]

    @property
    def alpha(self) -> float:
        """llama.cpp's adapter.lora.alpha: it scales by alpha / r, so alpha = s·r."""
        return self.scale * self.rank


def check_run(cfg, adapter: str) -> None:
    """Refuse, from config.json alone, an adapter= that this run cannot be exported with."""
    if adapter != "separate":
        return
    a = cfg.model.adapter
    if a.kind == "none":
        raise InteropError(
            "adapter=separate: this run has no adapter (adapter.kind=none); export it with "
            "adapter=merged (the default)"
        )
    if a.kind == "dora":
        raise InteropError(
            "adapter=separate: DoRA's magnitude vector (m / ‖W + s·B·A‖ per output column) has no "
            "GGUF LoRA counterpart (llama.cpp adds s·B·A only); use adapter=merged"
        )
    if a.alpha == 0:
        raise InteropError(
            "adapter=separate: adapter.alpha=0, which llama.cpp reads as scale 1, not 0; use "
            "adapter=merged"
        )


def adapter_factors(model, m) -> LoraFactors:
    """Every adapted projection's (lora_a, lora_b) in f32 from a model with adapters."""
    from compactlm.models.linear import iter_linears
    from compactlm.models.transfer import unstack_blocks

    a_cfg = m.adapter
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    sites = [
        (f"model.layers.{i}.", lin)
        for i, block in enumerate(unstack_blocks(model))
        for _, lin in iter_linears(block)
    ]
    if model.lm_head is not None:
        sites.append(("", model.lm_head))
    V = m.vocab_valid or m.vocab_size  # the head's rows as export writes them (padding dropped)
    for prefix, lin in sites:
        ad = lin.adapter
        if ad is None:
            continue
        if ad.magnitude is not None:  # check_run refuses DoRA from the config already
            raise InteropError("adapter=separate cannot express DoRA; use adapter=merged")
        for p in ad.parts:
            a = np.asarray(ad.a[p][...], np.float32).T  # [r, in]
            b = np.asarray(ad.b[p][...], np.float32).T  # [out, r]
            if p == "lm_head":
                out["lm_head.weight"] = (a, b[:V])
            else:
                out[f"{prefix}{_HF_PART[p]}.weight"] = (a, b)
    if not out:
        raise InteropError("adapter=separate: the run's adapter targets no projection")
    return LoraFactors(scale=float(a_cfg.scale), rank=a_cfg.rank, init=a_cfg.init, factors=out)


def load_separate(run_dir: str):
    """(base config, tokenizer, base state, base Params, step, LoraFactors) of an adapter run:
    the base as the run holds it (packed codes kept; PiSSA's residual), its adapter apart."""
    from flax import nnx

    from compactlm.data import load_tokenizer
    from compactlm.models.config import AdapterConfig
    from compactlm.models.transfer import transfer_weights
    from compactlm.models.transformer import Transformer
    from compactlm.train.loop import load_run

    trainer = load_run(run_dir)
    cfg = trainer.cfg
    model = trainer.program.model(trainer.state)
    lora = adapter_factors(model, cfg.model)
    base_model_cfg = dataclasses.replace(cfg.model, adapter=AdapterConfig())
    base_cfg = dataclasses.replace(cfg, model=base_model_cfg)
    base = Transformer(base_model_cfg, rngs=nnx.Rngs(cfg.train.seed))
    transfer_weights(base, model)  # merge=False: each linear's own weight (packed: as stored)
    state = nnx.to_pure_dict(nnx.state(base))
    params = nnx.to_pure_dict(nnx.state(base, nnx.Param))
    tokenizer = load_tokenizer(Path(run_dir))
    return base_cfg, tokenizer, state, params, int(trainer.state.step), lora


def write_adapter(
    path: Path, lora: LoraFactors, *, arch: str, names, t: str, run_dtype: str, name: str, permute
) -> dict[str, Any]:
    """Write the GGUF LoRA to `path`; `names` is gguf's tensor name map of the base, `permute`
    the base's own row permutation (hf_name, array) → array, `t` the export's type=."""
    import gguf

    from compactlm.interop.gguf_arch import tensor_order
    from compactlm.interop.gguf_blocks import Written, file_type, float_tensor, float_value

    # The factors are small and llama.cpp multiplies them in float: a float type, as
    # convert_lora_to_gguf's --outtype f32 / f16 / bf16; quantized types apply to the base only.
    ft = t if t in ("f32", "f16", "bf16") else ("f32" if run_dtype == "float32" else "bf16")
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_name(name)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, lora.alpha)
    writer.add_file_type(file_type([ft.upper()]))
    written: list[Written] = []
    for hf_name in sorted(lora.factors, key=tensor_order):
        gname = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gname is None:
            raise InteropError(f"tensor {hf_name} has no name in gguf's {arch} tensor map")
        a, b = lora.factors[hf_name]
        for suffix, w in ((".lora_a", a), (".lora_b", permute(hf_name, b))):
            data, raw = float_tensor(w, ft)
            err = float(np.max(np.abs(float_value(w, ft) - w), initial=0.0))
            writer.add_tensor(gname + suffix, data, raw_dtype=raw)
            written.append(Written(gname + suffix, ft.upper(), "as stored", err))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {
        "file": path.name,
        "rank": lora.rank,
        "alpha": lora.alpha,
        "scale": lora.scale,
        "init": lora.init,
        "projections": len(lora.factors),
        "written": written,
    }


def report(adapter: dict[str, Any], out_dir: str) -> list[str]:
    """The printed lines of the adapter file (after the base's)."""
    size = os.path.getsize(Path(out_dir) / adapter["file"])
    worst = max(adapter["written"], key=lambda r: r.max_error)
    types = sorted({r.ggml_type for r in adapter["written"]})
    lines = [
        f"  {adapter['file']}: LoRA for llama.cpp --lora, rank {adapter['rank']}, "
        f"adapter.lora.alpha {adapter['alpha']:g} (scale {adapter['scale']:g}), "
        f"{adapter['projections']} projections, {'/'.join(types)}, max |weight error| "
        f"{worst.max_error:.3g}, {size:,} bytes; model.gguf is the base, unmerged"
    ]
    if adapter["init"] == "pissa":
        lines.append(
            "  adapter.init=pissa: model.gguf holds the residual base W − s·B·A; the adapter "
            "fits that file, not an export of the original base run"
        )
    return lines
