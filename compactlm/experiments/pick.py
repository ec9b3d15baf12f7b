"""The model picker: presets × storage formats under a memory (and latency) budget, Pareto front.

`compactlm pick memory=2GiB [latency_ms=5] [device=cpu|h100|h200] [metric=bpb] [--plot]`

For every preset and storage format it predicts
- memory: weights (`models.footprint.weight_bytes`, the one storage-cost formula: what
  `compactlm quantize` / `prune` write for the format, embeddings and norms at the preset's
  param_dtype, everything in bf16 for the bfloat16 row), the KV cache at `context` tokens and
  the prefill activations (`activation_bytes`, below);
- decode latency per token: measured where a run of the preset's shape and format under `runs`
  has a `bench_decode.json` (`compactlm bench decode RUN_DIR`) from this kind of device at this
  batch size; otherwise an estimate, the memory-bound floor: bytes moved (every weight once +
  the KV cache at full context) ÷ the device's bandwidth (the CPU's measured here with a large
  copy, the GPUs' vendor peak from benchmarks/bench_kernels.py). Small models are bound by launch /
  dispatch overhead instead, far above that floor (30-100× on a CPU for nano / tiny), so the
  floor is printed as "≥ X"; `measure=true` times real dense decoding on this machine beside it;
- quality: the best `metric` measured by any run under `runs` (sweeps included: every
  `eval.json` beside a `config.json`; a distilled run's student section) whose model has the
  preset's shape and the format; dense runs are measured in f32, and their number stands
  (marked ~) for bf16 storage too.
It prints every candidate, marks the Pareto front (memory vs measured quality among those that
fit) and recommends one row, saying why.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path
from typing import Any, Literal

FORMATS: tuple[str, ...] = (
    "float32",
    "bfloat16",
    "int4",
    "nf4",
    "fp4",
    "sparse24",
    "sparse24_int4",
)
# Fewer bits second: among equal parameter counts, the more precise storage is preferred.
_PRECISION_ORDER = ("bfloat16", "float32", "nf4", "int4", "fp4", "sparse24", "sparse24_int4")
_UNITS = {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12}
_UNITS.update({"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40})


@dataclasses.dataclass(frozen=True, kw_only=True)
class PickConfig:
    """Options of `compactlm pick` (key=value)."""

    memory: str = "2GiB"  # budget for weights + KV cache + activations (B, KB, MiB, GiB, ...)
    # bound on decode ms/token (measured where a bench_decode.json has it, else the bandwidth
    # floor, which only rules out: a row under the bound by its floor may still miss it); 0 = none
    latency_ms: float = 0.0
    # The device decoding runs on: its bandwidth for the latency floor, and which
    # bench_decode.json measurements apply.
    device: Literal["cpu", "h100", "h200"] = "cpu"
    # The validation metric quality is measured in (an eval.json / compression.json key; lower
    # is better): bits per byte, loss in nats per token, or perplexity. bpb: comparable across
    # tokenizers.
    metric: Literal["bpb", "loss", "ppl"] = "bpb"
    context: int = 0  # tokens of KV cache / prefill; 0 = each preset's max_seq_len
    batch: int = 1  # sequences decoded together
    presets: tuple[str, ...] = ()  # presets considered; () = all
    formats: tuple[str, ...] = FORMATS  # storage formats considered
    # Folders searched for measured quality (run dirs: config.json + eval.json / compression.json).
    runs: tuple[str, ...] = ("runs",)
    corpus: str = "pystdlib"  # the validation corpus quality is compared on
    measure: bool = False  # time dense f32 decoding on this machine (CPU) beside the prediction
    plot: bool = False  # write quality vs memory as a PNG (also `--plot`)
    out: str = "runs/pick"  # folder for the plot

    def __post_init__(self) -> None:
        parse_bytes(self.memory)
        bad = [f for f in self.formats if f not in FORMATS]
        if not self.formats:
            raise ValueError(f"formats is empty; valid: {', '.join(FORMATS)}")
        if bad:
            raise ValueError(f"unknown formats {bad}; valid: {', '.join(FORMATS)}")
        if self.batch < 1 or self.context < 0 or self.latency_ms < 0:
            raise ValueError("batch must be >= 1, context and latency_ms >= 0")


def parse_bytes(text: str) -> int:
    """'2GiB' → 2147483648; '500MB' → 5e8; a bare number is bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = m.group(2).lower() if m else ""
    if not m or unit not in {**_UNITS, "": 1}:
        raise ValueError(f"memory={text!r}: use a number with B, KB, MB, GB, KiB, MiB or GiB")
    return int(float(m.group(1)) * _UNITS.get(unit, 1))


