"""Time and measure compactlm on real-size checkpoints: import, eval, generate, decode, GPTQ int4.

Run with compactlm's venv on the checkpoints scripts/make_real_size_checkpoints.py writes:

    .venv/bin/python scripts/bench_real_sizes.py /tmp/real/smollm2-135m /tmp/real/qwen2.5-0.5b \\
        --work /tmp/bench --gptq smollm2-135m --json /tmp/bench/real_sizes.json

Every step is one `compactlm` command in its own process, run through this script's `--measure`
mode: a fresh wrapper process whose only child is the command, so
`getrusage(RUSAGE_CHILDREN).ru_maxrss` after it is that command's peak resident set (kept
across the allocator's re-exec: compactlm/allocator.py) and the wall time is the command's
whole life (interpreter start, JAX import and compilation included). Steps, per checkpoint:

  floor     `compactlm import` of the tiny llama3 test fixture: what any import costs (Python,
            JAX, orbax) whatever the weights; the peak of a real import minus it is what the
            weights cost
  import    `compactlm import HF_DIR workdir=RUN data.corpus=pydocs` (pydocs: the small corpus,
            so eval and calibration tokenize 0.5 MB, not 10.8)
  eval      `compactlm eval RUN`: the whole pydocs validation split (tokens printed)
  generate  `compactlm generate RUN prompt="def " max_new_tokens=32 temperature=0` (greedy)
  decode    `compactlm bench decode RUN batch_sizes=1 new_tokens=32 repeats=3`: tokens/s of
            greedy decoding with the KV cache after a 16-token prompt (prefill included),
            median of 3 timed calls after a warm-up, the figure it writes in bench_decode.json
  gptq      `compactlm quantize RUN method=gptq format=int4 group_size=64 calib.sequences=16
            calib.seq_len=256 eval_tokens=4096 workdir=RUN-gptq-int4` (for --gptq names;
            group 64: SmolLM2's d_model 576 is not a multiple of the default 128)

It prints a markdown table and writes every figure (and each command line) as JSON. Weights'
bytes are the safetensors files' sizes; parameters come from their headers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CLI = str(ROOT / ".venv" / "bin" / "compactlm")
FLOOR_FIXTURE = ROOT / "tests" / "fixtures" / "hf" / "llama3"


def measure_child(cmd: list[str]) -> int:
    """`--measure` mode: run cmd with its stdout and stderr both on this process's stderr (the
    step's log), then print {rc, wall_s, peak_rss_bytes} as one JSON line on stdout. This
    process starts nothing else, so RUSAGE_CHILDREN's ru_maxrss is cmd's own peak."""
    t0 = time.perf_counter()
    rc = subprocess.call(cmd, stdout=sys.stderr)
    wall = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    print(json.dumps({"rc": rc, "wall_s": wall, "peak_rss_bytes": peak_kib * 1024}))
    return 0


def run_step(cmd: list[str], log: Path) -> dict[str, Any]:
    """Run one command under a fresh `--measure` wrapper; its output goes to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as err:
        err.write("$ " + " ".join(cmd) + "\n")
        err.flush()
        res = subprocess.run(
            [sys.executable, __file__, "--measure", "--", *cmd],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            check=True,
        )
    result = json.loads(res.stdout.strip().splitlines()[-1])
    result["command"] = " ".join(cmd)
    result["log"] = str(log)
    if result["rc"] != 0:
        tail = log.read_text().splitlines()[-15:]
        sys.exit(f"step failed (rc {result['rc']}): {result['command']}\n" + "\n".join(tail))
    return result


def checkpoint_size(hf_dir: Path) -> tuple[int, int]:
    """(parameters, bytes of the safetensors files) of an HF directory, from the headers."""
    sys.path.insert(0, str(ROOT))
    from compactlm.interop.safetensors_io import SafetensorsReader

    reader = SafetensorsReader(hf_dir)
    params = sum(int(_prod(reader.entry(n).shape)) for n in reader)
    return params, sum(p.stat().st_size for p in reader.files)


def _prod(shape: tuple[int, ...]) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


