"""docs/compression.md's tables: every row is a `compactlm quantize` / `compactlm prune` command.

    .venv/bin/python scripts/compression_tables.py RUN_DIR OUT_DIR [tables=1,2,3,4,5]
    .venv/bin/python scripts/compression_tables.py report OUT_DIR     # tables.md + plot

To measure dozens of rows on a 2-core machine, the rows run in ONE process on one loaded run:
each row starts from the same dense state, goes through exactly the code the command runs
(`compress.job.parse_*` for the arguments, `apply.apply_compression` on the same calibration
set, `export.packed_arrays` / `size_report` for the bytes) and is scored on the same validation
tokens; only the run directory is not written (tests hold the written, packed model's logits
equal to this fake-quantized one, and `check=1` runs a few rows through the CLI to compare).
Table 4 plants activation outliers first (`plant_outliers`: an exact re-parametrisation, the
function is unchanged), table 5 runs `compactlm prune ... recover.steps=N` itself.
Writes OUT_DIR/rows.jsonl, OUT_DIR/tables.md and OUT_DIR/bpb_vs_bytes.png.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from compactlm.compress import apply as A
from compactlm.compress import calibrate as C
from compactlm.compress import export as E
from compactlm.compress import job as J

EVAL_TOKENS = 65536


def _q(*a):
    return list(a)


TABLES = {
    1: (
        "RTN vs GPTQ vs AWQ, int4 container (symmetric), 3 and 4 bits by group size",
        [
            ("quantize", _q(f"method={m}", f"bits={b}", f"group_size={g}"))
            for b in (3, 4)
            for g in (0, 128, 32)
            for m in ("rtn", "gptq", "awq")
        ],
    ),
    2: (
        "4-bit formats at block 64 (RTN and GPTQ)",
        [
            ("quantize", _q(f"method={m}", f"format={f}", "group_size=64"))
            for m in ("rtn", "gptq")
            for f in ("int4", "int4_affine", "nf4", "fp4")
        ],
    ),
    3: (
        "50 % pruning: magnitude vs Wanda vs SparseGPT by pattern (no recovery)",
        [
            ("prune", _q(f"method={m}", f"pattern={p}", "sparsity=0.5"))
            for p in ("unstructured", "4:8", "2:4")
            for m in ("magnitude", "wanda", "sparsegpt")
        ]
        + [("prune", _q("method=sparsegpt", "pattern=2:4", "quantize.group_size=64"))],
    ),
    4: (
        "planted activation outliers (4 channels ×20 at every norm, function unchanged)",
        [
            ("quantize", _q("method=rtn", "bits=3", "group_size=0")),
            ("quantize", _q("method=awq", "bits=3", "group_size=0")),
            ("quantize", _q("method=gptq", "bits=3", "group_size=0")),
            ("quantize", _q("method=rtn", "bits=4", "group_size=128")),
            ("quantize", _q("method=awq", "bits=4", "group_size=128")),
        ]
        + [
            ("prune", _q(f"method={m}", f"pattern={p}", "sparsity=0.5"))
            for p in ("unstructured", "2:4")
            for m in ("magnitude", "wanda", "sparsegpt")
        ],
    ),
}
RECOVERY_STEPS = (100,)  # 1–3 s per tiny step on the shared 2-core machine
RECOVERY_MODES = ("finetune", "distill")


def plant_outliers(model, n_channels: int = 4, factor: float = 20.0, seed: int = 0) -> list:
    """Scale n input channels of qkv and gate_up by `factor` at the RMSNorm, the kernel rows by
    1/factor: the same function, with LLM.int8-style outlier features in the linears' inputs."""
    rng = np.random.default_rng(seed)
    planted = []
    for layer in range(C.n_blocks(model)):
        block = C.get_block(model, layer)
        for norm_name, site in (("attn_norm", "qkv"), ("mlp_norm", "gate_up")):
            norm = getattr(block, norm_name)
            d = norm.scale[...].shape[0]
            ch = rng.choice(d, n_channels, replace=False)
            s = np.ones(d, np.float32)
            s[ch] = factor
            norm.scale[...] = norm.scale[...] * jnp.asarray(s)
            lin = A.linear_of(block, site)
            lin.kernel[...] = lin.kernel[...] / jnp.asarray(s)[:, None]
            planted.append((layer, site, ch.tolist()))
        C.set_block(model, layer, block)
    return planted


def _command(kind: str, run_dir: str, args: list[str], label: str) -> str:
    if not any(a.startswith("eval_tokens=") for a in args):
        args = [*args, f"eval_tokens={EVAL_TOKENS}"]
    return f"compactlm {kind} {run_dir} {' '.join(args)} workdir=runs/compress/{label}"


