"""Export: compressed block linears → the kernels' packed operands → a loadable run directory.

Which storage a compression produces (``models/config.py`` names the formats):

| compression                               | weight_format  | arrays per linear (packing.py)   |
|-------------------------------------------|----------------|----------------------------------|
| quantize int4 / int4_affine / nf4 / fp4   | int4/nf4/fp4   | qweight, scales (, zeros)        |
| prune 2:4                                 | sparse24       | values [K/2, N], meta [K/32, N]  |
| prune 2:4 + quantize int4                 | sparse24_int4  | qvalues, meta, scales            |
| prune unstructured / 4:8 (+ quantize)     | dense (or 4-bit) | the weights with their zeros   |

Unstructured and 4:8 sparsity have no kernel: they are stored dense (or quantized) with exact
zeros, and the size report says so. The output run is an ordinary run directory (config.json
with the storage format, the source's tokenizer, one checkpoint): ``eval``, ``generate`` and
``info`` load it through the same ``Trainer``, and its linears call ``int4_matmul`` /
``sparse24_matmul`` with ``impl="auto"``.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import jax
import numpy as np

from compactlm import interrupt
from compactlm.compress import calibrate
from compactlm.compress.quantize import PACKED_BITS
from compactlm.kernels import packing


def storage_format(prune_cfg, quant) -> str:
    """The model.weight_format a compression is stored in."""
    pattern = None if prune_cfg is None else prune_cfg.pattern
    if quant is None:
        return "sparse24" if pattern == "2:4" else "dense"
    if pattern == "2:4":
        return "sparse24_int4"
    return "int4" if quant.format in ("int4", "int4_affine") else quant.format


def check_exportable(prune_cfg, quant) -> None:
    """Refuse what has no packed storage before any work is done."""
    if quant is not None and quant.bits not in PACKED_BITS:
        raise ValueError(
            f"bits={quant.bits} has no packed storage format (the int4 container holds codes of "
            f"at most 4 bits); valid for export: {', '.join(map(str, PACKED_BITS))}"
        )
    if quant is not None and quant.double_quant and quant.format not in ("nf4", "fp4"):
        raise ValueError(
            f"double_quant=true quantizes nf4 / fp4 absmax constants (QLoRA §3), not "
            f"format={quant.format!r}'s scales; use format=nf4 or fp4"
        )


def double_quant(quant) -> bool:
    """Whether an export stores its absmax constants double-quantized."""
    return quant is not None and quant.double_quant and quant.format in ("nf4", "fp4")


def apply_double_quant(model, results: dict) -> None:
    """Make the (fake-quantized) model compute what a double-quantized export stores:
    W = codebook[q] · double_dequantize(double_quantize(absmax)), per block linear, written
    into `results` and the model's kernels (the command's "after" is then the packed run's)."""
    from compactlm.compress.apply import _write

    for layer in range(calibrate.n_blocks(model)):
        block = calibrate.get_block(model, layer)
        for site in calibrate.SITES:
            rec = results[(layer, site)]
            q = rec.quantized
            absmax = packing.double_dequantize(packing.double_quantize(q.scales))
            rec.weight = q._replace(scales=np.asarray(absmax, np.float32)).dequantize()
            _write(block, site, rec.weight)
        calibrate.set_block(model, layer, block)