def device_bandwidth(device: str) -> tuple[float, str]:
    """(bytes/s, where the figure comes from) — the one device table for predictions."""
    from compactlm.benchmarks.bench_kernels import PEAK_BANDWIDTH_TBS, measure_cpu_bandwidth

    if device == "cpu":
        return measure_cpu_bandwidth(), "measured now: 256 MiB NumPy copy"
    return PEAK_BANDWIDTH_TBS[device] * 1e12, "vendor peak HBM (benchmarks/bench_kernels.py)"


def resolved_model(preset: str) -> Any:
    """The preset's ModelConfig with the vocabulary its tokenizer gives (as `info` does)."""
    from compactlm.config import make_config
    from compactlm.train.loop import configured_vocab

    return configured_vocab(make_config(preset)).model


def activation_bytes(model: Any, *, batch: int, context: int) -> int:
    """Prefill's working set: one block's live tensors over the context (x, normed x, q k v,
    attention output, gate, up — (2D + (N+2K)·H + 2F) values per token; the blocked attention
    keeps no T×S probabilities) plus the f32 logits of every position (B·T·V·4)."""
    h = model.resolved_head_dim
    per_token = 2 * model.d_model + (model.n_heads + 2 * model.n_kv_heads) * h + 2 * model.d_ff
    itemsize = 2 if model.compute_dtype == "bfloat16" else 4
    tokens = batch * context
    return tokens * per_token * itemsize + tokens * model.vocab_size * 4


def shape_key(model: dict[str, Any] | Any) -> tuple:
    fields = (
        "d_model",
        "n_layers",
        "n_heads",
        "n_kv_heads",
        "d_ff",
        "vocab_size",
        "tie_embeddings",
    )
    get = model.get if isinstance(model, dict) else lambda k: getattr(model, k)
    return tuple(get(f) for f in fields)


def _roots(runs: str | Path | tuple) -> list[Path]:
    return [Path(r) for r in ([runs] if isinstance(runs, str | Path) else list(runs))]


def storage_format(model: dict[str, Any], metrics: dict[str, Any] | None = None) -> str:
    """A run's storage as a FORMATS name: its weight_format, or its param_dtype when dense."""
    fmt = (metrics or {}).get("weight_format") or model.get("weight_format", "dense")
    return model.get("param_dtype", "float32") if fmt == "dense" else fmt


def run_metrics(run_dir: Path) -> dict[str, Any] | None:
    """The run's own model's metrics. A distilled run's eval.json holds a section per model
    (train/distill_run.py: teacher, student, baseline; read_metrics flattens them to
    "student/bpb"): the student is the run's model, the teacher has its own run directory."""
    from compactlm.experiments.sweep import read_metrics

    metrics = read_metrics(run_dir)
    if metrics and "bpb" not in metrics and "student/bpb" in metrics:
        return {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("student/")}
    return metrics


