"""The sweep runner: dry-run lines are the runs, resume skips finished rows, records, the CLI."""

import json
import shlex

import pytest

from compactlm.cli import _split_args
from compactlm.config import from_json, make_config, to_dict
from compactlm.experiments import sweep as sweeps
from compactlm.experiments.sweep import Row, Sweep, SweepError, SweepOptions
from compactlm.train.loop import resolve_vocab
from tests.commandline import cli as _cli


@pytest.fixture(autouse=True)
def _token_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("COMPACTLM_CACHE", str(tmp_path_factory.getbasetemp() / "sweep_cache"))


def _config_of_line(line: str):
    """What `compactlm train ...` builds from a printed line: parsed like the shell and the CLI."""
    argv = shlex.split(line, comments=True)  # the `# done` / `# pending` after each line
    assert argv[:2] == ["compactlm", "train"]
    preset, overrides, special = _split_args(argv[2:])
    return make_config(preset, overrides), special["workdir"]


TOY = Sweep(
    title="toy",
    target="nano",
    common=("train.steps=3", "train.eval_every=0", "train.progress=false", "data.corpus=pydocs"),
    rows=(
        Row(name="narrow", overrides=("model.d_model=32", "model.d_ff=96")),
        Row(name="prompty", overrides=("model.rope_theta=500.0",)),
    ),
    seeds=1,
)


def test_dry_run_lines_reparse_to_the_run_configs(tmp_path):
    """Every printed line, split as a shell would and parsed as the CLI does, gives the config the
    runner uses and the same run directory; rows differ from each other only by their overrides."""
    options = SweepOptions(root=str(tmp_path), seeds=2)
    lines = sweeps.dry_run_lines("toy", TOY, options)
    runs = sweeps.plan("toy", TOY, options)
    assert len(lines) == len(runs) == 4
    for line, run in zip(lines, runs, strict=True):
        cfg, workdir = _config_of_line(line)
        assert (
            workdir == str(run.workdir) == str(tmp_path / "toy" / run.row.name / f"seed{run.seed}")
        )
        expected = make_config("nano", [*TOY.common, *run.row.overrides])
        assert cfg.train.seed == run.seed
        assert to_dict(cfg) == to_dict(
            make_config("nano", [*TOY.common, *run.row.overrides, f"train.seed={run.seed}"])
        )
        assert cfg.model == expected.model and cfg.optim == expected.optim
    narrow, _ = _config_of_line(lines[0])
    assert narrow.model.d_model == 32 and narrow.model.d_ff == 96


def test_the_scaling_sweep_file_plans_valid_configs():
    """The shipped sweep file loads, and every line of its dry run is a valid config."""
    name, spec = sweeps.load("scaling")
    lines = sweeps.dry_run_lines(name, spec)
    assert len(lines) == len(spec.rows) * spec.seeds
    widths = [_config_of_line(line)[0].model.d_model for line in lines[:: spec.seeds]]
    assert widths == sorted(widths) and len(set(widths)) == len(spec.rows)


@pytest.mark.parametrize(
    "name",
    [n for n in sweeps.available() if sweeps.load(n)[1].command != "distill"],
)
def test_every_sweep_file_has_valid_overrides(name):
    """Each row of a shipped sweep file builds its command's config (a typo in a key or a value
    fails here, not minutes into the sweep): train against the preset, finetune through the
    same shape checks as `compactlm finetune` against the base fixture's config, quantize / prune
    against their job configs."""
    from compactlm.compress.job import PruneJob, QuantizeJob
    from compactlm.config import apply_overrides
    from compactlm.train.finetune import apply_finetune_overrides

    _, spec = sweeps.load(name)
    preset = "tiny" if spec.target[0] == "{base}" else spec.target[0]
    jobs = {"quantize": QuantizeJob, "prune": PruneJob}
    for row in spec.rows:
        overrides = [*spec.common, *row.overrides]
        if spec.command in jobs:
            apply_overrides(jobs[spec.command](), overrides)
        elif spec.command == "finetune":
            # What `compactlm finetune` checks against the base: the fixture's own config, so a
            # row that changes the base's shape (or a pretraining-only key) fails here too.
            _, fixture_preset, *fixture_overrides = sweeps.FIXTURES[spec.base]
            apply_finetune_overrides(make_config(fixture_preset, fixture_overrides), overrides)
        else:
            make_config(preset, overrides)


