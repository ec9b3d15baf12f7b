"""Sweeps with lm-eval metrics: each row's score equals `compactlm eval ROW tasks=...`, resume
evaluates only what is missing, bad targets are refused before anything runs.

Tasks are local (tests/fixtures/lm_eval, their data_files made absolute in a temp folder), so
nothing is downloaded.
"""

import json
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

from compactlm.experiments import sweep as sweeps  # noqa: E402
from compactlm.experiments.sweep import SweepOptions  # noqa: E402
from tests.commandline import cli  # noqa: E402

FIXTURES = Path(__file__).parents[1] / "fixtures" / "lm_eval"
ACC, ACC_NORM = "lm-eval:compactlm_mc/acc", "lm-eval:compactlm_mc/acc_norm"


@pytest.fixture(autouse=True)
def _token_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("COMPACTLM_CACHE", str(tmp_path_factory.getbasetemp() / "sweep_cache"))


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory) -> Path:
    """The fixture task YAMLs with DATA_DIR made absolute (one folder for the module: lm-eval's
    task index is built once per include path)."""
    dest = tmp_path_factory.mktemp("lm_eval_tasks")
    for yaml in FIXTURES.glob("*.yaml"):
        (dest / yaml.name).write_text(yaml.read_text().replace("DATA_DIR", str(FIXTURES)))
    return dest


def sweep_file(tmp_path: Path, tasks: Path, metrics: tuple[str, ...]) -> Path:
    """Two nano rows on pydocs; 20 steps, not 3: train's closing sample can draw padded vocabulary
    ids from a near-uniform model, which the byte tokenizer rejects (test_sweep.py)."""
    common = (
        "train.steps=20",
        "train.eval_every=0",
        "train.progress=false",
        "train.tensorboard=false",
        "data.corpus=pydocs",
    )
    lm_eval = (f"include_path={tasks}", "batch_size=4")
    path = tmp_path / "toy.py"
    path.write_text(
        "from compactlm.experiments.sweep import Row, Sweep\n"
        f"SWEEP = Sweep(title='toy', common={common!r}, metrics={metrics!r}, lm_eval={lm_eval!r},"
        " rows=(Row(name='narrow', overrides=('model.d_model=32', 'model.d_ff=96')),"
        " Row(name='wide')))\n"
    )
    return path


def _in_process(argv, workdir):
    return cli(*argv)


def test_rows_record_the_score_that_compactlm_eval_gives(tmp_path, tasks_dir, capsys):
    path = sweep_file(tmp_path, tasks_dir, ("bpb", ACC, ACC_NORM))
    root = tmp_path / "runs"
    options = SweepOptions(root=str(root))
    name, spec = sweeps.load(str(path))
    counts = sweeps.run_sweep(name, spec, options, execute=_in_process, log=lambda s: None)
    assert counts == {"ran": 2, "skipped": 0, "failed": 0}
    records = sweeps.current_records(name, spec, root)
    assert [r["row"] for r in records] == ["narrow", "wide"]
    for record in records:
        run_dir = Path(record["workdir"])
        # the reference: the same evaluation through the CLI on the row's run directory
        before = set((run_dir / "lm_eval").glob("results_*.json"))
        assert cli("eval", str(run_dir), "tasks=compactlm_mc", *spec.lm_eval) == 0
        (new,) = set((run_dir / "lm_eval").glob("results_*.json")) - before
        want = json.loads(new.read_text())["results"]["compactlm_mc"]
        assert record["metrics"][ACC] == want["acc,none"]
        assert record["metrics"][ACC_NORM] == want["acc_norm,none"]
        assert record["metrics"][f"{ACC}_stderr"] == want["acc_stderr,none"]
        assert "bpb" in record["metrics"] and record["lm_eval_argv"][:2] == ["eval", str(run_dir)]
    # the report: accuracy columns beside bpb, each row's value, and a plot of it
    capsys.readouterr()
    assert cli("report", str(path), f"root={root}") == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("| row"))
    assert f"| bpb | {ACC} | {ACC_NORM} |" in header
    for record in records:
        line = next(x for x in out.splitlines() if x.startswith(f"| {record['row']} |"))
        assert f"{record['metrics'][ACC]:.4f} (s.e. " in line
        assert f"{record['metrics'][ACC_NORM]:.4f}" in line
    assert (root / name / f"{name}_lm-eval-compactlm_mc-acc_by_row.png").exists()
    # a second sweep evaluates nothing again
    n_results = len(list(root.rglob("results_*.json")))
    capsys.readouterr()
    assert cli("sweep", str(path), f"root={root}") == 0
    assert capsys.readouterr().out.count("done earlier, skipped") == 2
    assert len(list(root.rglob("results_*.json"))) == n_results


