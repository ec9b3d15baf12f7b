"""`compactlm recipe`: pretrain a compact model, compress it, export it to GGUF, one table.

    compactlm recipe [RUN_DIR] [preset=tiny] [stages=pretrain,int4,sparse24_int4,gguf]
                     [workdir=runs/recipe] [train_overrides=train.steps=600,...]

Stages (each one command line, printed before it runs, so any row can be reproduced alone):
- pretrain: `compactlm train PRESET TRAIN_RECIPE workdir=WORKDIR/pretrain`, the main job's recipe
  (`make train`: BPE-4096 + Muon, 600 steps) — skipped when RUN_DIR (a trained run) is given;
- int4: `compactlm quantize SOURCE method=gptq format=int4 scale_dtype=float16` (GPTQ, Frantar
  et al. 2023; float16 scales, as GGUF's Q4_0 stores them, so the export keeps every code);
- sparse24_int4: `compactlm prune SOURCE method=wanda pattern=2:4 quantize.bits=4
  recover.steps=N` (2:4 + int4 with masked recovery fine-tuning);
- gguf: `compactlm export WORKDIR/int4 format=gguf` (Q4_0 blocks holding the int4 stage's codes
  and scales bit for bit: interop/gguf.py).
Each compression stage reads the pretrained run. The table: parameters, bytes of weights,
validation bits per byte (with gzip / xz / bzip2 on the same bytes beside), and decode speed
measured on this machine. The gguf row is llama.cpp's: when llama-cpp-python is installed, that
file's bits per byte on the same validation tokens and its decode speed (interop/llamacpp.py);
otherwise its size alone.
Every stage writes its own run directory; re-running skips stages whose directory is complete.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from compactlm.experiments.sweep import read_metrics
from compactlm.interrupt import Interrupted, wait_child

STAGES = ("pretrain", "int4", "sparse24_int4", "gguf")
# The main job's pretraining recipe for `tiny`: `make train`'s TRAIN_RECIPE (Makefile, where its
# choices are explained). tests/experiments/test_recipe.py checks that the Makefile says the same.
TRAIN_RECIPE: tuple[str, ...] = (
    "data.tokenizer=bpe",
    "optim.kind=muon",
    "train.steps=600",
    "train.eval_every=0",
    "train.checkpoint_every=0",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RecipeConfig:
    """Options of `compactlm recipe` (key=value)."""

    preset: str = "tiny"  # the pretraining preset (ignored when a RUN_DIR is given)
    stages: tuple[str, ...] = STAGES  # which stages to run, in this order
    workdir: str = "runs/recipe"  # one run directory per stage below it
    # Extra `key=value` for pretrain: the main job's recipe (BPE-4096 + Muon, 600 steps: 1.7204
    # bpb on tiny, docs/benchmarks.md; byte-level AdamW at 600 steps: 2.15, worse than gzip -9).
    train_overrides: tuple[str, ...] = TRAIN_RECIPE
    recover_steps: int = 100  # masked fine-tuning steps after 2:4 pruning
    calib_sequences: int = 64  # calibration sequences for GPTQ / Wanda
    # Dense rows per int4 scale; the 2:4 stage passes half (its groups count kept values), so both
    # spend one scale per `group_size` dense rows. 128 divides tiny's K (128, 384); nano needs 64.
    group_size: int = 128
    eval_tokens: int = 0  # validation tokens for the compression commands and llama.cpp (0 = all)
    decode_tokens: int = 64  # tokens generated to time decoding (0 = skip)

    def __post_init__(self) -> None:
        bad = [s for s in self.stages if s not in STAGES]
        if bad:
            raise ValueError(f"unknown stages {bad}; valid: {', '.join(STAGES)}")


def stage_argv(stage: str, cfg: RecipeConfig, source: str) -> list[str]:
    """The command line (after `compactlm`) of one stage."""
    out = f"workdir={Path(cfg.workdir) / stage}"
    if stage == "pretrain":
        return ["train", cfg.preset, *cfg.train_overrides, out]
    if stage == "gguf":  # the int4 stage's output, whatever the source
        return ["export", str(Path(cfg.workdir) / "int4"), "format=gguf", "type=auto", out]
    common = [f"calib.sequences={cfg.calib_sequences}", f"eval_tokens={cfg.eval_tokens}"]
    if stage == "int4":
        gs = f"group_size={cfg.group_size}"
        # float16 scales: what Q4_0 stores (d is an f16), so the gguf stage rounds nothing again.
        f16 = "scale_dtype=float16"
        return ["quantize", source, "method=gptq", "format=int4", "bits=4", gs, f16, *common, out]
    return [
        "prune",
        source,
        "method=wanda",
        "pattern=2:4",
        "quantize.bits=4",
        f"quantize.group_size={cfg.group_size // 2}",
        f"recover.steps={cfg.recover_steps}",
        *common,
        out,
    ]


def decode_speed(run_dir: str | Path, n_tokens: int) -> float:
    """Tokens/s of greedy decoding from the run's model on this machine (after a warm-up call)."""
    import jax
    import numpy as np

    from compactlm.models.generate import generate
    from compactlm.train.loop import load_run

    trainer = load_run(run_dir)
    model = trainer.program.model(trainer.state)
    prompt = np.asarray(trainer.data.tokenizer.encode("def "), np.int32)
    jax.block_until_ready(generate(model, prompt, max_new_tokens=n_tokens, temperature=0))
    t0 = time.perf_counter()
    jax.block_until_ready(generate(model, prompt, max_new_tokens=n_tokens, temperature=0))
    return n_tokens / (time.perf_counter() - t0)