def _fake_execute(calls, *, bpb=lambda argv: 1.0, finish=lambda argv: True):
    """Stands in for the child process: writes config.json and (if finished) eval.json."""

    def execute(argv, workdir):
        calls.append(list(argv))
        preset, overrides, special = _split_args(list(argv[1:]))
        cfg = resolve_vocab(make_config(preset, overrides), 259)
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(json.dumps(to_dict(cfg)))
        if finish(argv):
            (workdir / "eval.json").write_text(json.dumps({"bpb": bpb(argv), "loss": 2.0}))
        return 0

    return execute


def test_resume_skips_finished_runs_and_reruns_unfinished(tmp_path):
    calls: list = []
    opts = SweepOptions(root=str(tmp_path))
    log = []
    # First attempt: the second row stops without its eval.json (as an interrupted train does).
    first = sweeps.run_sweep(
        "toy",
        TOY,
        opts,
        execute=_fake_execute(calls, finish=lambda a: "model.rope_theta=500.0" not in a),
        log=log.append,
    )
    assert first == {"ran": 1, "skipped": 0, "failed": 1}
    assert len(calls) == 2
    # Second attempt: the finished row is skipped, the unfinished one runs again, same argv.
    calls2: list = []
    second = sweeps.run_sweep("toy", TOY, opts, execute=_fake_execute(calls2), log=log.append)
    assert second["ran"] == 1 and second["skipped"] == 1
    assert calls2 == [calls[1]]
    # More seeds: only the new seed of each row runs.
    calls3: list = []
    third = sweeps.run_sweep(
        "toy",
        TOY,
        SweepOptions(root=str(tmp_path), seeds=2),
        execute=_fake_execute(calls3),
        log=log.append,
    )
    assert third["ran"] == 2 and third["skipped"] == 2
    assert all("train.seed=1" in c for c in calls3)
    records = sweeps.read_results(sweeps.results_path("toy", tmp_path))
    assert len(records) == 4
    # An edited row (different argv) is not "done", and its old run directory is not resumed
    # under the new overrides: the runner refuses until the directory is removed.
    narrow48 = Row(name="narrow", overrides=("model.d_model=48", "model.d_ff=96"))
    edited = Sweep(**{**TOY.__dict__, "rows": (narrow48,)})
    calls4: list = []
    counts = sweeps.run_sweep("toy", edited, opts, execute=_fake_execute(calls4), log=log.append)
    assert counts["failed"] == 1 and calls4 == [] and "holds another command" in log[-2]
    import shutil

    shutil.rmtree(tmp_path / "toy" / "narrow" / "seed0")
    sweeps.run_sweep("toy", edited, opts, execute=_fake_execute(calls4), log=log.append)
    assert len(calls4) == 1 and "model.d_model=48" in calls4[0]
    current = sweeps.current_records("toy", edited, tmp_path)
    assert [r["row"] for r in current] == ["narrow"] and "model.d_model=48" in current[0]["argv"]


def test_a_signal_stops_the_sweep_after_its_child_and_names_the_run(tmp_path):
    from compactlm.interrupt import Interrupted

    calls: list = []
    finish = _fake_execute(calls)

    def execute(argv, workdir):  # the second row's child saved its checkpoint and exited
        if calls:
            raise Interrupted("SIGTERM", "the child exited 143")
        return finish(argv, workdir)

    log: list = []
    with pytest.raises(Interrupted) as e:
        opts = SweepOptions(root=str(tmp_path))
        sweeps.run_sweep("toy", TOY, opts, execute=execute, log=log.append)
    assert e.value.exit_code == 143
    assert "stopped in [2/2] prompty seed 0; re-run the same sweep command" in str(e.value)
    assert log[-1].startswith("sweep toy: 1 ran, 0 skipped, 0 failed")


