"""Bad input, as a new user types it, for every command: exit code 2, one line that names the
problem (and the valid choices where there are any), no traceback, and nothing already saved is
modified. Runs in-process through `compactlm.cli.main`; most cases fail before any compile."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from compactlm.cli import main
from compactlm.config import make_config
from compactlm.train.loop import run as run_training

# The one informational stderr line some commands print before their work starts.
INFO_PREFIXES = ("train nano -> ", "train tiny -> ")

LONG_PROMPT = "x" * 200  # nano's context is 128 tokens (bytes)

CASES = [
    # --- train ------------------------------------------------------------------------------
    (["train", "nano", "model.dmodel=3"], "unknown config key 'model.dmodel'; valid keys: model."),
    (["train", "nano", "optim.lr=fast"], "optim.lr='fast' is not a float"),
    (["train", "nano", "model.remat=all"], "choose one of: 'none' | 'block' | 'dots'"),
    (["train", "nano", "model.n_kv_heads=3"], "must be a multiple of n_kv_heads=3"),
    (["train", "huge"], "unknown preset 'huge'; valid presets: nano, tiny, small, base"),
    (["train", "nano", "data.corpus=/nonexistent", "--dry-run"], "unknown corpus '/nonexistent'"),
    (["train", "nano", "data.corpus=/nonexistent"], "Valid: 'pystdlib', 'pydocs', a text file"),
    (["train", "nano", "train.steps=0", "--dry-run"], "train.steps must be >= 1"),
    (["train", "nano", "train.grad_accum=3", "--dry-run"], "must be divisible by train.grad_acc"),
    (["train", "nano", "data.val_fraction=0.7"], "data.val_fraction must be in (0, 0.5)"),
    (["train", "nano", "data.tokenizer=wordpiece"], "choose one of: 'byte' | 'bpe' | 'hf'"),
    (["train", "nano", "model.d_model=65"], "d_model=65 is not divisible by n_heads=4"),
    (["train", "nano", "model.d_model="], "model.d_model='' is not an int"),
    (["train", "nano", "model.tie_embeddings=maybe"], "is not a bool; use true or false"),
    (["train", "nano", "model", "--dry-run"], "unexpected arguments ['model']"),
    (["train", "nano", "mesh.tensor=3"], "data * fsdp * tensor must equal the device count"),
    (["train", "nano", "train.batch_size=3"], "is not divisible by the data x fsdp mesh size 8"),
    (["train", "nano", "data.corpus={empty_dir}"], "has no files matching data.glob='**/*.txt'"),
    (["train", "nano", "data.corpus={empty_file}"], "contains no text"),
    (["train", "nano", "data.corpus={short_file}"], "tokens are too few for seq_len=128"),
    (["train", "nano", "data.tokenizer=bpe", "data.bpe_vocab_size=100"], "is too small"),
    (["train", "nano", "workdir={a_file}"], "File exists"),
    (["train", "nano", "data.corpus=pydocs", "model.d_model=32", "workdir={run}"], "model.d_model"),
    # --- eval / generate --------------------------------------------------------------------
    (["eval", "/no/such/run"], "a compactlm run directory?"),
    (["eval"], "eval needs a RUN_DIR"),
    (["eval", "{no_checkpoint}"], "no checkpoint found in"),
    (["eval", "{run}", "badkey=1"], "unknown config key 'badkey'; valid keys: preset, model."),
    (["eval", "{run}", "data.corpus=/nonexistent"], "unknown corpus '/nonexistent'"),
    (["eval", "{run}", "model.d_model=32"], "was saved for a different model (model.d_model: ch"),
    (["generate", "/no/such/run"], "a compactlm run directory?"),
    (["generate", "{run}", "temprature=1"], "valid keys: prompt, max_new_tokens"),
    (["generate", "{run}", "temperature=-1"], "temperature >= 0"),
    (["generate", "{run}", "top_p=0"], "top_p must be in (0, 1]"),
    (["generate", "{run}", "max_new_tokens=0"], "max_new_tokens >= 1"),
    (["generate", "{run}", f"prompt={LONG_PROMPT}"], "more than the model's context (model.max_"),
    # --- info / bench -----------------------------------------------------------------------
    (["info", "huge"], "unknown preset 'huge'; valid presets"),
    (["info", "nano", "model.d_model=abc"], "model.d_model='abc' is not an int"),
    (["bench"], "bench needs a target: train, kernels"),
    (["bench", "frobnicate"], "bench needs a target: train, kernels"),
    (["bench", "kernels", "--formats", "int9"], "unknown formats ['int9']; valid: "),
    (["bench", "kernels", "formats=int9"], "unknown formats ['int9']; valid: "),
    (["bench", "train", "nano", "model.remat=x"], "choose one of: 'none' | 'block' | 'dots'"),
    (["bench", "decode", "/no/such/run"], "a compactlm run directory?"),
    # --- export / import --------------------------------------------------------------------
    (["export", "{run}", "format=onnx", "workdir={tmp}/e"], "format='onnx' is not valid; choose"),
    (["export", "{run}", "format=hf"], "export needs workdir=OUT"),
    (["export", "/no/such/run", "workdir={tmp}/e"], "a compactlm run directory?"),
    (["export", "{run}", "workdir={nonempty_dir}"], "already exists and is not empty"),
    (["export"], "export needs a RUN_DIR"),
    (["import", "/no/such/dir", "workdir={tmp}/i"], "config.json not found"),
    (["import", "{hf}"], "import needs workdir=RUN_DIR"),
    (["import", "{hf}", "workdir={tmp}/i", "model.d_model=3"], "d_model=3 is not divisible"),
    (["import", "{hf}", "workdir={tmp}/i", "data.corpus=/nonexistent"], "unknown corpus"),
    (["import", "{hf}", "workdir={run}"], "already exists and is not empty"),
    (["import", "{bad_json_hf}", "workdir={tmp}/i"], "config.json is not valid JSON"),
    (["import", "{run}", "workdir={tmp}/i"], "model_type=None is not supported; valid: 'llama'"),
    # --- sweep / report / pick / finetune / distill / quantize / prune / merge ---------------
    (["sweep", "nosuchsweep"], "unknown sweep 'nosuchsweep'; available:"),
    (["report", "nosuchsweep"], "unknown sweep 'nosuchsweep'; available:"),
    (["pick", "memory=lots"], "use a number with B, KB, MB, GB, KiB, MiB or GiB"),
    (["finetune", "{run}", "adapter.kind=lorax", "workdir={tmp}/f"], "choose one of: 'none' |"),
    (["finetune", "/no/such/run", "workdir={tmp}/f"], "a compactlm run directory?"),
    (["finetune", "{run}", "adapter.targets=q,zz", "workdir={tmp}/f"], "valid targets: q, k, v"),
    (["distill", "{run}", "distill.loss=kl2", "workdir={tmp}/d"], "choose one of: 'fkl' | 'rkl'"),
    (["distill", "{run}", "distill.temperature=-1", "workdir={tmp}/d"], "must be > 0"),
    (["distill", "{run}", "nano", "data.tokenizer=bpe", "workdir={tmp}/d"], "tokenizers differ"),
    (["quantize", "{run}", "method=foo", "workdir={tmp}/q"], "choose one of: 'rtn' | 'gptq' |"),
    (["quantize", "{run}", "format=int9", "workdir={tmp}/q"], "choose one of: 'int4' |"),
    (["quantize", "/no/such/run", "workdir={tmp}/q"], "a compactlm run directory?"),
    (["prune", "{run}", "pattern=3:4", "workdir={tmp}/p"], "choose one of: 'unstructured' |"),
    (["prune", "{run}", "sparsity=1.5", "workdir={tmp}/p"], "must be in (0, 1)"),
    (["merge", "/no/such/run", "workdir={tmp}/m"], "a compactlm run directory?"),
    (["recipe", "frobnicate=1"], "unknown config key 'frobnicate'; valid keys: preset, stages"),
    (["recipe", "/no/such/run"], "No such file or directory: '/no/such/run/config.json'"),
    (["frobnicate"], "unknown command 'frobnicate'; valid commands: train"),
]


def _digest(root: Path) -> dict[str, str]:
    """Every saved file under root, by content; not the token cache (it may gain entries) nor a
    run's .lock (rewritten by each trainer that opens the run, saved data is not)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".lock" and "cache" not in p.relative_to(root).parts
    }


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    """A trained nano run, its HF export, and the broken inputs the cases name."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("bad_inputs")
    mp.setenv("COMPACTLM_CACHE", str(root / "cache"))
    run, hf = root / "run", root / "hf"
    common = ["train.progress=false", "train.eval_every=0", "train.tensorboard=false"]
    run_training(make_config("nano", ["train.steps=1", "data.corpus=pydocs", *common]), run)
    with pytest.raises(SystemExit):
        main(["export", str(run), f"workdir={hf}"])
    (root / "empty_dir").mkdir()
    (root / "empty_file.txt").write_text("")
    (root / "short_file.txt").write_text("hi")
    (root / "a_file").write_text("not a directory")
    (root / "nonempty_dir").mkdir()
    (root / "nonempty_dir" / "keep.txt").write_text("keep")
    (root / "no_checkpoint").mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(run / name, root / "no_checkpoint" / name)
    shutil.copytree(hf, root / "bad_json_hf")
    (root / "bad_json_hf" / "config.json").write_text("{")
    names = {
        "run": run,
        "hf": hf,
        "empty_dir": root / "empty_dir",
        "empty_file": root / "empty_file.txt",
        "short_file": root / "short_file.txt",
        "a_file": root / "a_file",
        "nonempty_dir": root / "nonempty_dir",
        "no_checkpoint": root / "no_checkpoint",
        "bad_json_hf": root / "bad_json_hf",
    }
    yield root, {k: str(v) for k, v in names.items()}
    mp.undo()


def test_the_table_covers_every_command():
    from compactlm.cli import COMMANDS

    assert len(CASES) >= 40
    covered = {args[0] for args, _ in CASES}
    assert set(COMMANDS) <= covered, set(COMMANDS) - covered


@pytest.mark.parametrize("args, message", CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_bad_input_exits_2_with_one_line(args, message, places, tmp_path, capsys, monkeypatch):
    root, names = places
    monkeypatch.chdir(tmp_path)  # a default workdir (runs/...) lands in tmp_path, not the repo
    args = [a.format(tmp=tmp_path, **names) for a in args]
    if args[0] in ("train", "finetune", "distill"):
        if not any(a.startswith("workdir=") for a in args):
            args.append(f"workdir={tmp_path / 'w'}")
        if not any(a.startswith("data.corpus=") for a in args):
            args.append("data.corpus=pydocs")  # small: cases that get as far as the data
    before = _digest(root)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and not lines[0].startswith("Traceback")
    hits = [line for line in lines if message in line]
    assert len(hits) == 1, (message, err)
    assert hits[0].startswith("compactlm"), err
    # One line: besides the error, only the command's own one-line banner, or (usage errors)
    # the usage text after a blank line.
    usage = "\n\n" in err
    if not usage:
        others = [line for line in lines if line != hits[0]]
        assert all(line.startswith(INFO_PREFIXES) for line in others), err
    assert _digest(root) == before, "a previously saved file was modified"
    json.dumps(args)  # the case is plain data (reproducible from its id)