def _finished(stage: str, out: Path) -> bool:
    if stage == "gguf":
        return (out / "model.gguf").is_file()  # written whole (temp sibling renamed into place)
    return read_metrics(out) is not None


def llamacpp_figures(gguf_dir: Path, run_dir: Path, cfg: RecipeConfig) -> dict[str, Any]:
    """The gguf row: the file's bytes; with llama.cpp installed also its bits per byte on the
    validation tokens of `run_dir` (our tokenizer's ids, compactlm's eval windows) and its
    decode speed (tokens / total time of a greedy generation after the prompt "def ")."""
    from compactlm.interop import llamacpp

    path = gguf_dir / "model.gguf"
    row: dict[str, Any] = {"weight_bytes": path.stat().st_size}
    try:
        llamacpp.require()
    except llamacpp.LlamaCppMissing as e:
        return {**row, "llamacpp": str(e)}
    from compactlm.train.loop import load_run

    trainer = load_run(run_dir)
    data = trainer.data
    row["metrics"] = llamacpp.perplexity(
        str(path),
        data.val_tokens,
        byte_lengths=data.tokenizer.token_byte_lengths(),
        seq_len=trainer.cfg.train.seq_len,
        max_tokens=cfg.eval_tokens,
    )
    row["llamacpp"] = llamacpp.version()
    if cfg.decode_tokens >= 2:
        prompt = [int(t) for t in data.tokenizer.encode("def ")]
        n = cfg.decode_tokens
        # 1 thread: for models this small the fastest here (ggml's workers spin-wait; `bench
        # decode peer=llama.cpp` times 1 and every core side by side)
        t = llamacpp.decode_timing(str(path), prompt, n, repeats=1, threads=1)
        row["tokens_per_s"] = n / (t.ttft_s + (n - 1) / t.tokens_per_s)  # as decode_speed's
    return row


def _figures(run_dir: Path) -> dict[str, Any]:
    from compactlm.experiments.sweep import model_figures

    metrics = read_metrics(run_dir) or {}
    config = json.loads((run_dir / "config.json").read_text())
    figures = model_figures(config)
    figures.update({k: metrics[k] for k in ("weight_bytes",) if k in metrics})
    return {**figures, "metrics": metrics}