def test_rerun_runs_finished_rows_again_and_the_new_record_wins(tmp_path):
    """rerun=true re-runs the selected finished rows in fresh directories; the report then reads
    the new record (the latest per argv), the other rows stay skipped."""
    opts = SweepOptions(root=str(tmp_path))
    sweeps.run_sweep("toy", TOY, opts, execute=_fake_execute([], bpb=lambda a: 1.0), log=print)
    stale = tmp_path / "toy" / "narrow" / "seed0" / "stale.txt"
    stale.write_text("from the first run")
    calls: list = []
    counts = sweeps.run_sweep(
        "toy",
        TOY,
        SweepOptions(root=str(tmp_path), only="narrow", rerun=True),
        execute=_fake_execute(calls, bpb=lambda a: 0.5),
        log=print,
    )
    assert counts["ran"] == 1 and len(calls) == 1 and not stale.exists()
    assert len(sweeps.read_results(sweeps.results_path("toy", tmp_path))) == 3
    current = {r["row"]: r["metrics"]["bpb"] for r in sweeps.current_records("toy", TOY, tmp_path)}
    assert current == {"narrow": 0.5, "prompty": 1.0}
    again = sweeps.run_sweep("toy", TOY, opts, execute=_fake_execute([]), log=print)
    assert again["skipped"] == 2 and again["ran"] == 0


def test_record_fields(tmp_path):
    calls: list = []
    sweeps.run_sweep(
        "toy",
        TOY,
        SweepOptions(root=str(tmp_path), only="narrow"),
        execute=_fake_execute(calls, bpb=lambda a: 1.25),
        log=lambda s: None,
    )
    (record,) = sweeps.read_results(sweeps.results_path("toy", tmp_path))
    from compactlm.models.footprint import count_params

    cfg = resolve_vocab(make_config("nano", [*TOY.common, *TOY.rows[0].overrides]), 259)
    assert record["metrics"] == {"bpb": 1.25, "loss": 2.0}
    assert record["params"] == count_params(cfg.model)["total"]
    assert record["config"]["model"]["d_model"] == 32
    assert record["command_line"].startswith("compactlm train nano ")
    assert record["wall_s"] >= 0 and "git_commit" in record and record["seed"] == 0
    assert "params/adapter" not in record


def test_adapter_runs_record_their_adapter_parameters():
    """LoRA on q at r8 in nano (d 64, 4 layers): 4 · r · (64 + 64) = 4096 adapter weights beside
    the base's parameters, which the adapters do not change."""
    plain = to_dict(make_config("nano", []))
    lora = to_dict(
        make_config("nano", ["adapter.kind=lora", "adapter.targets=q", "adapter.rank=8"])
    )
    figures = sweeps.model_figures(lora)
    assert figures["params/adapter"] == 4 * 8 * (64 + 64)
    assert figures["params"] == sweeps.model_figures(plain)["params"]


def test_base_fixture_runs_once_and_fills_the_placeholder(tmp_path):
    spec = Sweep(
        title="adapt",
        target="{base}",
        base="nano",
        common=("optim.lr=1e-3",),
        rows=(Row(name="a"), Row(name="b")),
    )
    base_dir = tmp_path / "_base" / "nano"
    lines = sweeps.dry_run_lines("adapt", spec, SweepOptions(root=str(tmp_path)))
    assert lines[0].startswith("compactlm train nano ") and str(base_dir) in lines[0]
    assert all(f"train {base_dir} " in line for line in lines[1:])
    calls: list = []

    def execute(argv, workdir):
        calls.append(list(argv))
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "eval.json").write_text('{"bpb": 1.0}')
        return 0

    for _ in range(2):
        sweeps.run_sweep(
            "adapt", spec, SweepOptions(root=str(tmp_path)), execute=execute, log=lambda s: None
        )
    assert [c[1] for c in calls] == ["nano", str(base_dir), str(base_dir)]  # the base once


