"""Bad input, as a new user types it, for every command: exit code 2, one line that names the
problem (and the valid choices where there are any), no traceback, and nothing already saved is
modified. Runs in-process through `compactlm.cli.main`; most cases fail before any compile."""

import json
import shutil

import pytest

from compactlm.cli import main
from compactlm.config import make_config
from compactlm.train.loop import run as run_training
from tests.files import digests

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
    (["train", "nano", "workdir={a_file}"], "is a file, not a directory"),
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
    (["export", "{run}", "workdir={nonempty_dir}"], "holds files that no compactlm command wrote"),
    (["export"], "export needs a RUN_DIR"),
    (["import", "/no/such/dir", "workdir={tmp}/i"], "config.json not found"),
    (["import", "{hf}"], "import needs workdir=RUN_DIR"),
    (["import", "{hf}", "workdir={tmp}/i", "model.d_model=3"], "d_model=3 is not divisible"),
    (["import", "{hf}", "workdir={tmp}/i", "data.corpus=/nonexistent"], "unknown corpus"),
    (["import", "{hf}", "workdir={run}"], "holds a `compactlm train` run; `import` writes only"),
    (["import", "{bad_json_hf}", "workdir={tmp}/i"], "config.json is not valid JSON"),
    (["import", "{run}", "workdir={tmp}/i"], "model_type=None is not supported; valid: 'llama'"),
    (["import", "{yarn_hf}", "workdir={tmp}/i"], "rope_scaling.rope_type='yarn' is not supported"),
    (
        ["import", "{sliding_qwen2_hf}", "workdir={tmp}/i"],
        "use_sliding_window=True is not supported; valid: False",
    ),
    (["import", "{moe_hf}", "workdir={tmp}/i"], "num_experts=8 is not supported"),
    # --- sweep / report / pick / finetune / distill / quantize / prune / merge ---------------
    (["sweep", "nosuchsweep"], "unknown sweep 'nosuchsweep'; available:"),
    (["report", "nosuchsweep"], "unknown sweep 'nosuchsweep'; available:"),
    (["pick", "memory=lots"], "use a number with B, KB, MB, GB, KiB, MiB or GiB"),
    (["finetune", "{run}", "adapter.kind=lorax", "workdir={tmp}/f"], "choose one of: 'none' |"),
    (["finetune", "/no/such/run", "workdir={tmp}/f"], "a compactlm run directory?"),
    (["finetune", "{run}", "adapter.targets=q,zz", "workdir={tmp}/f"], "valid targets: q, k, v"),
    (["distill-cache", "{run}", "top_k=0", "workdir={tmp}/c"], "top_k=0 must be in [1, "),
    (["distill-cache", "{run}", "seeds=a", "workdir={tmp}/c"], "seeds='a' is not an int"),
    (["distill-cache", "{empty_dir}", "workdir={tmp}/c"], "config.json not found"),
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
    (["recipe", "/no/such/run"], "/no/such/run/config.json not found: is '/no/such/run' a"),
    (["frobnicate"], "unknown command 'frobnicate'; valid commands: train"),
    # --- a hand-edited config.json, through every command that reads a RUN_DIR --------------
    (["eval", "{cfg_empty}"], "config.json is empty; a run's config.json holds its whole conf"),
    (["eval", "{cfg_not_json}"], "config.json is not valid JSON (Expecting property name"),
    (["eval", "{cfg_array}"], "config.json: the config is an array, not an object with the keys"),
    (["eval", "{cfg_unknown_key}"], "unknown config keys ['model.dmodel']; valid keys: model.voc"),
    (["eval", "{cfg_wrong_type}"], "config.json: model.d_model='64' is not an int"),
    (["eval", "{cfg_bad_literal}"], "model.remat='all' is not valid; choose one of: 'none' | 'b"),
    (["eval", "{cfg_bad_value}"], "config.json: data: data.val_fraction must be in (0, 0.5)"),
    (["eval", "{cfg_seq_len}"], "config.json: train.seq_len=256 is more than the model's conte"),
    (["generate", "{cfg_empty}"], "config.json is empty"),
    (["generate", "{cfg_wrong_type}"], "config.json: model.d_model='64' is not an int"),
    (["info", "{cfg_not_json}"], "config.json is not valid JSON"),
    (["info", "{cfg_bad_literal}"], "model.remat='all' is not valid; choose one of"),
    (["finetune", "{cfg_array}", "workdir={tmp}/f"], "the config is an array, not an object"),
    (["finetune", "{cfg_unknown_key}", "workdir={tmp}/f"], "unknown config keys ['model.dmodel"),
    (["distill", "{cfg_not_json}", "workdir={tmp}/d"], "config.json is not valid JSON"),
    (["distill", "{cfg_wrong_type}", "workdir={tmp}/d"], "model.d_model='64' is not an int"),
    (["quantize", "{cfg_empty}", "workdir={tmp}/q"], "config.json is empty"),
    (["quantize", "{cfg_bad_literal}", "workdir={tmp}/q"], "model.remat='all' is not valid"),
    (["prune", "{cfg_unknown_key}", "workdir={tmp}/p"], "unknown config keys ['model.dmodel']"),
    (["prune", "{cfg_array}", "workdir={tmp}/p"], "the config is an array, not an object"),
    (["merge", "{cfg_not_json}", "workdir={tmp}/m"], "config.json is not valid JSON"),
    (["merge", "{cfg_wrong_type}", "workdir={tmp}/m"], "model.d_model='64' is not an int"),
    (["export", "{cfg_empty}", "workdir={tmp}/e"], "config.json is empty"),
    (["export", "{cfg_unknown_key}", "workdir={tmp}/e"], "unknown config keys ['model.dmodel']"),
    (["bench", "decode", "{cfg_bad_literal}"], "model.remat='all' is not valid"),
    (["bench", "decode", "{cfg_array}"], "the config is an array, not an object"),
    (["bench", "decode", "{bad_report}"], "compression.json is not a compression report (a JSON"),
    (["recipe", "{cfg_not_json}"], "config.json is not valid JSON"),
    # --- generate / finetune inputs that used to end in a traceback ------------------------
    (["generate", "{run}", "prompt="], "prompt='': the prompt is empty; give the text to conti"),
    (["finetune", "{run}", "adapter.kind=lora", "adapter.rank=33"], "valid: adapter.rank=1..32"),
    (
        ["finetune", "{run}", "adapter.kind=lora", "adapter.targets=q", "adapter.rank=65"],
        "targeted d_in->d_out: q 64->64); valid: adapter.rank=1..64",
    ),
    (["finetune", "{run}", "adapter.kind=dora", "adapter.targets="], "adapter.targets is empty"),
    (
        ["finetune", "{run}", "adapter.kind=lora", "adapter.targets=lm_head"],
        "selects no layer of this model (no lm_head: model.tie_embeddings=true)",
    ),
    (
        ["finetune", "{run}", "adapter.kind=lora", "adapter.target_regex=mlp\\.gat$"],
        "adapter.target_regex='mlp\\\\.gat$' selects no layer of this model; its projections",
    ),
    (
        ["finetune", "{run}", "adapter.kind=lora", "adapter.target_regex=layers\\.0\\."],
        "selects attn.q in some layers only; scanned layers share one structure",
    ),
    # --- settings that would invalidate the result -----------------------------------------
    (["train", "nano", "train.seq_len=256"], "train.seq_len=256 is more than the model's context"),
    (["train", "nano", "model.max_seq_len=64"], "use train.seq_len <= 64 or raise model.max_seq"),
    (["eval", "{run}", "train.seq_len=200"], "train.seq_len=200 is more than the model's context"),
    (["distill", "{run}", "train.seq_len=256", "workdir={tmp}/d"], "model.max_seq_len=128; use"),
    (["finetune", "{run}", "train.seq_len=129"], "train.seq_len=129 is more than the model's co"),
    (["eval", "{run}", "data.split_seed=1"], "data.split_seed=1 would move documents"),
    (["eval", "{run}", "data.val_fraction=0.1"], "the run's split is data.split_seed=0, data.va"),
    (["eval", "{run}", "data.max_corpus_bytes=100000"], "data.max_corpus_bytes=100000 would mov"),
    (["eval", "{run}", "data.corpus=pydocs", "data.split_seed=2"], "(corpus 'pydocs'); the run"),
    # --- overrides that would silently do nothing (or something else) ----------------------
    (["train", "nano", "model.vocab_size=1000"], "model.vocab_size=1000 would be ignored: the v"),
    (
        ["train", "nano", "data.tokenizer=bpe", "model.vocab_size=512"],
        "data.bpe_vocab_size=4096 -> model.vocab_size=4096, padded to a multiple of 64); valid",
    ),
    (["eval", "{run}", "model.vocab_size=384"], "valid: 320, or leave model.vocab_size out"),
    (["info", "nano", "data.tokenizer=bpe", "model.vocab_size=64"], "set data.bpe_vocab_size"),
    (["prune", "{run}", "sparsity=0.7", "workdir={tmp}/p"], "sparsity=0.7 does nothing with pat"),
    (
        ["prune", "{run}", "pattern=4:8", "sparsity=0.25", "workdir={tmp}/p"],
        "valid: pattern=unstructured sparsity=0.25, or pattern=4:8 without sparsity",
    ),
    (["pick", "metric=accuracy"], "metric='accuracy' is not valid; choose one of: 'bpb' | 'loss"),
    (["pick", "formats="], "formats is empty; valid: float32, bfloat16, int4"),
    (["sweep", "lora_rank", "seeds=-1", "--dry-run"], "seeds=-1 would run nothing; valid: seeds"),
    (["sweep", "lora_rank", "seeds=0", "--dry-run"], "seeds=0 would run nothing; valid: seeds=1"),
    (["sweep", "lora_rank", "only=,", "--dry-run"], "only=,: names no row (it would run nothing)"),
    (["train", "nano", "train.keep_checkpoints=0"], "would keep no checkpoint (the trained model"),
    (["train", "nano", "train.checkpoint_every=-1"], "checkpoint_every=-1 is negative; valid: 0"),
    (["train", "nano", "train.eval_every=-100"], "train.eval_every=-100 is negative; valid: 0 ("),
    (["train", "nano", "train.eval_tokens=-1"], "train.eval_tokens=-1 is negative; valid: 0 (all"),
    (["train", "nano", "train.z_loss=-1e-4"], "train.z_loss=-0.0001 must be >= 0"),
    (["train", "nano", "optim.b2=1.5"], "b1, b2 and muon_momentum must be in [0, 1)"),
    (["train", "nano", "optim.grad_clip=-1"], "weight_decay and grad_clip must be >= 0"),
    # --- the workdir invariant (train/workdir.py): new, or the same command's own run --------
    (["distill", "{run}", "workdir={run}"], "holds a `compactlm train` run; `distill` writes o"),
    (["finetune", "{run}", "adapter.kind=lora", "workdir={run}"], "`finetune` writes only into"),
    (["quantize", "{run}", "workdir={run}"], "`quantize` writes only into a new directory"),
    (["prune", "{run}", "workdir={run}"], "`prune` writes only into a new directory"),
    (["merge", "{run}", "workdir={run}"], "`merge` writes only into a new directory"),
    (["export", "{run}", "workdir={run}"], "`export` writes only into a new directory"),
    (["train", "nano", "workdir={nonempty_dir}"], "holds files that no compactlm command wrote"),
    (["distill", "{run}", "workdir={nonempty_dir}"], "holds files that no compactlm command"),
    (["finetune", "{run}", "workdir={nonempty_dir}"], "holds files that no compactlm command"),
    (["quantize", "{run}", "workdir={nonempty_dir}"], "holds files that no compactlm command"),
    (["prune", "{run}", "workdir={nonempty_dir}"], "holds files that no compactlm command"),
    (["merge", "{run}", "workdir={nonempty_dir}"], "holds files that no compactlm command"),
    (["import", "{hf}", "workdir={nonempty_dir}"], "holds files that no compactlm command"),
    (["train", "nano", "workdir={a_file}/sub"], "is a file, not a directory"),
    (["quantize", "{run}", "workdir={a_file}"], "is a file, not a directory"),
    (["merge", "{run}", "workdir={a_file}/m"], "is a file, not a directory"),
    # unwritable: a real write probe (permission bits say nothing to root; /proc refuses all)
    (["train", "nano", "workdir=/proc/compactlm/run"], "is not writable (it would be created in"),
    (["finetune", "{run}", "workdir=/proc/compactlm/f"], "is not writable"),
    (["distill", "{run}", "workdir=/proc/compactlm/d"], "is not writable"),
    (["quantize", "{run}", "workdir=/proc/compactlm/q"], "is not writable"),
    (["prune", "{run}", "workdir=/proc/compactlm/p"], "is not writable"),
    (["merge", "{run}", "workdir=/proc/compactlm/m"], "is not writable"),
    (["export", "{run}", "workdir=/proc/compactlm/e"], "is not writable"),
    (["import", "{hf}", "workdir=/proc/compactlm/i"], "is not writable"),
    # --- fail fast: what the config can tell, before any weights load ----------------------
    (["quantize", "{run}", "group_size=128", "workdir={tmp}/q"], "valid for this model: 32, 64, 0"),
    (["prune", "{run}", "quantize.group_size=128", "workdir={tmp}/p"], "does not divide K=64"),
    (["distill", "{run}", "distill.baseline=/no/such", "workdir={tmp}/d"], "config.json not f"),
    (
        [
            "quantize",
            "{run}",
            "method=gptq",
            "group_size=32",
            "calib.sequences=100000",
            "workdir={tmp}/q",
        ],
        "times over; valid: 1 to",
    ),
    (["info", "{run}", "model.d_model=32"], "overrides ['model.d_model=32'] would be ignored"),
    # --- --dry-run makes the same checks ---------------------------------------------------
    (["quantize", "{run}", "group_size=48", "workdir={tmp}/q", "--dry-run"], "is not supported"),
    (["prune", "{run}", "workdir={run}", "--dry-run"], "`prune` writes only into a new direc"),
    (["finetune", "{run}", "adapter.rank=0", "workdir={tmp}/f", "--dry-run"], "rank"),
    (["distill", "{run}", "distill.loss=kl2", "workdir={tmp}/d", "--dry-run"], "choose one of"),
    (["recipe", "stages=compile", "--dry-run"], "unknown stages ['compile']; valid: "),
    # --- generate: chat templates and prompt files (issue 18) ------------------------------
    (["generate", "{run}", "chat=true"], "chat=true needs a chat template and"),
    (["generate", "{run}", "chat=maybe"], "chat='maybe' is not a bool; use true or false"),
    (["generate", "{run}", "prompt_file=/no/such/p.txt"], "p.txt': no such file; valid: a non-em"),
    (["generate", "{run}", "prompt_file={empty_dir}"], "is a directory; valid: a non-empty UTF-8"),
    (["generate", "{run}", "prompt_file={empty_file}"], "is empty; valid: a non-empty UTF-8 text"),
    (["generate", "{run}", "prompt_file={hf}/model.safetensors"], "is not UTF-8 text (byte 0x"),
    (
        ["generate", "{run}", "prompt=x", "prompt_file={a_file}"],
        "prompt= and prompt_file= are both given; valid: one of them (prompt='text' or prompt_f",
    ),
]


