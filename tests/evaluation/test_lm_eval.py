"""compactlm as an lm-eval model (evaluation/lm_eval_model.py) and `compactlm eval tasks=...`.

References are computed here: log-softmax in NumPy (float64) of the model's own full forward,
rolling windows and greedy decoding written out directly. Tasks are local (tests/fixtures/
lm_eval: YAMLs over JSONL files), so nothing is downloaded.
"""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("lm_eval")

from tests.commandline import cli  # noqa: E402
from tests.files import digests  # noqa: E402
from tests.tolerances import tol  # noqa: E402

FIXTURES = Path(__file__).parents[1] / "fixtures" / "lm_eval"
TASKS = "compactlm_mc,compactlm_ppl,compactlm_gen"
LOGP = tol("f32_reorder")  # jitted, padded batch vs one eager forward: f32 reassociation only


class Req:
    """What lm-eval hands a model: an object with .args."""

    def __init__(self, *args):
        self.args = args


def local_tasks(dest: Path) -> Path:
    """The fixture task YAMLs with their data paths made absolute (datasets resolves data_files
    against the working directory, not the YAML's folder)."""
    dest.mkdir(parents=True, exist_ok=True)
    for yaml in FIXTURES.glob("*.yaml"):
        text = yaml.read_text().replace("DATA_DIR", str(FIXTURES.resolve()))
        (dest / yaml.name).write_text(text)
    return dest


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory) -> Path:
    """One folder for the module: lm-eval's task index is built once per include path."""
    return local_tasks(tmp_path_factory.mktemp("lm_eval_tasks"))


@pytest.fixture(scope="module")
def lm(nano_run):
    from compactlm.evaluation.lm_eval_model import CompactLM

    return CompactLM(str(nano_run), batch_size=4)


def logp_reference(model, ids) -> np.ndarray:
    """log p(ids[t+1] | ids[:t+1]) for every t, from one full forward, log-softmax in float64."""
    logits = np.asarray(model(np.asarray([ids[:-1]], np.int32))[0], np.float64)
    logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    return logits[np.arange(len(ids) - 1), ids[1:]] - logz


def loglikelihood_reference(lm, context: str, continuation: str) -> float:
    # lm-eval's split: trailing context spaces move to the continuation; tokens of the whole
    # string minus those of the context are the continuation (TemplateLM._encode_pair)
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = [int(i) for i in lm.tok.encode(context + continuation)]
    n_ctx = len(lm.tok.encode(context)) if context else 0
    if not context:
        whole, n_ctx = [lm.prefix_token_id, *whole], 1
    return float(logp_reference(lm.model, whole)[n_ctx - 1 :].sum())


REQUESTS = [
    ("Question: which keyword defines a function?\nAnswer:", " def"),
    ("import ", "os"),  # trailing space: moved to the continuation
    ("x", " = [i * i for i in range(10)]\nprint(x)"),
    ("", "print('hello world')"),  # empty context: conditioned on prefix_token_id
    ("class A:\n    def __init__(self):\n        self.value = 1\n" * 2, "    pass"),
    ("a", "b"),
]


def test_loglikelihood_equals_full_forward_log_softmax(lm):
    got = lm.loglikelihood([Req(c, x) for c, x in REQUESTS])
    want = [loglikelihood_reference(lm, c, x) for c, x in REQUESTS]
    np.testing.assert_allclose([g for g, _ in got], want, **LOGP)
    assert all(isinstance(greedy, bool) for _, greedy in got)


def test_buckets_and_padding_do_not_change_scores(lm):
    batched = lm.loglikelihood([Req(c, x) for c, x in REQUESTS])  # batch_size 4, mixed lengths
    alone = [lm.loglikelihood([Req(c, x)])[0] for c, x in REQUESTS]  # batch 1, own bucket
    np.testing.assert_allclose([g for g, _ in batched], [g for g, _ in alone], **LOGP)
    assert [b for _, b in batched] == [b for _, b in alone]