def measured_quality(
    runs: str | Path | tuple, metric: str, corpus: str = "pystdlib"
) -> dict[tuple, tuple[float, str]]:
    """{(shape_key, format): (best metric, run dir)} over every finished run directory under
    `runs` (a config.json and its metrics: eval.json, a distilled run's student section, or a
    compression command's compression.json) evaluated on `corpus`. Only evaluations of the whole
    validation split count (the most tokens seen among runs of the same tokenizer): a sweep that
    scored a prefix is not comparable with one that scored everything."""
    found = []
    paths = sorted({p for root in _roots(runs) for p in root.glob("**/config.json")})
    for config_path in paths:
        try:
            metrics = run_metrics(config_path.parent)
            config = json.loads(config_path.read_text())
            model = config["model"]
        except (json.JSONDecodeError, KeyError):
            continue
        if not metrics or metric not in metrics or config.get("data", {}).get("corpus") != corpus:
            continue
        # The same text is more tokens for a byte tokenizer than for BPE: "whole split" is
        # judged among runs that cut it into tokens alike.
        tokenizer = (config.get("data", {}).get("tokenizer"), model.get("vocab_size"))
        tokens = float(metrics.get("tokens", 0))
        key = (shape_key(model), storage_format(model, metrics))
        found.append((key, float(metrics[metric]), tokenizer, tokens, config_path.parent))
    full: dict[tuple, float] = {}
    for _, _, tokenizer, tokens, _ in found:
        full[tokenizer] = max(full.get(tokenizer, 0.0), tokens)
    best: dict[tuple, tuple[float, str]] = {}
    for key, value, tokenizer, tokens, run_dir in found:
        if tokens == full[tokenizer] and (key not in best or value < best[key][0]):
            best[key] = (value, str(run_dir))
    return best


def measured_decode(
    runs: str | Path | tuple, device: str, batch: int
) -> dict[tuple, tuple[float, str]]:
    """{(shape_key, format): (ms per decode step, where)} from every bench_decode.json under
    `runs` (benchmarks/bench_decode.py) measured on `device` at `batch` sequences; the fastest
    measurement of a (shape, format) when there are several."""
    from compactlm.benchmarks.bench_decode import BENCH_FILE

    best: dict[tuple, tuple[float, str]] = {}
    paths = sorted({p for root in _roots(runs) for p in root.glob(f"**/{BENCH_FILE}")})
    for path in paths:
        try:
            bench = json.loads(path.read_text())
            rows = bench["rows"] if bench["device"] == device else []
        except (OSError, ValueError, KeyError, TypeError):
            continue  # an unreadable or foreign file: no measurement
        for row in rows:
            try:
                if row["batch"] != batch:
                    continue
                model = json.loads((Path(row["run"]) / "config.json").read_text())["model"]
                key = (shape_key(model), storage_format(model))
                ms = 1e3 * row["batch"] / row["tokens_per_s"]  # one new token per sequence
            except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
                continue  # a run since deleted, or a row without its figures
            if key not in best or ms < best[key][0]:
                best[key] = (ms, f"{path} ({bench.get('device_kind', device)})")
    return best


def candidates(cfg: PickConfig, bandwidth: float) -> list[dict[str, Any]]:
    """Every preset × format with its predicted memory, latency and measured quality."""
    from compactlm.config import PRESETS
    from compactlm.models.footprint import count_params, memory_estimate

    quality = measured_quality(cfg.runs, cfg.metric, cfg.corpus)
    decode = measured_decode(cfg.runs, cfg.device, cfg.batch)
    rows = []
    for preset in cfg.presets or tuple(PRESETS):
        model = resolved_model(preset)
        context = cfg.context or model.max_seq_len
        mem = memory_estimate(model, batch_size=cfg.batch, seq_len=context)
        params = count_params(model)["total"]
        acts = activation_bytes(model, batch=cfg.batch, context=context)
        for fmt in cfg.formats:
            weights = mem[f"weights/{fmt}"]
            kv = mem["kv_cache/float32" if fmt == "float32" else "kv_cache/bfloat16"]
            measured = quality.get((shape_key(model), fmt))
            approx = False
            if measured is None and fmt == "bfloat16":  # dense runs are measured in f32
                measured, approx = quality.get((shape_key(model), "float32")), True
            floor = (weights + kv) / bandwidth * 1e3
            timed = decode.get((shape_key(model), fmt))
            rows.append(
                {
                    "preset": preset,
                    "format": fmt,
                    "params": params,
                    "weights": weights,
                    "kv_cache": kv,
                    "activations": acts,
                    "total": weights + kv + acts,
                    # measured where a bench_decode.json has it, else the bandwidth floor
                    "decode_ms": floor if timed is None else timed[0],
                    "decode_floor_ms": floor,
                    "decode_source": None if timed is None else timed[1],
                    "quality": None if measured is None else measured[0],
                    "quality_approx": approx and measured is not None,
                    "source": None if measured is None else measured[1],
                }
            )
    return rows