def test_bad_sweeps_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(SweepError, match="valid commands: train"):
        Sweep(title="x", command="fly")
    with pytest.raises(SweepError, match="duplicate row names"):
        Sweep(title="x", rows=(Row(name="a"), Row(name="a")))
    with pytest.raises(SweepError, match="not key=value"):
        Row(name="a", overrides=("model.d_model",))
    assert _cli("sweep", "no_such_sweep") == 2
    err = capsys.readouterr().err
    assert "unknown sweep 'no_such_sweep'; available:" in err and "scaling" in err
    assert "Traceback" not in err
    assert _cli("sweep", "scaling", "only=nope", "--dry-run") == 2
    assert "unknown rows ['nope']" in capsys.readouterr().err


def test_sweep_end_to_end_on_nano(tmp_path, capsys):
    """Real child-free run through the CLI's train: config.json equals the dry-run line's config,
    a second `compactlm sweep` skips everything, and `compactlm report` writes the table."""
    path = tmp_path / "toy.py"
    # 20 steps, not 3: train's closing sample can draw the padded vocabulary ids (259..319) from
    # a near-uniform untrained model, which the byte tokenizer then rejects.
    common = ("train.steps=20", *TOY.common[1:])
    path.write_text(
        "from compactlm.experiments.sweep import Row, Sweep\n"
        f"SWEEP = Sweep(title='toy', common={common!r}, rows=(Row(name='narrow', "
        "overrides=('model.d_model=32', 'model.d_ff=96')),))\n"
    )
    root = tmp_path / "runs"

    def in_process(argv, workdir):
        return _cli(*argv)

    name, spec = sweeps.load(str(path))
    counts = sweeps.run_sweep(
        name, spec, SweepOptions(root=str(root)), execute=in_process, log=lambda s: None
    )
    assert counts["ran"] == 1
    (line,) = sweeps.dry_run_lines(name, spec, SweepOptions(root=str(root)))
    cfg, workdir = _config_of_line(line)
    saved = from_json((root / "toy" / "narrow" / "seed0" / "config.json").read_text())
    assert saved == resolve_vocab(cfg, 259)
    capsys.readouterr()
    assert _cli("sweep", str(path), f"root={root}") == 0
    assert "done earlier, skipped" in capsys.readouterr().out
    assert _cli("report", str(path), f"root={root}") == 0
    out = capsys.readouterr().out
    assert "| narrow |" in out and (root / "toy" / "toy.md").exists()
    assert (root / "toy" / "toy_loss.png").exists()


def test_compression_commands_start_fresh_and_report_compression_json(tmp_path):
    """quantize / prune want an empty output directory: an unfinished one is removed before the
    re-run; their metrics are compression.json's "after" evaluation and sizes."""
    spec = Sweep(title="q", command="quantize", target="{base}", base="nano", seed_key=None,
                 rows=(Row(name="rtn", overrides=("method=rtn",)),))  # fmt: skip
    opts = SweepOptions(root=str(tmp_path))
    (run,) = sweeps.plan("q", spec, opts)
    seen = []

    def execute(argv, workdir):
        if argv[0] == "train":  # the base fixture
            workdir.mkdir(parents=True)
            (workdir / "eval.json").write_text('{"bpb": 2.0}')
            return 0
        seen.append(sorted(p.name for p in workdir.iterdir()) if workdir.exists() else None)
        workdir.mkdir(parents=True)
        (workdir / "partial.bin").write_text("x")
        if len(seen) == 1:
            return 0  # stopped before writing its report
        report = {"after": {"bpb": 2.1, "loss": 1.4}, "before": {"bpb": 2.0},
                  "sizes": {"model_bytes": 1234, "note": "text is skipped"}}  # fmt: skip
        (workdir / "compression.json").write_text(json.dumps(report))
        return 0

    assert sweeps.run_sweep("q", spec, opts, execute=execute, log=lambda s: None)["failed"] == 1
    assert sweeps.run_sweep("q", spec, opts, execute=execute, log=lambda s: None)["ran"] == 1
    assert seen == [None, None]  # the partial directory was gone before the re-run
    (record,) = sweeps.read_results(sweeps.results_path("q", tmp_path))
    assert record["metrics"]["bpb"] == 2.1 and record["metrics"]["before/bpb"] == 2.0
    assert record["weight_bytes"] == 1234 and record["command_line"] == run.command_line
    with pytest.raises(SweepError, match="use seeds=1"):
        sweeps.plan("q", spec, SweepOptions(root=str(tmp_path), seeds=2))


