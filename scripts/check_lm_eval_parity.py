"""Dev check: compactlm's lm-eval backend vs lm-eval's own HF backend on the same model.

Run by hand (not in CI): it needs a second venv with torch + transformers + lm_eval.

    .venv/bin/python scripts/check_lm_eval_parity.py RUN_DIR [--dev-python /work/devvenv/bin/python]

Exports RUN_DIR with `compactlm export RUN format=hf`, runs the local tasks of
tests/fixtures/lm_eval with lm-eval's `hf` backend (pretrained=the export, dtype=float32,
device=cpu) in the dev venv and with the `compactlm` backend here, both with log_samples, and
compares every request's log-likelihood (within 1e-4) and every metric (accuracies identical).
Prints requests/s of both, measured in this one sitting. prefix_token_id is set to the run's
eos for the HF side: our backend conditions an empty context on eos (our documents follow an
<eos>), HFLM on the tokenizer's BOS unless told.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "lm_eval"
TASKS = ["compactlm_mc", "compactlm_ppl", "compactlm_gen"]
ATOL = 1e-4

# What runs in either venv: simple_evaluate with log_samples, per-request responses and timing.
RUNNER = r"""
import json, sys, time
from lm_eval import simple_evaluate
from lm_eval.tasks import TaskManager
model, model_args, include, out = sys.argv[1:5]
args = json.loads(model_args)
if model == "compactlm":
    import compactlm.evaluation.lm_eval_model  # registers "compactlm"
t0 = time.perf_counter()
res = simple_evaluate(model=model, model_args=args, tasks=TASK_LIST, task_manager=TaskManager(
    include_path=include), log_samples=True, bootstrap_iters=0, batch_size=args.pop("batch_size"))
seconds = time.perf_counter() - t0
samples = {t: [{"doc_id": s["doc_id"], "resps": s["resps"]} for s in v]
           for t, v in res["samples"].items()}
n_req = sum(len(s["resps"]) for v in samples.values() for s in v)
json.dump({"results": res["results"], "samples": samples, "seconds": seconds,
           "requests": n_req}, open(out, "w"), default=str)
""".replace("TASK_LIST", json.dumps(TASKS))


def local_tasks(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for yaml in FIXTURES.glob("*.yaml"):
        (dest / yaml.name).write_text(yaml.read_text().replace("DATA_DIR", str(FIXTURES)))
    return dest


def run(python: str, model: str, model_args: dict, include: Path, out: Path) -> dict:
    t0 = time.perf_counter()
    subprocess.run(
        [python, "-c", RUNNER, model, json.dumps(model_args), str(include), str(out)],
        check=True,
        cwd=ROOT,
    )
    result = json.loads(out.read_text())
    result["wall"] = time.perf_counter() - t0
    return result


def flat(resps) -> list:
    """Every response of a sample, flattened: [logp, greedy] pairs, floats or strings."""
    out = []
    for r in resps:
        r = r[0] if isinstance(r, list) and len(r) == 1 else r
        out.append(r)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--dev-python", default="/work/devvenv/bin/python")
    ap.add_argument("--batch-size", type=int, default=8)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lm_eval_parity_"))
    include = local_tasks(work / "tasks")
    hf_dir = work / "hf"
    subprocess.run(
        [sys.executable, "-m", "compactlm", "export", a.run_dir, "format=hf", f"workdir={hf_dir}"],
        check=True,
        cwd=ROOT,
    )
    eos = json.loads((hf_dir / "generation_config.json").read_text())["eos_token_id"]
    hf_args = {
        "pretrained": str(hf_dir),
        "dtype": "float32",
        "device": "cpu",
        "batch_size": a.batch_size,
        "prefix_token_id": eos,
    }
    ours_args = {"run_dir": str(Path(a.run_dir).resolve()), "batch_size": a.batch_size}
    ours = run(sys.executable, "compactlm", ours_args, include, work / "ours.json")
    hf = run(a.dev_python, "hf", hf_args, include, work / "hf.json")

    worst, mismatched = 0.0, []
    for task in TASKS:
        by_doc = {s["doc_id"]: s for s in hf["samples"][task]}
        for s in ours["samples"][task]:
            for x, y in zip(flat(s["resps"]), flat(by_doc[s["doc_id"]]["resps"]), strict=True):
                if isinstance(x, str) or isinstance(y, str):
                    if x != y:
                        mismatched.append((task, s["doc_id"], x, y))
                    continue
                x = x if isinstance(x, list) else [x]
                y = y if isinstance(y, list) else [y]
                worst = max(worst, abs(float(x[0]) - float(y[0])))
                if len(x) > 1 and bool(x[1]) != bool(y[1]):
                    mismatched.append((task, s["doc_id"], x, y))
    print(f"\nmax |loglikelihood ours - hf| over all requests: {worst:.3g} (need <= {ATOL})")
    metrics_equal = True
    for task in TASKS:
        for key, value in ours["results"][task].items():
            if "stderr" in key or not isinstance(value, (int, float)):
                continue
            other = hf["results"][task].get(key)
            exact = key.startswith(("acc", "exact_match"))
            same = value == other if exact else abs(value - other) <= 1e-4 * max(1, abs(value))
            metrics_equal &= same
            verdict = "ok" if same else "DIFF"
            print(f"  {task:<14} {key:<24} ours {value:<14.6g} hf {other:<14.6g} {verdict}")
    for label, r in (("compactlm (JAX)", ours), ("lm-eval hf (torch)", hf)):
        print(
            f"  {label:<20} {r['requests']} requests in {r['seconds']:.2f} s of simple_evaluate "
            f"({r['requests'] / r['seconds']:.1f} requests/s; process wall {r['wall']:.1f} s)"
        )
    for m in mismatched[:10]:
        print("  mismatch:", m)
    ok = worst <= ATOL and metrics_equal and not mismatched
    print("PARITY OK" if ok else "PARITY FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