def pareto_front(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with measured quality that no other row beats on both memory and quality."""
    scored = [r for r in rows if r["quality"] is not None]
    return [
        r
        for r in scored
        if not any(
            o["total"] <= r["total"]
            and o["quality"] <= r["quality"]
            and (o["total"] < r["total"] or o["quality"] < r["quality"])
            for o in scored
        )
    ]


def recommend(rows: list[dict[str, Any]], metric: str) -> tuple[dict[str, Any] | None, str]:
    """(row, why) among the rows that fit: the best measured quality; without any measurement,
    the most parameters in the most precise storage that fits."""
    if not rows:
        return None, "nothing fits the budget"
    scored = [r for r in rows if r["quality"] is not None]
    if scored:
        best = min(scored, key=lambda r: (r["quality"], r["total"]))
        why = (
            f"lowest measured {metric} ({best['quality']:.4f}, {best['source']}) of the "
            f"{len(scored)} candidates with a measurement that fit"
        )
        unmeasured = [r for r in rows if r["quality"] is None and r["params"] > best["params"]]
        if unmeasured:
            bigger = max(unmeasured, key=lambda r: r["params"])
            why += (
                f"; larger presets also fit ({bigger['preset']}, {bigger['params']:,} params) "
                "but no run measured them: train one and re-run pick"
            )
        return best, why
    most = max(r["params"] for r in rows)
    pool = [r for r in rows if r["params"] == most]
    best = min(pool, key=lambda r: _PRECISION_ORDER.index(r["format"]))
    why = (
        f"no run measured {metric} for a candidate that fits, so: the most parameters that fit "
        f"({best['preset']}, {most:,}) in the most precise storage that fits ({best['format']}); "
        "at a fixed memory budget more parameters at 4 bits beat fewer at 16 (Dettmers & "
        "Zettlemoyer 2023)"
    )
    return best, why


def measure_decode_ms(preset: str, *, context: int, batch: int = 1) -> float:
    """Measured ms per decoded token of the preset (random f32 weights) on this machine:
    (time for 64 new tokens − time for 8) / 56, each after a compile-warming call."""
    import jax
    import numpy as np
    from flax import nnx

    from compactlm.models.generate import generate
    from compactlm.models.transformer import Transformer

    model = Transformer(resolved_model(preset), rngs=nnx.Rngs(0))
    prompt = np.zeros((batch, max(context - 64, 1)), np.int32)

    def timed(n: int) -> float:
        jax.block_until_ready(generate(model, prompt, max_new_tokens=n, temperature=0))
        t0 = time.perf_counter()
        jax.block_until_ready(generate(model, prompt, max_new_tokens=n, temperature=0))
        return time.perf_counter() - t0

    return (timed(64) - timed(8)) / 56 * 1e3


def _human(n: float) -> str:
    from compactlm.experiments.report import _human as human

    return human(n)


def table(rows: list[dict[str, Any]], front: list[dict], budget: int, cfg: PickConfig) -> str:
    """The candidates as a markdown table, sorted by total memory."""
    metric = cfg.metric
    head = ["preset", "format", "params", "weights", "KV cache", "activations", "total"]
    head += ["decode ms/tok", "tok/s", metric, "fits", "front"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    front_ids = {id(r) for r in front}
    for r in sorted(rows, key=lambda r: (r["total"], r["preset"])):
        fits = r["total"] <= budget and (not cfg.latency_ms or r["decode_ms"] <= cfg.latency_ms)
        q = (
            ""
            if r["quality"] is None
            else ("~" if r["quality_approx"] else "") + f"{r['quality']:.4f}"
        )
        lines.append(
            "| "
            + " | ".join(
                [
                    r["preset"],
                    r["format"],
                    f"{r['params']:,}",
                    _human(r["weights"]),
                    _human(r["kv_cache"]),
                    _human(r["activations"]),
                    _human(r["total"]),
                    *_decode_cells(r),
                    q,
                    "yes" if fits else "no",
                    "*" if id(r) in front_ids else "",
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def _decode_cells(r: dict[str, Any]) -> list[str]:
    """(ms/token, tokens/s): a measurement as it is, the floor as the bound it is."""
    ms = r["decode_ms"]
    if r.get("decode_source"):
        return [f"{ms:.3g} measured", f"{1e3 / ms:,.0f}"]
    return [f"≥ {ms:.2g} floor", f"≤ {1e3 / ms:,.0f}"]


def plot(rows: list[dict[str, Any]], front: list[dict], cfg: PickConfig, budget: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    scored = [r for r in rows if r["quality"] is not None]
    for r in scored:
        ax.scatter(r["total"], r["quality"], c="C0" if r in front else "0.6", zorder=3)
        ax.annotate(f"{r['preset']} {r['format']}", (r["total"], r["quality"]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")  # fmt: skip
    f = sorted(front, key=lambda r: r["total"])
    ax.plot([r["total"] for r in f], [r["quality"] for r in f], "-", c="C0", label="Pareto front")
    ax.axvline(budget, ls="--", c="C3", lw=1, label=f"budget {cfg.memory}")
    ax.set_xscale("log")
    ax.set(xlabel="predicted memory (bytes)", ylabel=f"measured {cfg.metric}",
           title="compactlm pick: quality vs memory")  # fmt: skip
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "pick.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pick(cfg: PickConfig) -> str:
    """The report `compactlm pick` prints."""
    budget = parse_bytes(cfg.memory)
    bandwidth, source = device_bandwidth(cfg.device)
    rows = candidates(cfg, bandwidth)
    fitting = [
        r
        for r in rows
        if r["total"] <= budget and (not cfg.latency_ms or r["decode_ms"] <= cfg.latency_ms)
    ]
    front = pareto_front(fitting)
    best, why = recommend(fitting, cfg.metric)
    parts = [
        f"Budget {cfg.memory} ({budget:,} bytes)"
        + (f", decode <= {cfg.latency_ms} ms/token" if cfg.latency_ms else "")
        + f"; device {cfg.device}: {bandwidth / 1e9:,.1f} GB/s ({source}); batch {cfg.batch}, "
        f"context {cfg.context or 'max_seq_len'}.",
        "",
        table(rows, front, budget, cfg),
        "",
        "decode ms/tok: 'measured' = `compactlm bench decode RUN_DIR` of a run of that preset "
        f"and format on {cfg.device} at batch {cfg.batch} (greedy after a 16-token prompt, "
        "prefill included); '≥ X floor' = an estimate, not a prediction: (weights + KV cache "
        "bytes) / bandwidth, the memory-bound lower bound — small models are dispatch-bound "
        "far above it (30-100× on a CPU for nano / tiny), so a latency_ms budget met only by "
        "the floor may not be met. ~ = quality measured in f32, stored as bf16.",
    ]
    measured = sorted({r["decode_source"] for r in rows if r.get("decode_source")})
    if measured:
        parts += ["", "Measured decode from: " + "; ".join(measured)]
    if cfg.measure:
        parts += ["", "Measured dense f32 decoding on this machine (random weights):"]
        for r in rows:
            if r["format"] != "float32" or r["params"] > 20e6:
                continue
            model = resolved_model(r["preset"])
            ms = measure_decode_ms(r["preset"], context=cfg.context or model.max_seq_len)
            parts.append(
                f"  {r['preset']}: measured {ms:.3f} ms/token, bandwidth floor "
                f"{r['decode_floor_ms']:.4f} (floor / measured = {r['decode_floor_ms'] / ms:.3g})"
            )
    if best is None:
        parts += ["", f"Nothing fits: {why}."]
    else:
        parts += ["", f"Recommended: {best['preset']} in {best['format']} — {why}."]
    if cfg.plot:
        parts += ["", f"Plot: {plot(rows, front, cfg, budget)}"]
    return "\n".join(parts)