def _cmd(row: dict) -> str:
    """The row's command line (rows measured before eval_tokens was spelled out get it)."""
    c = row["command"].replace("(+outliers)", "+outliers")
    return (
        c if "eval_tokens=" in c else c.replace(" workdir=", f" eval_tokens={EVAL_TOKENS} workdir=")
    )


def _label(kind: str, args: list[str]) -> str:
    return "_".join([kind, *(a.split("=", 1)[1].replace(":", "of") for a in args)])


def run_rows(run_dir: str, out: Path, tables: list[int]) -> list[dict]:

    from compactlm.compress.calibrate import calibration_tokens
    from compactlm.train.loop import load_run

    trainer = load_run(run_dir)
    base_state = trainer.state
    seq_len = trainer.cfg.train.seq_len
    t0 = time.perf_counter()
    dense = trainer.evaluate(EVAL_TOKENS)
    print(f"dense: {dense} ({time.perf_counter() - t0:.0f}s)", flush=True)
    rows = []
    outliers_state = None
    for table in [t for t in tables if t in TABLES]:
        title, specs = TABLES[table]
        state0 = base_state
        baseline = dense
        if table == 4:
            trainer.state = base_state
            model = J._model_and_state(trainer)
            planted = plant_outliers(model)
            J._set_model(trainer, model)
            outliers_state = state0 = trainer.state
            baseline = trainer.evaluate(EVAL_TOKENS)
            print(f"planted {len(planted)} sites; dense with outliers: {baseline}", flush=True)
        for kind, args in specs:
            job = J.parse_quantize(args) if kind == "quantize" else J.parse_prune(args)
            if kind == "quantize":
                prune_cfg, quant = None, job
            else:
                prune_cfg, quant = job, (job.quantize if job.quantize.method != "none" else None)
            trainer.state = state0
            model = J._model_and_state(trainer)
            t1 = time.perf_counter()
            tokens = None
            if A.needs_calibration(prune_cfg, quant):
                tokens = calibration_tokens(trainer.data.train_tokens, job.calib, seq_len)
            results = A.apply_compression(
                model, prune_cfg=prune_cfg, quant=quant, tokens=tokens, progress=False
            )
            seconds = time.perf_counter() - t1
            J._set_model(trainer, model)
            after = trainer.evaluate(EVAL_TOKENS)
            fmt = E.storage_format(prune_cfg, quant)
            sizes = E.size_report(results, trainer.cfg.model, fmt, quant)
            label = _label(kind, args)
            source_dir = run_dir if table != 4 else f"{run_dir}(+outliers)"
            row = {
                "table": table,
                "label": label,
                "command": _command(kind, source_dir, args, label),
                "config": dataclasses.asdict(job),
                "before": baseline,
                "after": after,
                "sizes": sizes,
                "compress_seconds": seconds,
                "awq_alpha": [r.awq_alpha for r in results.values() if r.awq_alpha is not None],
            }
            rows.append(row)
            print(
                f"[{table}] {label}: bpb {baseline['bpb']:.4f} → {after['bpb']:.4f}, "
                f"{sizes['linear_bytes']:,} B, {seconds:.1f}s",
                flush=True,
            )
            with (out / "rows.jsonl").open("a") as f:
                f.write(json.dumps(row, default=str) + "\n")
        trainer.state = base_state
    del outliers_state
    if 5 in tables:
        rows += recovery_rows(run_dir, out, dense)
    return rows


def recovery_rows(run_dir: str, out: Path, dense: dict) -> list[dict]:
    """`compactlm prune` itself with recover.steps: 2:4 (SparseGPT) then masked fine-tuning or
    distillation from the dense run (the curve every 50 steps in the run's recover/)."""
    rows = []
    for steps, mode in [(s, m) for s in RECOVERY_STEPS for m in RECOVERY_MODES]:
        args = ["method=sparsegpt", "pattern=2:4", f"recover.steps={steps}"]
        args += [f"recover.mode={mode}", "recover.eval_every=50"]
        label = _label("prune", args)
        workdir = out / "runs" / label
        t1 = time.perf_counter()
        report = J.prune_run(run_dir, [*args, f"eval_tokens={EVAL_TOKENS}"], workdir=str(workdir))
        row = {
            "table": 5,
            "label": label,
            "command": _command("prune", run_dir, [*args, f"eval_tokens={EVAL_TOKENS}"], label),
            "before": report["before"],
            "pruned": report["pruned"],
            "after": report["after"],
            "sizes": report["sizes"],
            "compress_seconds": report["compress_seconds"],
            "wall_seconds": time.perf_counter() - t1,
        }
        rows.append(row)
        with (out / "rows.jsonl").open("a") as f:
            f.write(json.dumps(row, default=str) + "\n")
    return rows


