"""Model surgery: prune and / or quantize every block linear of a dense Transformer in place.

``apply_compression(model, prune=..., quant=..., tokens=...)`` runs block by block
(``calibrate.layerwise``: block ℓ calibrated on the outputs of the already compressed blocks),
and per block, on its four sites (qkv, o, gate_up, down):

1. pruning (magnitude / Wanda / SparseGPT) → a keep mask (SparseGPT also updates the weights);
2. AWQ only: per-input scales searched for qkv, gate_up and down on the dense block, then
   folded exactly — ``1/s`` into the RMSNorm scale before qkv and gate_up, into the *up* columns
   of gate_up for down (whose input is silu(gate)·up). o is not rescaled: with grouped-query
   attention its input channels belong to query heads that share a v head, so no per-channel
   fold exists (llm-awq skips it for GQA too);
3. quantization (RTN / GPTQ / AWQ's RTN of diag(s)·W) with the mask, if any, held fixed.

The block's kernels are overwritten with the dequantized / pruned weights (so the model now
computes exactly what the packed model will), and the per-linear results — codes, scales, mask —
are returned for export. The LM head and the embedding stay dense (as in GPTQ, AWQ, QLoRA).

q, k and v (gate and up) share their site's statistics; the algorithms treat each output column
independently given them, except for unstructured magnitude / SparseGPT selection, which ranks
over the whole fused matrix here.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from compactlm import interrupt
from compactlm.compress import calibrate, prune, quantize
from compactlm.train.metrics import StageProgress

# (sub-module, attribute) of the RMSNorm whose scale absorbs an AWQ site's 1/s.
_AWQ_NORM = {"qkv": ("attn_norm",), "gate_up": ("mlp_norm",)}


@dataclasses.dataclass
class CompressedLinear:
    """What one block linear became."""

    weight: np.ndarray  # [K, N] float32: the weight the model computes with now
    quantized: quantize.QuantizedWeight | None  # codes / scales (None: not quantized)
    keep: np.ndarray | None  # [K, N] bool (None: not pruned)
    awq_alpha: float | None = None


def linear_of(block, site: str):
    sub, attr = calibrate.SITES[site]
    return getattr(getattr(block, sub), attr)


def _read(block, site: str) -> np.ndarray:
    return np.asarray(linear_of(block, site).kernel[...], np.float32)


def _write(block, site: str, w: np.ndarray) -> None:
    lin = linear_of(block, site)
    lin.kernel[...] = jnp.asarray(w, lin.kernel[...].dtype)


def quant_group(quant: quantize.QuantConfig, pattern: str | None) -> int:
    """Dense rows per scale. int4 + 2:4 groups count *kept* rows (packing.py): 2 G dense rows."""
    if pattern == "2:4" and quant.group_size:
        return 2 * quant.group_size
    return quant.group_size


def needs_calibration(prune_cfg, quant) -> bool:
    return (prune_cfg is not None and prune_cfg.method != "magnitude") or (
        quant is not None and quant.method != "rtn"
    )


def _prune_site(w, st, cfg: prune.PruneConfig):
    if cfg.method == "magnitude":
        keep = prune.magnitude(w, cfg.pattern, cfg.sparsity)
        return w * keep, keep
    if cfg.method == "wanda":
        keep = prune.wanda(w, st.x_norm, cfg.pattern, cfg.sparsity)
        return w * keep, keep
    return prune.sparsegpt(
        w, st.hessian, cfg.pattern, cfg.sparsity, damp=cfg.damp, block_size=cfg.block_size
    )


AWQ_SITES = ("qkv", "gate_up", "down")


def fold_awq_scales(block, weights: dict, scales: dict) -> dict:
    """diag(s)·W for each AWQ site, with 1/s folded into what produces that site's input.

    Changes the block's RMSNorm scales in place and returns the new weights (not yet written):
    before rounding, the block computes exactly the same function (a test holds it).
    """
    for site, (norm_name,) in _AWQ_NORM.items():
        norm = getattr(block, norm_name)  # its gain, w or Gemma's 1 + w (RMSNorm.gain)
        norm.set_gain(norm.gain() / jnp.asarray(scales[site], jnp.float32))
    weights = dict(weights)
    # down's input is act(gate) · up: dividing up's output columns (and its bias) divides it.
    f = weights["gate_up"].shape[1] // 2
    gate_up = weights["gate_up"].copy()
    gate_up[:, f:] /= scales["down"][None, :]
    weights["gate_up"] = gate_up
    bias = block.mlp.gate_up_bias  # Llama's mlp_bias
    if bias is not None:
        up_scale = jnp.concatenate([jnp.ones(f), jnp.asarray(scales["down"])])
        bias[...] = (bias[...].astype(jnp.float32) / up_scale).astype(bias[...].dtype)
    for site, s in scales.items():
        weights[site] = weights[site] * s[:, None]
    return weights


def _compress_block(block, stats, prune_cfg, quant, keeps, pattern) -> dict[str, CompressedLinear]:
    weights = {site: _read(block, site) for site in calibrate.SITES}
    keeps = dict(keeps) if keeps else dict.fromkeys(weights)
    if prune_cfg is not None:
        for site, w in weights.items():
            weights[site], keeps[site] = _prune_site(w, stats.get(site), prune_cfg)
    out = {s: CompressedLinear(w, None, keeps[s]) for s, w in weights.items()}
    if quant is None:
        for site, rec in out.items():
            _write(block, site, rec.weight)
        return out
    grid = quantize.Grid(quant.format, quant.bits, quant.scale_dtype)
    g = quant_group(quant, pattern)
    if quant.method == "awq":
        # Search every site on the unscaled block first (llm-awq's order), then fold.
        scales = {}
        for site in AWQ_SITES:
            st = stats[site]
            res = quantize.awq(weights[site], st.hessian, st.mean_abs, grid, g)
            scales[site], out[site].awq_alpha = res.scales, res.alpha
        weights = fold_awq_scales(block, weights, scales)
    for site, w in weights.items():
        keep = keeps[site]
        if quant.method == "gptq":
            qw = quantize.gptq(
                w,
                stats[site].hessian,
                grid,
                g,
                act_order=quant.act_order,
                damp=quant.damp,
                block_size=quant.block_size,
                mask=keep,
            )
        else:
            qw = quantize.rtn(w if keep is None else w * keep, grid, g)
        out[site].quantized = qw
        out[site].weight = qw.dequantize()
        _write(block, site, out[site].weight)
    return out


def check_shapes(model, prune_cfg, quant, pattern: str | None = None) -> None:
    """Every site's K fits the pattern and the group size (before any work is done)."""
    pattern = prune_cfg.pattern if prune_cfg is not None else pattern
    block = calibrate.get_block(model, 0)
    for site in calibrate.SITES:
        k, n = linear_of(block, site).kernel.shape  # (a shape-only model from the config too)
        where = f"{site} [K={k}, N={n}]"
        try:
            if pattern is not None:
                prune.check_shape((k, n), pattern)
                if pattern == "2:4" and k % 32:
                    raise ValueError(f"2:4 storage needs K % 32 == 0, got K={k}")
            if quant is not None:
                quantize.resolve_group(k, quant_group(quant, pattern))
        except ValueError as e:
            raise ValueError(f"layer {where}: {e}") from None


