"""`compactlm <command> --help`, `compactlm help <command>`, `--version` (compactlm/help.py)."""

import dataclasses
import importlib

import pytest

from compactlm.cli import COMMANDS
from tests.commandline import cli

# Every command line the help covers: each command of cli.COMMANDS, bench by its targets.
HELP_COMMANDS = tuple(
    line
    for command in COMMANDS
    for line in (
        [f"bench {t}" for t in ("train", "kernels", "decode")] if command == "bench" else [command]
    )
)


def _options(command: str) -> list:
    """The instances the command's own code applies its overrides to (as commands.py and the
    modules it calls do), independently of help.py's table."""
    from compactlm.config import Config, get_preset

    def instance(module: str, name: str):
        return getattr(importlib.import_module(module), name)()

    if command in ("train", "bench train", "info"):
        return [get_preset("tiny")]
    if command in ("finetune", "eval", "import"):
        return [Config()]
    if command == "distill":
        return [instance("compactlm.train.distill_run", "DistillArgs"), get_preset("nano")]
    if command == "export":  # commands.export applies format=gguf / compressed-tensors' own keys
        return [
            instance("compactlm.commands", "ExportConfig"),
            instance("compactlm.interop.gguf", "GGUFExportConfig"),
            instance("compactlm.interop.compressed_tensors", "CTExportConfig"),
        ]
    where = {
        "generate": ("compactlm.commands", "SampleConfig"),
        "merge": ("compactlm.commands", "MergeConfig"),
        "distill-cache": ("compactlm.train.distill_cache", "CacheConfig"),
        "quantize": ("compactlm.compress.job", "QuantizeJob"),
        "prune": ("compactlm.compress.job", "PruneJob"),
        "sweep": ("compactlm.experiments.sweep", "SweepOptions"),
        "report": ("compactlm.experiments.report", "ReportOptions"),
        "pick": ("compactlm.experiments.pick", "PickConfig"),
        "recipe": ("compactlm.experiments.recipe", "RecipeConfig"),
        "bench kernels": ("compactlm.benchmarks.bench_kernels", "BenchKernelsConfig"),
        "bench decode": ("compactlm.benchmarks.bench_decode", "BenchDecodeConfig"),
    }[command]
    return [instance(*where)]


def _help(capsys, *args: str) -> str:
    assert cli(*args) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    return captured.out


def test_every_command_is_covered():
    from compactlm.cli import COMMANDS

    assert {c.split()[0] for c in HELP_COMMANDS} == set(COMMANDS)


@pytest.mark.parametrize("command", HELP_COMMANDS)
def test_help_lists_usage_and_every_key(command, capsys):
    """The drift test: every key apply_overrides accepts for the command's options is listed
    (config._valid_keys walks the same instances the parser does), under the usage lines."""
    from compactlm.config import _valid_keys

    out = _help(capsys, *command.split(), "--help")
    lines = out.splitlines()
    assert lines[0] == "usage:" and lines[1].startswith(f"compactlm {command} ")
    keys = [key for options in _options(command) for key in _valid_keys(options)]
    assert keys
    for key in keys:
        assert any(line.startswith(f"  {key}: ") for line in lines), key
    assert max(map(len, lines)) <= 100


@pytest.mark.parametrize(
    "command, expected",
    [
        (
            "quantize",
            [
                "  method: 'rtn' | 'gptq' | 'awq' = 'rtn'",
                "  group_size: int = 128",
                "  calib.sequences: int = 128",
                "  double_quant: bool = false",
                "calib.*",
            ],
        ),
        (
            "prune",
            [
                "  pattern: 'unstructured' | '2:4' | '4:8' = '2:4'",
                "  quantize.method: 'rtn' | 'gptq' | 'awq' | 'none' = 'none'",
                "  recover.distill.loss: ",
                "  calib.sequences: int",
            ],
        ),
        ("generate", ["  temperature: float = 0.8", "  max_new_tokens: int | None = None"]),
        ("merge", ["  dequantize: bool = false"]),
        (
            "export",
            [
                "  format: 'hf' | 'gguf' | 'compressed-tensors' = 'hf'",
                "  adapter: 'merged' | 'separate' = 'merged'",
                "  eval_tokens: int = 32768",
            ],
        ),
        ("distill", ["  distill.loss: 'fkl' | 'rkl' | 'jsd' | 'skl' | 'srkl' | 'tvd' = 'fkl'"]),
        ("pick", ["  device: 'cpu' | 'h100' | 'h200' = 'cpu'", "  memory: str = '2GiB'"]),
        ("recipe", ["  stages: tuple = pretrain,"]),
        ("report", ["  plots: bool = true"]),
        ("bench kernels", ["  impl: 'auto' | 'triton' | 'reference' = 'auto'"]),
        ("bench decode", ["  batch_sizes: tuple = 1,16"]),
    ],
)
def test_help_shows_types_defaults_and_choices(command, expected, capsys):
    out = _help(capsys, *command.split(), "--help")
    for text in expected:
        assert text in out, text