def run_recipe(run_dir: str | None, cfg: RecipeConfig, *, log=print) -> list[dict[str, Any]]:
    """Run the stages; returns one row per stage (status, command line, figures, seconds)."""
    source = run_dir
    rows = []
    stages = list(cfg.stages)
    if run_dir is not None:
        from compactlm.train.run_dir import read_config

        read_config(run_dir)  # a run directory, before any work
        stages = [s for s in stages if s != "pretrain"]
        rows.append({"stage": "pretrained (given)", "dir": Path(run_dir), "status": "given"})
    elif "pretrain" in stages:
        source = str(Path(cfg.workdir) / "pretrain")
    else:
        raise ValueError("without a RUN_DIR the recipe needs the pretrain stage")
    for i, stage in enumerate(stages, 1):
        argv = stage_argv(stage, cfg, source)
        line = shlex.join(["compactlm", *argv])
        out = Path(cfg.workdir) / stage
        row = {"stage": stage, "dir": out, "command_line": line}
        rows.append(row)
        if _finished(stage, out):
            row["status"] = "done earlier"
            log(f"[{i}/{len(stages)}] {stage}: done earlier ({out})")
            continue
        if argv[0] != "train" and out.exists():
            import shutil

            shutil.rmtree(out)  # an unfinished output of a command that wants a new directory
        log(f"[{i}/{len(stages)}] {stage}: {line}")
        t0 = time.perf_counter()
        try:  # a signal: the stage stops at its safe point, then the recipe (exit 130 / 143)
            code = wait_child(subprocess.Popen([sys.executable, "-m", "compactlm", *argv]))
        except Interrupted as e:
            detail = f"stopped in stage {stage} ({i}/{len(stages)}); re-run the same command"
            raise Interrupted(e.signame, f"{detail} to resume") from None
        row["seconds"] = time.perf_counter() - t0
        row["status"] = "ran" if code == 0 and _finished(stage, out) else f"failed ({code})"
        if row["status"] != "ran":
            log(f"[{i}/{len(stages)}] {stage}: {row['status']}")
            if stage == "pretrain":
                break
    for row in rows:
        if row["status"] in ("ran", "done earlier") and row["stage"] == "gguf":
            int4 = Path(cfg.workdir) / "int4"
            row.update({**_figures(int4), "metrics": {}})
            row.update(llamacpp_figures(row["dir"], int4, cfg))
            if row["metrics"]:  # Δ: against compactlm on the same weights and tokens
                int4_bpb = (read_metrics(int4) or {}).get("bpb")
                if int4_bpb is not None:
                    row["metrics"]["before/bpb"] = int4_bpb
                row["label"] = f"gguf Q4_0, llama.cpp {row['llamacpp']} (1 thread)"
            else:
                log(f"gguf: no perplexity / decode speed for the file: {row['llamacpp']}")
        elif row["status"] in ("ran", "done earlier", "given"):
            row.update(_figures(row["dir"]))
            if cfg.decode_tokens:
                row["tokens_per_s"] = decode_speed(row["dir"], cfg.decode_tokens)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """One markdown table of the stages, then the compressors on the pretrained run's
    validation bytes (eval.json's baselines)."""
    from compactlm.experiments.report import _count, _human

    # Δ: against the same command's own "before" evaluation (same tokens) where it made one;
    # the gguf row's: llama.cpp on that file vs compactlm on the int4 run (same weights, tokens).
    head = ["stage", "params", "weights", "val bpb", "Δ bpb", "decode tok/s", "command"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    first = next((r for r in rows if "metrics" in r and "bpb" in r["metrics"]), None)
    for r in rows:
        m = r.get("metrics")
        if r["stage"] == "gguf" and m is not None and "bpb" not in m:  # no llama.cpp here
            cells = [r["stage"], _count(r["params"]), _human(r["weight_bytes"]),
                     "(llama.cpp not installed)", "", "", f"`{r['command_line']}`"]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
            continue
        if m is None or "bpb" not in m:
            lines.append(f"| {r['stage']} | {r['status']} |" + " |" * (len(head) - 2))
            continue
        cells = [
            r.get("label", r["stage"]),
            _count(r["params"]),
            _human(r["weight_bytes"]) if "weight_bytes" in r else "",
            f"{m['bpb']:.4f}",
            f"{m['bpb'] - m.get('before/bpb', first['metrics']['bpb']):+.4f}",
            f"{r['tokens_per_s']:.0f}" if "tokens_per_s" in r else "",
            f"`{r['command_line']}`" if "command_line" in r else "(given)",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    base = first["metrics"] if first else {}
    for name, key in (
        ("gzip -9", "baseline/gzip"),
        ("xz -9", "baseline/xz"),
        ("bzip2 -9", "baseline/bz2"),
    ):
        if key in base:
            lines.append(f"| {name} (same bytes) | | | {base[key]:.4f} | | | |")
    return "\n".join(lines)