def packed_arrays(rec, fmt: str, param_dtype, *, dq: bool = False) -> dict[str, np.ndarray]:
    """One CompressedLinear as the arrays its storage class holds (models/quantized.py); dq:
    nf4 / fp4 absmax double-quantized (packing.double_quantize) in place of `scales`."""
    if fmt == "dense":
        return {"kernel": rec.weight.astype(param_dtype)}
    if fmt in ("int4", "nf4", "fp4"):
        out = rec.quantized.pack()
        if dq:
            codes, scales, mean = packing.double_quantize(out.pop("scales"))
            out |= {
                "absmax_codes": np.asarray(codes),
                "absmax_scales": np.asarray(scales),
                "absmax_mean": np.asarray(mean),
            }
        return out
    values, meta = packing.compress_24(jax.numpy.asarray(rec.weight), check=True)
    if fmt == "sparse24":
        return {"values": np.asarray(values).astype(param_dtype), "meta": np.asarray(meta)}
    # sparse24_int4: the codes at the kept positions, in the int4 nibble layout over K/2 rows.
    i0, i1 = (np.asarray(a) for a in packing.unpack_meta_24(meta))
    k, n = rec.weight.shape
    codes = rec.quantized.codes.reshape(k // 4, 4, n)
    kept = np.stack(
        [np.take_along_axis(codes, i0[:, None], 1), np.take_along_axis(codes, i1[:, None], 1)],
        axis=1,
    ).reshape(k // 2, n)
    out = {
        "qvalues": np.asarray(packing.pack_int4(kept.astype(np.int32))),
        "meta": np.asarray(meta),
        "scales": rec.quantized.scales.astype(np.float32),
    }
    if rec.quantized.zeros is not None:
        out["zeros"] = rec.quantized.zeros.astype(np.float32)
    return out


def size_report(results: dict, model_cfg, fmt: str, quant) -> dict:
    """Bytes of the weights of the dense source and as stored in `fmt`, both from the one
    storage-cost formula (`models.footprint.weight_bytes`, tested equal to what `write_run`
    writes), and notes."""
    from compactlm.models.footprint import weight_bytes

    dense = weight_bytes(model_cfg)
    stored = weight_bytes(compressed_model_config(model_cfg, fmt, quant))
    dense_bf16 = weight_bytes(dataclasses.replace(model_cfg, param_dtype="bfloat16"))
    nnz = sum(int(np.count_nonzero(rec.weight)) for rec in results.values())
    total = sum(rec.weight.size for rec in results.values())
    notes = []
    if double_quant(quant):
        notes.append("absmax constants double-quantized (int8, blocks of 256; QLoRA §3)")
    if quant is not None and quant.bits == 3:
        notes.append("3-bit codes are stored in 4-bit nibbles (the int4 container): no bytes saved")
    if fmt == "dense" and nnz < total:
        notes.append("unstructured / 4:8 sparsity has no kernel: stored dense with exact zeros")
    return {
        "weight_format": fmt,
        "dense_linear_bytes": dense["linear"],
        "dense_linear_bytes_bf16": dense_bf16["linear"],
        "linear_bytes": stored["linear"],
        "dense_model_bytes": dense["total"],
        "model_bytes": stored["total"],
        "linear_bits_per_weight": 8 * stored["linear"] / total,
        "density": nnz / total,
        "note": "; ".join(notes),
    }


def compressed_model_config(model, fmt: str, quant):
    """The source's ModelConfig with the storage format of the compression."""
    changes = {"weight_format": fmt}
    if quant is not None:
        # group_size 0 = per channel: each linear's own K (models/quantized.py).
        changes |= {"quant_group_size": quant.group_size, "double_quant": double_quant(quant)}
        if quant.format == "int4_affine":
            changes["quant_zero_point"] = True
    return dataclasses.replace(model, **changes)


def load_compressed(model, source, arrays: dict) -> None:
    """Fill a model built with the compressed storage format: block linears from `arrays`,
    everything else (embedding, norms — AWQ folded its scales into them —, an untied head)
    from the dense `source` model."""
    from flax import nnx

    src_flat = dict(nnx.to_flat_state(nnx.state(source, nnx.Param)))
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        if not _is_block_linear(path):
            var[...] = src_flat[path][...]
    fmt = model.cfg.weight_format
    for layer in range(calibrate.n_blocks(model)):
        block = calibrate.get_block(model, layer)
        for site in calibrate.SITES:
            sub, attr = calibrate.SITES[site]
            linear = getattr(getattr(block, sub), attr)
            for name, value in arrays[(layer, site)].items():
                var = getattr(linear, name)
                if tuple(var[...].shape) != value.shape:
                    raise ValueError(
                        f"layer {layer} {site}.{name}: stored shape {value.shape} does not fit "
                        f"the {fmt} layer's {tuple(var[...].shape)}"
                    )
                var[...] = jax.numpy.asarray(value, var[...].dtype)
        calibrate.set_block(model, layer, block)


def write_run(trainer, results: dict, out: Path, *, prune_cfg, quant) -> dict:
    """Write the compressed run into `out`; returns the size report."""
    from flax import nnx

    from compactlm.data.tokenizer import TOKENIZER_FILE
    from compactlm.train.loop import Trainer

    interrupt.check("stopped before the compressed run was written")  # the last safe point

    fmt = storage_format(prune_cfg, quant)
    param_dtype = np.dtype(trainer.cfg.model.param_dtype)
    dq = double_quant(quant)
    arrays = {key: packed_arrays(rec, fmt, param_dtype, dq=dq) for key, rec in results.items()}
    source = trainer.program.model(trainer.state)
    sizes = size_report(results, trainer.cfg.model, fmt, quant)

    out.mkdir(parents=True, exist_ok=True)
    tok = Path(trainer.workdir) / TOKENIZER_FILE
    if tok.is_file():
        (out / TOKENIZER_FILE).write_bytes(tok.read_bytes())
    model_cfg = compressed_model_config(trainer.cfg.model, fmt, quant)
    cfg = dataclasses.replace(trainer.cfg, model=model_cfg)
    target = Trainer(cfg, out)
    state = target.restore_or_init()
    model = target.program.model(state)
    load_compressed(model, source, arrays)
    _, params, frozen = nnx.split(model, target.program.trainable, ...)
    target.state = state.replace(
        params=params, frozen=frozen, opt_state=target.tx.init(params), step=trainer.state.step
    )
    target.save()
    sizes["disk_bytes"] = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return sizes


def _is_block_linear(path: tuple) -> bool:
    names = {attr for _, attr in calibrate.SITES.values()}
    return any(str(p) in names for p in path)


def bits_label(sizes: dict) -> str:
    return f"{sizes['linear_bits_per_weight']:.2f} bits/weight"


def human_bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    exp = min(int(math.log(n, 1024)), 3)
    return f"{n / 1024**exp:.1f} {['B', 'KiB', 'MiB', 'GiB'][exp]}"


def _last_validation(run_dir: Path) -> str:
    """The run's last validation: eval.json (written after training; a distillation's `student`
    row), else the last `eval/` row of metrics.jsonl, else "not evaluated"."""
    import json

    from compactlm.train.loop import load_metrics

    def scores(row: dict, prefix: str = "") -> str:
        return f"loss {row[prefix + 'loss']:.4f}, bpb {row[prefix + 'bpb']:.4f}"

    path = run_dir / "eval.json"
    if path.is_file():
        try:
            row = json.loads(path.read_text())
            row = row if "loss" in row else row["student"]
            return f"{scores(row)} ({path.name})"
        except (ValueError, KeyError, TypeError) as e:
            return f"unknown: {path} is damaged ({type(e).__name__}: {e})"
    rows = [r for r in load_metrics(run_dir) if "eval/loss" in r and "eval/bpb" in r]
    if rows:
        return f"{scores(rows[-1], 'eval/')} (metrics.jsonl, step {rows[-1]['step']})"
    return "not evaluated"


def _data_line(cfg, run_dir: Path) -> str:
    """Corpus and tokenizer, with the split's sizes when data.json recorded them."""
    import json

    d = cfg.data
    line = f"corpus {d.corpus}, tokenizer {d.tokenizer} (vocab {cfg.model.vocab_size:,})"
    try:
        split = json.loads((run_dir / "data.json").read_text())
        line += (
            f"; {split['train_docs']:,} / {split['val_docs']:,} documents, "
            f"{split['train_bytes']:,} / {split['val_bytes']:,} bytes (train / validation)"
        )
    except (OSError, ValueError, KeyError, TypeError):
        pass  # data.json is written by training; a run directory without it still has a config
    return line


def run_info(run_dir: str) -> str:
    """`compactlm info RUN_DIR`: preset, parameters, shape, data, training progress, the last
    validation, storage format, bytes of the weights in memory and on disk, and the compression
    report when the run was made by `quantize` / `prune`."""
    import json

    from compactlm.models.footprint import count_params, weight_bytes
    from compactlm.train.loop import load_run
    from compactlm.train.run_dir import latest_checkpoint_dir

    trainer = load_run(run_dir)
    m = trainer.cfg.model
    w = weight_bytes(m)
    n = count_params(m)
    # From config.json itself: an older config without the field would read as the default.
    preset = json.loads((Path(run_dir) / "config.json").read_text()).get("preset", "not recorded")
    ckpt = latest_checkpoint_dir(run_dir)
    disk = sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file())
    fmt = m.weight_format
    if fmt in ("int4", "nf4", "fp4", "sparse24_int4"):
        extra = ", zero points" if m.quant_zero_point else ""
        if m.double_quant and fmt in ("nf4", "fp4"):
            extra += ", double-quantized absmax"
        fmt += f" (group {m.quant_group_size or 'K'}{extra})"
    t = trainer.cfg.train
    lines = [
        f"run {run_dir} (step {int(trainer.state.step)})",
        f"  {'preset':<26} {preset}",
        f"  {'parameters':<26} {n['total']:,} (embedding {n['embedding']:,}, non-embedding "
        f"{n['non_embedding']:,}"
        + (f", lm_head {n['lm_head']:,})" if n["lm_head"] else ")")
        + (f" + adapters {n['adapter']:,}" if n["adapter"] else ""),
        f"  {'shape':<26} d_model {m.d_model}, {m.n_layers} layers, {m.n_heads} heads / "
        f"{m.n_kv_heads} kv heads (head_dim {m.resolved_head_dim}), d_ff {m.d_ff}, "
        f"vocab {m.vocab_size:,}, context {m.max_seq_len}",
        f"  {'data':<26} {_data_line(trainer.cfg, Path(run_dir))}",
        f"  {'training':<26} {int(trainer.state.step):,} of {t.steps:,} steps "
        f"(batch {t.batch_size} × seq_len {t.seq_len})",
        f"  {'validation':<26} {_last_validation(Path(run_dir))}",
        f"  {'block linears':<26} {fmt}",
        f"  {'weights in memory':<26} {w['total']:,} bytes (block linears {w['linear']:,}, "
        f"embedding / norms / head {w['other']:,}"
        + (f", adapters {w['adapter']:,})" if w["adapter"] else ")"),
        f"  {'checkpoint on disk':<26} {disk:,} bytes ({ckpt}; includes the optimizer state of "
        "the trainable parameters)",
    ]
    report = Path(run_dir) / "compression.json"
    if report.is_file():
        try:
            r = json.loads(report.read_text())
            made_by = (
                f"compactlm {r['command']} from {r['source']}"
                + (
                    f" ({r['merged_adapter']} adapters merged first)"
                    if r.get("merged_adapter")
                    else ""
                )
                + f": val bpb {r['before']['bpb']:.4f} → {r['after']['bpb']:.4f}"
            )
        except (ValueError, KeyError, TypeError) as e:
            made_by = f"unknown: {report} is damaged ({type(e).__name__}: {e})"
        lines.append(f"  {'made by':<26} {made_by}")
    return "\n".join(lines)