def apply_compression(
    model,
    *,
    prune_cfg: prune.PruneConfig | None = None,
    quant: quantize.QuantConfig | None = None,
    keeps: dict[tuple[int, str], np.ndarray] | None = None,
    pattern: str | None = None,
    tokens: np.ndarray | None = None,
    batch_size: int = 16,
    progress: bool = True,
    label: str | None = None,
) -> dict[tuple[int, str], CompressedLinear]:
    """Compress ``model`` in place; returns {(layer, site): CompressedLinear}.

    ``keeps`` (with its ``pattern``): masks from an earlier pruning to hold fixed while
    quantizing (pruning, then recovery, then quantization). ``progress``: a per-block display on
    stderr (train/metrics.py::StageProgress) named ``label`` (default: ``phase_label``).
    """
    if prune_cfg is None and quant is None:
        raise ValueError("nothing to do: give a pruning and / or a quantization config")
    if prune_cfg is not None:
        pattern = prune_cfg.pattern
    if quant is not None and pattern == "2:4":
        if quant.format != "int4":
            raise ValueError(
                f"2:4 + quantization is stored as sparse24_int4 (symmetric int4 values); "
                f"format {quant.format!r} is not supported with pattern 2:4"
            )
    check_shapes(model, prune_cfg, quant, pattern)
    results: dict[tuple[int, str], CompressedLinear] = {}
    n = calibrate.n_blocks(model)
    calibrated = needs_calibration(prune_cfg, quant)
    if calibrated and tokens is None:
        raise ValueError("this method needs calibration tokens")
    label = label or phase_label(prune_cfg, quant, fixed_mask=keeps is not None and pattern)
    # A block's time (since the previous block was done) includes its calibration forward
    # passes, which layerwise runs before calling compress_block.
    bar = StageProgress(label, total=n, unit="block", enabled=progress)

    def compress_block(layer, block, stats):
        # A safe point (compactlm/interrupt.py): blocks go in order, so `layer` of them are done.
        interrupt.check(f"stopped after {layer} of {n} blocks")
        fixed = None if keeps is None else {s: keeps[(layer, s)] for s in calibrate.SITES}
        for site, rec in _compress_block(block, stats, prune_cfg, quant, fixed, pattern).items():
            results[(layer, site)] = rec
        bar.advance()

    with bar:
        if calibrated:
            calibrate.layerwise(model, tokens, compress_block, batch_size=batch_size)
        else:
            for layer in range(n):
                block = calibrate.get_block(model, layer)
                compress_block(layer, block, {})
                calibrate.set_block(model, layer, block)
    interrupt.check(f"stopped after {n} of {n} blocks")
    return results