def test_bucket_shapes_are_few():
    from compactlm.evaluation.lm_eval_model import bucket_batch, bucket_length

    assert {bucket_length(n, 128) for n in range(1, 129)} == {16, 32, 64, 128}
    assert {bucket_batch(n, 16) for n in range(1, 17)} == {1, 2, 4, 8, 16}


def test_rolling_windows_cover_every_token_once(lm):
    text = (FIXTURES / "ppl.jsonl").read_text().splitlines()[0]
    text = json.loads(text)["text"] * 2
    ids = [int(i) for i in lm.tok.encode(text)]
    L = lm.max_length
    assert len(ids) > 2 * L, "the document must need several windows"
    windows = lm.rolling_windows(text)
    assert [t for _, cont in windows for t in cont] == ids  # each token predicted once, in order
    assert all(len(ctx) + len(cont) - 1 <= L for ctx, cont in windows)
    # direct: [prefix] + ids cut into windows of at most L inputs, each target scored once,
    # the last window reaching back so that it holds L inputs (lm-eval's rule)
    full, total, done = [lm.prefix_token_id, *ids], 0.0, 0
    while done < len(full) - 1:
        end = min(done + L, len(full) - 1)
        start = max(0, end - L)
        logp = logp_reference(lm.model, full[start : end + 1])
        total += float(logp[done - start :].sum())
        done = end
    got = lm.loglikelihood_rolling([Req(text)])[0]
    np.testing.assert_allclose(got, total, **LOGP)


def greedy_reference(lm, prompt: str, n_new: int) -> list[int]:
    """Greedy decoding by full forwards (no cache), argmax over the tokenizer's ids. Each
    forward is right-padded to the context so one compile serves every step; causal attention
    makes the padding exact (the loglikelihood test checks unpadded forwards)."""
    import jax
    from flax import nnx

    forward = nnx.jit(lambda model, tokens: model(tokens))
    ids = [int(i) for i in lm.tok.encode(prompt)]
    out = []
    for _ in range(n_new):
        row = np.zeros((1, lm.max_length), np.int32)
        row[0, : len(ids) + len(out)] = ids + out
        logits = np.asarray(jax.device_get(forward(lm.model, row))[0, len(ids) + len(out) - 1])
        logits = logits[: lm.tok.vocab_size].astype(np.float64)
        top = np.sort(logits)[-2:]
        assert top[1] - top[0] > 1e-4, "a near tie: greedy would be ill-posed for this check"
        out.append(int(np.argmax(logits)))
        if out[-1] == lm.tok.eos_id:
            break
    return out


def test_generate_until_is_greedy_cut_at_the_stop_string(lm):
    prompts = ["def add(a, b):\n    return", "for i in range(10):\n    print("]
    n_new = 16
    free = lm.generate_until([Req(p, {"until": [], "max_gen_toks": n_new}) for p in prompts])
    for prompt, text in zip(prompts, free, strict=True):
        new = greedy_reference(lm, prompt, n_new)
        if new and new[-1] == lm.tok.eos_id:
            new = new[:-1]
        assert text == lm.tok.decode(new)
    # a stop string taken from the greedy text itself: the output is the text before it
    stop = free[0][3:5] if len(free[0]) >= 5 else free[0][-1:]
    cut = lm.generate_until([Req(prompts[0], {"until": [stop], "max_gen_toks": n_new})])[0]
    assert stop and cut == free[0].split(stop)[0] and stop not in cut
    # max_gen_toks bounds the new tokens
    short = lm.generate_until([Req(prompts[0], {"until": [], "max_gen_toks": 3})])[0]
    assert free[0].startswith(short) and len(lm.tok.encode(short)) <= 3