_digest = digests


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
    # HF directories whose config.json asks for what no family computes (issue 18).
    hf_cfg = json.loads((hf / "config.json").read_text())
    hf_edits = {
        "yarn_hf": {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}},
        "sliding_qwen2_hf": {
            "model_type": "qwen2",
            "architectures": ["Qwen2ForCausalLM"],
            "use_sliding_window": True,
            "sliding_window": 64,
        },
        "moe_hf": {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "num_experts": 8},
    }
    for name, changes in hf_edits.items():
        shutil.copytree(hf, root / name)
        (root / name / "config.json").write_text(json.dumps({**hf_cfg, **changes}))
    # Run directories whose config.json was edited by hand (the config is read before anything
    # else, so nothing but config.json is needed).
    saved = json.loads((run / "config.json").read_text())
    edits = {
        "cfg_unknown_key": ("model", "dmodel", 64),
        "cfg_wrong_type": ("model", "d_model", "64"),
        "cfg_bad_literal": ("model", "remat", "all"),
        "cfg_bad_value": ("data", "val_fraction", 0.9),
        "cfg_seq_len": ("train", "seq_len", 256),
    }
    texts = {"cfg_empty": "", "cfg_not_json": '{"model": {', "cfg_array": "[1, 2]"}
    for name, (section, key, value) in edits.items():
        texts[name] = json.dumps({**saved, section: {**saved[section], key: value}})
    for name, text in texts.items():
        (root / name).mkdir()
        (root / name / "config.json").write_text(text)
    (root / "bad_report").mkdir()
    shutil.copy(run / "config.json", root / "bad_report" / "config.json")
    (root / "bad_report" / "compression.json").write_text('{"sourc": "run"}')
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
        **{name: root / name for name in hf_edits},
        **{name: root / name for name in [*texts, "bad_report"]},
    }
    yield root, {k: str(v) for k, v in names.items()}
    mp.undo()


def test_the_table_covers_every_command():
    from compactlm.cli import COMMANDS

    assert len(CASES) >= 150  # issue 17: the table grows, it never shrinks
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
    after = _digest(root)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"previously saved files were modified: {changed}"
    json.dumps(args)  # the case is plain data (reproducible from its id)