def bench_one(hf_dir: Path, work: Path, gptq: bool) -> dict[str, Any]:
    """Every step for one checkpoint directory; returns its figures."""
    name = hf_dir.name
    run = work / name
    for path in (run, work / f"{name}-gptq-int4"):
        shutil.rmtree(path, ignore_errors=True)
    params, weight_bytes = checkpoint_size(hf_dir)
    logs = work / "logs"
    out: dict[str, Any] = {"name": name, "params": params, "weight_bytes": weight_bytes}
    out["import"] = run_step(
        [CLI, "import", str(hf_dir), f"workdir={run}", "data.corpus=pydocs"],
        logs / f"{name}-import.log",
    )
    out["eval"] = run_step([CLI, "eval", str(run)], logs / f"{name}-eval.log")
    text = Path(out["eval"]["log"]).read_text()
    found = re.search(r"\(pydocs, ([\d,]+) tokens", text)
    out["eval"]["tokens"] = int(found.group(1).replace(",", "")) if found else None
    out["generate"] = run_step(
        [CLI, "generate", str(run), "prompt=def ", "max_new_tokens=32", "temperature=0"],
        logs / f"{name}-generate.log",
    )
    out["decode"] = run_step(
        [CLI, "bench", "decode", str(run), "batch_sizes=1", "new_tokens=32", "repeats=3"],
        logs / f"{name}-decode.log",
    )
    record = json.loads((run / "bench_decode.json").read_text())
    out["decode"]["tokens_per_s"] = record["rows"][0]["tokens_per_s"]
    if gptq:
        out["gptq"] = run_step(
            [CLI, "quantize", str(run), "method=gptq", "format=int4", "group_size=64",
             "calib.sequences=16", "calib.seq_len=256", "eval_tokens=4096",
             f"workdir={work / f'{name}-gptq-int4'}"],
            logs / f"{name}-gptq.log",
        )  # fmt: skip
    return out


def table(rows: list[dict[str, Any]], floor: dict[str, Any]) -> str:
    """The markdown table of docs/models.md's "Real sizes on this machine"."""
    gib = 2**30
    head = (
        "| shape | params | weights bytes | import s | peak RSS (× weights) | peak − floor "
        "(× weights) | eval | generate tok/s | GPTQ int4 s |\n|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        w, imp = r["weight_bytes"], r["import"]
        peak = imp["peak_rss_bytes"]
        above = peak - floor["peak_rss_bytes"]
        ev = r["eval"]
        tokens = f"{ev['tokens']:,} tokens" if ev.get("tokens") else "?"
        gptq = f"{r['gptq']['wall_s']:.0f}" if "gptq" in r else "—"
        lines.append(
            f"| {r['name']} | {r['params']:,} | {w:,} | {imp['wall_s']:.1f} | "
            f"{peak / gib:.2f} GiB ({peak / w:.2f}×) | {above / gib:.2f} GiB ({above / w:.2f}×) | "
            f"{ev['wall_s']:.0f} s, {ev['peak_rss_bytes'] / gib:.2f} GiB ({tokens}) | "
            f"{r['decode']['tokens_per_s']:.1f} | {gptq} |"
        )
    return "\n".join(lines)


def _cpu_model() -> str:
    """/proc/cpuinfo's model name (what `lscpu | grep 'Model name'` shows), else the arch."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def main(argv: list[str]) -> int:
    """Parse the command line; `--measure -- CMD...` is the internal wrapper mode."""
    if argv[:2] == ["--measure", "--"]:
        return measure_child(argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("hf_dirs", nargs="+", type=Path)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_real_sizes"))
    parser.add_argument("--gptq", nargs="*", default=[], help="checkpoint names to quantize")
    parser.add_argument("--json", type=Path, help="where to write the figures")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    floor_run = args.work / "floor"
    shutil.rmtree(floor_run, ignore_errors=True)
    floor = run_step(
        [CLI, "import", str(FLOOR_FIXTURE), f"workdir={floor_run}", "data.corpus=pydocs"],
        args.work / "logs" / "floor-import.log",
    )
    rows = [bench_one(d, args.work, d.name in args.gptq) for d in args.hf_dirs]
    machine = {
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "allocator": os.environ.get("COMPACTLM_ALLOCATOR", "auto"),
        "date": time.strftime("%Y-%m-%d"),
    }
    print(table(rows, floor))
    print(f"\nfloor (import of {FLOOR_FIXTURE.name}): {floor['peak_rss_bytes'] / 2**20:.0f} MiB, "
          f"{floor['wall_s']:.1f} s")  # fmt: skip
    for r in rows:
        for step in ("import", "eval", "generate", "decode", "gptq"):
            if step in r:
                s = r[step]
                print(f"{r['name']:14s} {step:8s} {s['wall_s']:7.1f} s  "
                      f"peak {s['peak_rss_bytes'] / 2**20:7.0f} MiB  $ {s['command']}")  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        record = {"machine": machine, "floor": floor, "rows": rows}
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