def test_cli_prints_the_table_and_writes_the_json(lm, nano_run, tasks_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(nano_run, run)  # the session run stays untouched
    tasks = tasks_dir
    args = ["eval", str(run), f"tasks={TASKS}", f"include_path={tasks}", "bootstrap_iters=0"]
    capsys.readouterr()
    assert cli(*args, "batch_size=4") == 0
    out = capsys.readouterr().out
    for name in ("compactlm_mc", "compactlm_ppl", "compactlm_gen", "acc_norm", "bits_per_byte"):
        assert name in out
    assert "exact_match" in out and "|Tasks" in out.replace(" ", "")
    (path,) = (run / "lm_eval").glob("results_*.json")
    results = json.loads(path.read_text())
    assert str(path) in out
    assert set(results["results"]) == set(TASKS.split(","))
    # bits_per_byte is lm-eval's aggregate of our rolling log-likelihoods: recompute it (lm:
    # the same weights, loaded from nano_run)
    docs = [json.loads(line)["text"] for line in (FIXTURES / "ppl.jsonl").read_text().splitlines()]
    logp = lm.loglikelihood_rolling([Req(d) for d in docs])
    n_bytes = sum(len(d.encode()) for d in docs)
    bpb = results["results"]["compactlm_ppl"]["bits_per_byte,none"]
    assert bpb == pytest.approx(-sum(logp) / n_bytes / math.log(2), rel=1e-5)
    # a second evaluation writes a second file, never over the first
    assert cli("eval", str(run), "tasks=compactlm_mc", f"include_path={tasks}", "limit=2") == 0
    assert len(list((run / "lm_eval").glob("results_*.json"))) == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["tasks=no_such_task_xyz"], "unknown lm-eval task"),
        (["tasks=compactlm_mc", "include_path=/no/such/dir"], "is not a directory"),
        (["tasks=compactlm_mc", "limit=0"], "limit=0"),
        (["tasks=compactlm_mc", "num_fewshot=-1"], "num_fewshot"),
        (["tasks=compactlm_mc", "no_such_option=1"], "unknown config key"),
    ],
)
def test_bad_inputs_one_line_exit_2_nothing_written(nano_run, tasks_dir, capsys, args, message):
    before = digests(nano_run)
    if "include_path=/no/such/dir" not in args:
        args = [*args, f"include_path={tasks_dir}"]
    capsys.readouterr()
    assert cli("eval", str(nano_run), *args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert digests(nano_run) == before and not (nano_run / "lm_eval").exists()


def test_lm_eval_not_installed_is_one_line(nano_run, monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "lm_eval", None)  # import lm_eval fails
    capsys.readouterr()
    assert cli("eval", str(nano_run), "tasks=arc_easy") == 2
    err = capsys.readouterr().err.strip()
    assert "not installed" in err and "compactlm[eval]" in err and len(err.splitlines()) == 1
    assert not (nano_run / "lm_eval").exists()


def test_lora_on_packed_nf4_run(nano_run, tmp_path, monkeypatch):
    """QLoRA (a LoRA adapter over packed nf4 storage): scores equal the run's own forward."""
    from compactlm.evaluation.lm_eval_model import CompactLM

    monkeypatch.setenv("COMPACTLM_CACHE", str(nano_run.parent / "cache"))
    quiet = ["train.progress=false", "train.tensorboard=false", "train.eval_every=0"]
    lora = ["adapter.kind=lora", "adapter.rank=4", "model.weight_format=nf4"]
    ft = tmp_path / "qlora"
    args = [*lora, "model.quant_group_size=32", "train.steps=1", *quiet, f"workdir={ft}"]
    assert cli("finetune", str(nano_run), *args) == 0
    cfg = json.loads((ft / "config.json").read_text())["model"]
    assert cfg["weight_format"] == "nf4" and cfg["adapter"]["kind"] == "lora"
    lm = CompactLM(str(ft), batch_size=4)
    requests = REQUESTS[:4]
    got = [g for g, _ in lm.loglikelihood([Req(c, x) for c, x in requests])]
    want = [loglikelihood_reference(lm, c, x) for c, x in requests]
    np.testing.assert_allclose(got, want, **LOGP)