def main(argv: list[str]) -> None:
    if argv[0] == "report":
        print(report(Path(argv[1])))
        return
    run_dir, out = argv[0], Path(argv[1])
    opts = dict(a.split("=", 1) for a in argv[2:])
    tables = [int(t) for t in opts.get("tables", "1,2,3,4,5").split(",")]
    out.mkdir(parents=True, exist_ok=True)
    run_rows(run_dir, out, tables)


# ------------------------------------------------------------------------------------ report


def _what(row: dict) -> str:
    c = row["config"] if "config" in row else {}
    if row["label"].startswith("quantize"):
        g = c["group_size"] or "K"
        return f"{c['method']} {c['format']} {c['bits']}-bit g{g}"
    what = f"{c.get('method', 'sparsegpt')} {c.get('pattern', '2:4')}"
    q = c.get("quantize", {})
    if q and q.get("method") != "none":
        what += f" + {q['method']} int4 g{q['group_size']}"
    return what


def report(out: Path) -> str:
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    lines = []
    for table in sorted({r["table"] for r in rows}):
        sub = [r for r in rows if r["table"] == table]
        title = TABLES[table][0] if table in TABLES else "2:4 recovery (mask fixed)"
        base = sub[0]["before"]["bpb"]
        lines += [f"### Table {table}: {title}", "", f"dense: {base:.4f} bpb", ""]
        if table == 5:
            lines += [
                "| recovery | pruned bpb | recovered bpb | gap recovered | command |",
                "|---|---|---|---|---|",
            ]
            for r in sub:
                gap = r["pruned"]["bpb"] - r["before"]["bpb"]
                rec = (r["pruned"]["bpb"] - r["after"]["bpb"]) / gap if gap else float("nan")
                parts = r["label"].split("_")  # prune_sparsegpt_2of4_STEPS[_MODE_EVERY]
                steps, mode = parts[3], parts[4] if len(parts) > 4 else "finetune"
                lines.append(
                    f"| {mode} {steps} | {r['pruned']['bpb']:.4f} | {r['after']['bpb']:.4f} | "
                    f"{100 * rec:.0f} % | `{_cmd(r)}` |"
                )
            lines.append("")
            continue
        lines += [
            "| compression | val bpb | Δ bpb | block-linear bytes | bits / weight | time (s) "
            "| command |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in sub:
            s = r["sizes"]
            lines.append(
                f"| {_what(r)} | {r['after']['bpb']:.4f} | {r['after']['bpb'] - base:+.4f} | "
                f"{s['linear_bytes']:,} | {s['linear_bits_per_weight']:.2f} | "
                f"{r['compress_seconds']:.0f} | `{_cmd(r)}` |"
            )
        lines.append("")
    text = "\n".join(lines)
    (out / "tables.md").write_text(text)
    plot(rows, out / "bpb_vs_bytes.png")
    return text


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    pts = [r for r in rows if r["table"] in (1, 2, 3)]
    dense = pts[0]["before"]["bpb"]
    dense_bytes = pts[0]["sizes"]["dense_linear_bytes"]
    ax.scatter([dense_bytes / 2], [dense], marker="*", s=150, c="k", label="dense (bf16 bytes)")
    ax.scatter([dense_bytes], [dense], marker="*", s=150, c="gray", label="dense (f32, as trained)")
    styles = {"rtn": ("o", "C0"), "gptq": ("s", "C1"), "awq": ("^", "C2"),
              "magnitude": ("v", "C3"), "wanda": ("D", "C4"), "sparsegpt": ("P", "C5")}  # fmt: skip
    seen = set()
    for r in pts:
        method = r["config"]["method"]
        label = method if method not in seen else None
        seen.add(method)
        ax.scatter(
            r["sizes"]["linear_bytes"],
            r["after"]["bpb"],
            marker=styles[method][0],
            c=styles[method][1],
            label=label,
        )
    ax.set_xscale("log")
    ax.set_xlabel(
        "bytes of the block linears as stored (2:4 values in f32; unstructured / 4:8 dense)"
    )
    ax.set_ylabel("validation bits per byte")
    ax.set_title("tiny (step 388): compression methods and formats")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main(sys.argv[1:])