def fake_execute(calls: list, *, eval_code: int = 0, metrics=("acc",)):
    """A stand-in for the children: train writes eval.json, eval a results JSON with `metrics`."""

    def execute(argv, workdir):
        calls.append(argv[0])
        workdir.mkdir(parents=True, exist_ok=True)
        if argv[0] == "train":
            (workdir / "eval.json").write_text(json.dumps({"bpb": 2.0, "loss": 1.4}))
            return 0
        if eval_code:
            return eval_code
        got = {f"{m},none": 0.6 for m in metrics} | {f"{m}_stderr,none": 0.2 for m in metrics}
        (workdir / "lm_eval").mkdir(exist_ok=True)
        out = workdir / "lm_eval" / f"results_{len(list((workdir / 'lm_eval').iterdir()))}.json"
        out.write_text(json.dumps({"results": {"compactlm_mc": {"alias": "x", **got}}}))
        return 0

    return execute


def test_resume_evaluates_only_what_is_missing(tmp_path, tasks_dir):
    path = sweep_file(tmp_path, tasks_dir, ("bpb", ACC))
    options = SweepOptions(root=str(tmp_path / "runs"), only="narrow")
    name, spec = sweeps.load(str(path))
    calls: list[str] = []
    lines: list[str] = []
    # lm-eval fails: the training is recorded, the row counts as failed, dry-run says which part
    counts = sweeps.run_sweep(
        name, spec, options, execute=fake_execute(calls, eval_code=1), log=lines.append
    )
    assert calls == ["train", "eval"] and counts["failed"] == 1
    train_line, eval_line = sweeps.dry_run_lines(name, spec, options)
    assert (
        train_line.endswith("# done")
        and "# lm-eval:compactlm_mc/acc: failed (lm-eval exit 1" in eval_line
    )
    # the re-run evaluates without training again; the next one does nothing
    calls.clear()
    assert (
        sweeps.run_sweep(name, spec, options, execute=fake_execute(calls), log=lines.append)["ran"]
        == 1
    )
    assert calls == ["eval"]
    (record,) = sweeps.current_records(name, spec, options.root)
    assert record["metrics"][ACC] == 0.6 and record["metrics"]["bpb"] == 2.0
    calls.clear()
    assert (
        sweeps.run_sweep(name, spec, options, execute=fake_execute(calls), log=lines.append)[
            "skipped"
        ]
        == 1
    )
    assert calls == []
    # a metric added to the sweep file later: evaluated on the trained run, whose results lack
    # it: one line after the row, the record kept without it
    path = sweep_file(tmp_path, tasks_dir, ("bpb", ACC, ACC_NORM))
    name, spec = sweeps.load(str(path))
    lines.clear()
    counts = sweeps.run_sweep(name, spec, options, execute=fake_execute(calls), log=lines.append)
    assert calls == ["eval"] and counts["failed"] == 1
    (note,) = [x for x in lines if "lack" in x]
    assert f"lack {ACC_NORM} (compactlm_mc has acc)" in note
    (record,) = sweeps.current_records(name, spec, options.root)
    assert ACC in record["metrics"] and ACC_NORM not in record["metrics"]


@pytest.mark.parametrize(
    "metric, message",
    [
        ("lm-eval:no_such_task_xyz/acc", "unknown lm-eval task"),
        ("lm-eval:compactlm_mc/f1", f"valid: {ACC}, {ACC_NORM}"),
        ("lm-eval:compactlm_mc", "write lm-eval:TASK/METRIC"),
    ],
)
def test_a_bad_target_is_one_line_exit_2_before_any_row(
    tmp_path, tasks_dir, capsys, metric, message
):
    path = sweep_file(tmp_path, tasks_dir, ("bpb", metric))
    root = tmp_path / "runs"
    capsys.readouterr()
    assert cli("sweep", str(path), f"root={root}") == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not root.exists() or not any(root.rglob("seed0*"))


def test_lm_eval_options_are_checked_when_the_file_loads(tmp_path, tasks_dir):
    path = sweep_file(tmp_path, tasks_dir, ("bpb", ACC))
    path.write_text(path.read_text().replace("batch_size=4", "no_such_option=1"))
    with pytest.raises(sweeps.SweepError, match="unknown config key"):
        sweeps.load(str(path))


def test_dry_run_prints_each_rows_eval_line_with_its_target(tmp_path, tasks_dir, capsys):
    path = sweep_file(tmp_path, tasks_dir, ("bpb", ACC))
    root = tmp_path / "runs"
    capsys.readouterr()
    assert cli("sweep", str(path), f"root={root}", "--dry-run") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    for row, (train, evaluate) in zip(
        ("narrow", "wide"), zip(lines[::2], lines[1::2], strict=False), strict=True
    ):
        workdir = root / "toy" / row / "seed0"
        assert train.startswith("compactlm train nano") and train.endswith("# pending")
        assert evaluate.startswith(f"compactlm eval {workdir} tasks=compactlm_mc include_path=")
        assert evaluate.endswith(f"# {ACC}: pending")