_METHOD_NAMES = {
    "rtn": "RTN",
    "gptq": "GPTQ",
    "awq": "AWQ",
    "wanda": "Wanda",
    "sparsegpt": "SparseGPT",
}


def phase_label(prune_cfg, quant, *, fixed_mask: str | bool | None = None) -> str:
    """What a compression pass does, for its progress display: "calibrating + GPTQ int4",
    "magnitude 2:4 + RTN int4", "calibrating + GPTQ int4, 2:4 mask fixed"."""
    parts = []
    if prune_cfg is not None:
        what = f"{_METHOD_NAMES.get(prune_cfg.method, prune_cfg.method)} {prune_cfg.pattern}"
        if prune_cfg.pattern == "unstructured":
            what += f" {prune_cfg.sparsity:.0%}"
        parts.append(what)
    if quant is not None:
        bits = "" if quant.bits == 4 else f" {quant.bits}-bit"
        parts.append(f"{_METHOD_NAMES.get(quant.method, quant.method)} {quant.format}{bits}")
    text = " + ".join(parts)
    if needs_calibration(prune_cfg, quant):
        text = "calibrating + " + text
    if fixed_mask:
        text += f", {fixed_mask} mask fixed" if isinstance(fixed_mask, str) else ", mask fixed"
    return text


def refresh_weights(model, results: dict) -> None:
    """Read the model's current block kernels back into `results` (after recovery training)."""
    for layer in range(calibrate.n_blocks(model)):
        block = calibrate.get_block(model, layer)
        for site in calibrate.SITES:
            rec = results[(layer, site)]
            rec.weight = _read(block, site)
            if rec.keep is not None and (rec.weight[~rec.keep] != 0).any():
                raise AssertionError(f"layer {layer} {site}: a pruned weight became non-zero")