class _Clock:
    """sweep.py's `time`, advanced by the fake command: each run takes a known wall time."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now

    def time(self):
        return self.now


def test_start_lines_show_position_and_an_eta_and_dry_run_marks_each_line(tmp_path, monkeypatch):
    """Each started run's line: [i/n], row, seed, and the ETA = mean wall time of the runs this
    invocation finished × the runs left (itself included); `--dry-run` then marks every line
    done / failed / pending from results.jsonl and the failed attempt's marker."""
    clock = _Clock()
    monkeypatch.setattr(sweeps, "time", clock)
    opts = SweepOptions(root=str(tmp_path), seeds=2)
    sweeps.run_sweep("toy", TOY, SweepOptions(root=str(tmp_path), only="narrow", seeds=1),
                     execute=_fake_execute([]), log=lambda s: None)  # fmt: skip
    durations = iter([10.0, 20.0, 30.0])
    inner = _fake_execute([])

    def execute(argv, workdir):
        clock.now += next(durations)
        if "train.seed=1" in argv and "model.rope_theta=500.0" in argv:  # prompty seed 1 fails
            return 3
        return inner(argv, workdir)

    log: list[str] = []
    counts = sweeps.run_sweep("toy", TOY, opts, execute=execute, log=log.append)
    assert counts == {"ran": 2, "skipped": 1, "failed": 1}
    runs = sweeps.plan("toy", TOY, opts)
    starts = [line for line in log if "compactlm train" in line]
    assert log[0] == "[1/4] narrow seed 0: done earlier, skipped"
    walls = []
    for i, (run, line) in enumerate(zip(runs[1:], starts, strict=True), 2):
        left = len(runs) - i + 1
        eta = "ETA unknown until a run finishes"
        if walls:
            mean = sum(walls) / len(walls)
            eta = f"ETA {mean * left:.0f} s ({left} left at {mean:.0f} s each)"
        assert line == f"[{i}/4] {run.row.name} seed {run.seed}: {eta}: {run.command_line}"
        walls.append(10.0 * (i - 1))

    recorded = {
        (r["row"], r["seed"]) for r in sweeps.read_results(sweeps.results_path("toy", tmp_path))
    }
    three = sweeps.dry_run_lines("toy", TOY, SweepOptions(root=str(tmp_path), seeds=3))
    for run, line in zip(
        sweeps.plan("toy", TOY, SweepOptions(root=str(tmp_path), seeds=3)), three, strict=True
    ):
        command, _, status = line.partition("  # ")
        assert command == run.command_line
        if (run.row.name, run.seed) in recorded:
            assert status == "done"
        elif (run.row.name, run.seed) == ("prompty", 1):
            assert status == f"failed (exit 3; log: {run.log_path})"
        else:
            assert status == "pending" and run.seed == 2
    assert recorded == {("narrow", 0), ("narrow", 1), ("prompty", 0)}
    # rerun=true would run every line again; a retried run is no longer "failed" once started.
    rerun = sweeps.dry_run_lines("toy", TOY, SweepOptions(root=str(tmp_path), seeds=2, rerun=True))
    assert all(line.endswith("  # pending") for line in rerun)
    only = SweepOptions(root=str(tmp_path), seeds=2, only="prompty")
    sweeps.run_sweep("toy", TOY, only, execute=_fake_execute([]), log=lambda s: None)
    assert sweeps.dry_run_lines("toy", TOY, opts)[-1].endswith("  # done")