def test_train_help_lists_presets_and_sections_with_the_presets_defaults(capsys):
    from compactlm.config import get_preset

    out = _help(capsys, "train", "--help")
    for name in ("nano", "tiny", "small", "base"):
        assert name in out.split("presets:", 1)[1].split("\n\n")[0]
    for section in ("model.", "train.", "optim.", "data.", "mesh.", "model.adapter."):
        assert f"\n{section}*" in out, section
    tiny, nano = get_preset("tiny"), get_preset("nano")
    assert f"  model.d_model: int = {tiny.model.d_model}\n" in out
    assert tiny.model.d_model != nano.model.d_model
    # A preset before --help shows that preset's defaults.
    assert f"  model.d_model: int = {nano.model.d_model}\n" in _help(capsys, "train", "nano", "-h")


def test_help_prints_each_fields_source_comment(capsys):
    from compactlm.compress.calibrate import CalibConfig
    from compactlm.help import field_comments

    comments = field_comments(CalibConfig)
    assert set(comments) == {f.name for f in dataclasses.fields(CalibConfig)}
    out = " ".join(_help(capsys, "quantize", "--help").split())  # the comments are re-wrapped
    for name, comment in comments.items():
        assert comment and " ".join(comment.split()) in out, name


def test_field_comments_above_trailing_wrapped_and_inherited():
    from compactlm.help import field_comments

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Base:
        """Doc."""

        # Above, first line;
        # second line.
        above: int = 1
        trailing: str = "a # not a comment"  # the real one
        bare: int = 2

        wrapped: float = 3e-3  # inside the parentheses
        narrowed: int = 0  # the base's meaning

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Sub(Base):
        narrowed: int = 1  # what the subclass changes
        extra: bool = False

    assert field_comments(Sub) == {
        "above": "Above, first line; second line.",
        "trailing": "the real one",
        "bare": "",
        "wrapped": "inside the parentheses",
        "narrowed": "the base's meaning what the subclass changes",
        "extra": "",
    }


def test_help_anywhere_among_the_arguments_runs_nothing(capsys, tmp_path):
    missing = str(tmp_path / "no-such-run")
    out = _help(capsys, "quantize", missing, "method=gptq", "-h", f"workdir={tmp_path / 'out'}")
    assert out == _help(capsys, "quantize", "--help")
    assert not (tmp_path / "out").exists()
    assert _help(capsys, "generate", missing, "--help", "prompt=x").startswith("usage:")


def test_help_command_is_the_flag(capsys):
    assert _help(capsys, "help", "prune") == _help(capsys, "prune", "--help")
    assert _help(capsys, "help", "bench", "decode") == _help(capsys, "bench", "decode", "-h")
    bench = _help(capsys, "bench", "--help")
    assert "compactlm bench kernels --help" in bench and "compactlm bench decode" in bench
    assert "compactlm COMMAND -h|--help" in _help(capsys, "help")
    assert cli("help", "frobnicate") == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_sweep_help_lists_the_sweeps(capsys):
    from compactlm.experiments.sweep import available

    out = " ".join(_help(capsys, "sweep", "--help").split())
    assert available() and all(name in out for name in available())


def test_finetune_help_names_the_changeable_model_keys(capsys):
    from compactlm.train.finetune import CHANGEABLE_MODEL_FIELDS

    note = " ".join(_help(capsys, "finetune", "--help").split("keys (key=value)")[0].split())
    for name in CHANGEABLE_MODEL_FIELDS:
        assert f"model.{name}" in note, name


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(flag, capsys):
    from importlib.metadata import version

    assert _help(capsys, flag) == f"compactlm {version('compactlm')}\n"
