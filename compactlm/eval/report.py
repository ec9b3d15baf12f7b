"""Text reports: the preset table of `compactlm info` (sizes, FLOPs, memory by storage format)."""

from __future__ import annotations

from typing import Any

from compactlm.models.footprint import count_params, flops_per_token, memory_estimate


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def _count(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def info_rows(cfg: Any) -> dict[str, str]:
    """One preset's figures: shape, params, FLOPs/token, memory for training and inference."""
    from compactlm.train.loop import resolve_vocab

    if cfg.data.tokenizer == "byte":
        from compactlm.data import ByteTokenizer

        cfg = resolve_vocab(cfg, ByteTokenizer().vocab_size)
    else:
        cfg = resolve_vocab(cfg, cfg.data.bpe_vocab_size)
    m, t = cfg.model, cfg.train
    counts = count_params(m)
    flops = flops_per_token(m, t.seq_len)
    mem = memory_estimate(m, batch_size=t.batch_size, seq_len=t.seq_len)
    kv = memory_estimate(m, batch_size=1, seq_len=m.max_seq_len)
    return {
        "shape": f"d={m.d_model} L={m.n_layers} heads={m.n_heads}/{m.n_kv_heads} "
        f"ff={m.d_ff} V={m.vocab_size}",
        "params (total)": _count(counts["total"]),
        "params (non-embedding)": _count(counts["non_embedding"]),
        "train FLOPs/token": _count(flops["train"]),
        "infer FLOPs/token": _count(flops["inference"]),
        "batch (B x T)": f"{t.batch_size} x {t.seq_len}",
        "weights f32": _human(mem["weights/float32"]),
        "weights bf16": _human(mem["weights/bfloat16"]),
        "weights int4 (g128)": _human(mem["weights/int4"]),
        "weights 2:4 bf16": _human(mem["weights/sparse24"]),
        "weights int4+2:4": _human(mem["weights/int4+sparse24"]),
        "AdamW state (f32)": _human(mem["optimizer/adamw"]),
        "activations (no remat)": _human(mem["activations/remat=none"]),
        "activations (remat=block)": _human(mem["activations/remat=block"]),
        "KV cache bf16 (B=1, T=max)": _human(kv["kv_cache/bfloat16"]),
    }


def info_table(configs: dict[str, Any]) -> str:
    """Presets side by side, one row per figure."""
    columns = {name: info_rows(cfg) for name, cfg in configs.items()}
    keys = list(next(iter(columns.values())))
    width = max(len(k) for k in keys)
    col_w = {n: max(len(n), *(len(v) for v in c.values())) for n, c in columns.items()}
    lines = [" " * width + "  " + "  ".join(f"{n:>{col_w[n]}}" for n in columns)]
    for k in keys:
        if k == "shape":
            continue
        lines.append(f"{k:<{width}}  " + "  ".join(f"{columns[n][k]:>{col_w[n]}}" for n in columns))
    shapes = "\n".join(f"  {n}: {c['shape']}" for n, c in columns.items())
    return "\n".join(lines) + "\n\nshapes:\n" + shapes
