"""The CLI's commands as importable functions: train, distill, evaluate, generate, info, bench,
export, import."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import typing
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from compactlm import interrupt
from compactlm.config import ConfigError, apply_overrides, make_config
from compactlm.data import DataError
from compactlm.experiments.sweep import SweepError
from compactlm.interop.hf import InteropError
from compactlm.train.checkpoint import CheckpointError
from compactlm.train.loop import TrainingDiverged

# Exceptions that are the user's input, reported as one line with exit code 2 (no traceback).
USER_ERRORS = (
    ConfigError,
    DataError,
    CheckpointError,
    TrainingDiverged,
    FileNotFoundError,
    FileExistsError,  # workdir=PATH names a file
    NotADirectoryError,
    SweepError,
    InteropError,
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SampleConfig:
    """Options of `compactlm generate` (and the sample printed after `train`)."""

    # Text the sample continues. (The sample printed after `train` starts from the first line
    # of a validation document of the run's own data instead.) An imported checkpoint's
    # tokenizer adds what transformers' `tokenizer(prompt)` adds (Llama 3, Gemma: a BOS).
    prompt: str = "def "
    # Tokens to sample after the prompt. None: 200, or fewer where prompt + sample would pass the
    # model's context (nano: 128); an explicit number past the context is an error.
    max_new_tokens: int | None = None
    temperature: float = 0.8  # softmax temperature; 0 = greedy
    top_k: int = 50  # keep the k most likely tokens (0 = off)
    top_p: float = 0.95  # nucleus: smallest set with this much probability (1 = off)
    seed: int = 0  # sampling RNG seed
    # Token healing (data/tokenizer.py::heal_prompt): the prompt's last token is re-chosen by the
    # model among the ids that start with its text, so "def " under BPE continues like "def f",
    # not like a rare lone " " token. No effect on byte-level ids, nor with chat=true (a chat
    # prompt ends at the template's turn boundary, not mid-word).
    heal: bool = True
    # A file whose UTF-8 text is the prompt, exactly (newlines included), instead of prompt=.
    prompt_file: str = ""
    # The prompt as one user message through the checkpoint's chat template (tokenizer_config.json
    # or chat_template.jinja, rendered as transformers' apply_chat_template with
    # add_generation_prompt=True): the model writes the assistant's reply. Imported runs only.
    chat: bool = False

    def __post_init__(self) -> None:
        if not self.prompt:  # zero ids: the prefill has nothing to condition the first token on
            raise ValueError("the prompt is empty; give the text to continue, e.g. prompt='def '")
        too_few = self.max_new_tokens is not None and self.max_new_tokens < 1
        if too_few or self.temperature < 0 or self.top_k < 0:
            raise ValueError("need max_new_tokens >= 1, temperature >= 0 and top_k >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")

    def read_prompt_file(self) -> str:
        """prompt_file's text, exactly: bytes decoded as UTF-8, no newline translation."""
        path, valid = self.prompt_file, "valid: a non-empty UTF-8 text file, or prompt='...'"
        try:
            raw = Path(path).read_bytes()
        except FileNotFoundError:
            raise ConfigError(f"prompt_file={path!r}: no such file; {valid}") from None
        except IsADirectoryError:
            raise ConfigError(f"prompt_file={path!r} is a directory; {valid}") from None
        except OSError as e:
            raise ConfigError(
                f"prompt_file={path!r} cannot be read ({e.strerror}); {valid}"
            ) from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(
                f"prompt_file={path!r} is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset "
                f"{e.start}); {valid}"
            ) from None
        if not text:
            raise ConfigError(f"prompt_file={path!r} is empty; {valid}")
        return text


def _print_kv(title: str, rows: dict) -> None:
    print(title)
    for key, value in rows.items():
        print(f"  {key:<28} {value}")


def validation_prompt(data, *, max_bytes: int = 64) -> tuple[str, str]:
    """(prompt, document id): the first line of the first validation document whose first line
    is ordinary text (printable, with a letter or digit), cut to max_bytes at a word boundary.

    A prefix of the document, so the sample after `train` continues text like the run's own
    (prose, JSONL records, code) rather than a fixed "def ". Documents are read off the token
    stream (<eos> doc <eos> doc ... <eos>, data/dataset.py). Fallbacks: the first non-empty
    document's start, then SampleConfig's prompt.
    """
    tok = data.tokenizer
    tokens = data.val_tokens
    bounds = np.flatnonzero(np.asarray(tokens) == tok.eos_id)
    ids = data.split.get("val_ids") or []
    fallback = None
    for i, (start, end) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        # Every token is at least a byte: max_bytes + 4 tokens decode the first max_bytes bytes
        # whole (a character cut at the end is one past them).
        text = tok.decode([int(t) for t in tokens[start + 1 : min(end, start + 5 + max_bytes)]])
        if not text:
            continue
        name = ids[i] if i < len(ids) else f"#{i}"
        line = _cut_utf8(text.splitlines()[0] if text.splitlines() else "", max_bytes)
        if line.isprintable() and "\ufffd" not in line and any(c.isalnum() for c in line):
            return line, name
        fallback = fallback or (_cut_utf8(text, max_bytes, words=False), name)
    return fallback or (SampleConfig().prompt, "none")


def _cut_utf8(text: str, max_bytes: int, *, words: bool = True) -> str:
    """The longest prefix of text within max_bytes of UTF-8, ending at a word when words and the
    cut falls inside the text (a prompt that ends mid-word asks for the rest of that word)."""
    raw = text.encode("utf-8")
    if len(raw) <= max_bytes:
        return text
    cut = raw[:max_bytes].decode("utf-8", errors="ignore")
    if words and " " in cut.strip():
        cut = cut.rsplit(" ", 1)[0].rstrip()
    return cut


def _sample(trainer, sample: SampleConfig) -> str:
    """The prompt and its sampled continuation, as text (chat=true: the rendered chat and the
    reply, which ends at any of the checkpoint's stop ids)."""
    from compactlm.data.tokenizer import heal_prompt, prompt_tokens, stop_ids
    from compactlm.models.generate import generate as generate_tokens

    tok = trainer.data.tokenizer
    chat_text = None
    if sample.chat:
        from compactlm.interop.hf_tokenizer import render_chat

        if tok.kind != "hf" or not tok.chat_template:
            raise ConfigError(
                f"chat=true needs a chat template and {trainer.workdir} has none (its tokenizer "
                f"is data.tokenizer={tok.kind}; runs imported from a Hugging Face checkpoint "
                "with a chat_template have one); valid: chat=false"
            )
        chat_text = render_chat(
            tok.chat_template,
            [{"role": "user", "content": sample.prompt}],
            special_tokens=tok.special_tokens,
            add_generation_prompt=True,
        )
        # No specials added: the template wrote the ones it wants (transformers'
        # apply_chat_template(tokenize=True) tokenizes its text the same way).
        prompt_ids, first_allowed = tok.encode(chat_text), None
        if not len(prompt_ids):
            raise ConfigError(f"the chat template of {trainer.workdir} rendered an empty prompt")
    elif sample.heal:
        prompt_ids, first_allowed = heal_prompt(tok, sample.prompt)
    else:
        prompt_ids, first_allowed = prompt_tokens(tok, sample.prompt)[0], None
    context = trainer.cfg.model.max_seq_len
    n_new = sample.max_new_tokens or max(min(200, context - len(prompt_ids)), 1)
    if len(prompt_ids) + n_new > context:
        raise ConfigError(
            f"the prompt is {len(prompt_ids)} tokens; with max_new_tokens={n_new} that is "
            f"{len(prompt_ids) + n_new} positions, more than the model's context "
            f"(model.max_seq_len={context}); shorten the prompt or lower max_new_tokens"
        )
    model = trainer.program.model(trainer.state)
    stops = stop_ids(tok)
    out = generate_tokens(
        model,
        prompt_ids,
        max_new_tokens=n_new,
        temperature=sample.temperature,
        top_k=sample.top_k,
        top_p=sample.top_p,
        seed=sample.seed,
        eos_id=stops,
        vocab_limit=tok.vocab_size,
        first_allowed=first_allowed,
    )
    new = [int(t) for t in out[0, len(prompt_ids) :]]
    ended = [i for i, t in enumerate(new) if t in stops]
    new = new[: ended[0]] if ended else new  # the model ended the document (or its turn)
    # model.vocab_size is the tokenizer's padded to a multiple of 64; the padding ids are never
    # targets, but an undertrained model can still sample them: they decode to nothing. The
    # prompt's ids and the new ones decode together (a healed token completes the prompt); a
    # chat shows its rendered text, specials and all, then the reply.
    new = [t for t in new if t < tok.vocab_size]
    if chat_text is not None:
        return chat_text + tok.decode(new)
    return tok.decode([*map(int, prompt_ids), *new])


def _baselines_in_background(trainer) -> Callable[[], dict]:
    """Start the compressor baselines (the conditional xz of a 10 MB split takes ~10 s of one
    core, once per split) in a daemon thread that overlaps compilation; returns a waiter.
    lzma and bz2 release the GIL. Interrupted runs exit without waiting (the cache write is
    atomic)."""
    import threading

    from compactlm.evaluation.baselines import cached_baselines

    data, out = trainer.data, {}

    def work() -> None:
        try:
            out["result"] = cached_baselines(trainer.cfg.data, data.split, data.val_text)
        except BaseException as e:  # re-raised in the caller's thread
            out["error"] = e

    thread = threading.Thread(target=work, name="compactlm-baselines", daemon=True)
    thread.start()

    def wait() -> dict:
        thread.join()
        if "error" in out:
            raise out["error"]
        return out["result"]

    return wait


def _report_eval(trainer, label: str, baselines: Callable[[], dict] | None = None) -> dict:
    from compactlm.evaluation.baselines import cached_baselines

    ev = trainer.evaluate(max_tokens=0)
    data = trainer.data
    if baselines is not None:
        base = baselines()
    else:
        base = cached_baselines(trainer.cfg.data, data.split, data.val_text)
    _print_kv(
        f"{label} ({trainer.cfg.data.corpus}, {int(ev['tokens']):,} tokens, "
        f"{int(base['bytes']):,} bytes)",
        {
            "loss (nats/token)": f"{ev['loss']:.4f}",
            "perplexity": f"{ev['ppl']:.3f}",
            "bits per byte (model)": f"{ev['bpb']:.4f}",
            "bits per byte (gzip -9)": f"{base['gzip']:.4f}",
            "bits per byte (xz -9)": f"{base['xz']:.4f}",
            "bits per byte (bzip2 -9)": f"{base['bz2']:.4f}",
            # Not a standalone compressor: xz primed with the text the model trained on.
            "bits per byte (xz -9e|train)": f"{base['xz_given_train']:.4f}  "
            "(xz -9e given the training split: |xz(train+val)| - |xz(train)|)",
        },
    )
    return {**ev, **{f"baseline/{k}": v for k, v in base.items()}}


def train(
    preset: str, overrides: Sequence[str], *, workdir: str | None = None, dry_run: bool = False
) -> int:
    """Train (or resume) a run; then print the validation bpb beside gzip/xz and a sample."""
    from compactlm.config import to_json
    from compactlm.models.footprint import count_params
    from compactlm.train.loop import Trainer
    from compactlm.train.workdir import check_workdir, claim_workdir

    cfg = make_config(preset, overrides)
    workdir = workdir or f"runs/{preset}"
    check_workdir(workdir, "train")
    if dry_run:
        from compactlm.data import load_corpus
        from compactlm.train.loop import configured_vocab

        d = cfg.data  # the corpus must exist and hold text: a dry run that passes, trains
        load_corpus(d.corpus, glob=d.glob, jsonl_field=d.jsonl_field, max_corpus_bytes=1 << 16)
        cfg = configured_vocab(cfg)
        print(to_json(cfg))
        counts = count_params(cfg.model)
        print(
            f"parameters: {counts['total']:,} (embedding {counts['embedding']:,}, "
            f"non-embedding {counts['non_embedding']:,}); workdir: {workdir}"
        )
        return 0
    from compactlm.allocator import loaded

    print(f"train {preset} -> {workdir} (allocator: {loaded()[0]})", file=sys.stderr, flush=True)
    claim_workdir(workdir, "train")
    trainer = Trainer(cfg, workdir)
    baselines = _baselines_in_background(trainer)
    trainer.restore_or_init()
    summary = trainer.train()
    if summary["status"] != "done":  # a signal: checkpoint saved, exit 130 / 143 (cli.main)
        raise interrupt.Interrupted(summary["signal"], summary["detail"])
    results = _report_eval(trainer, f"validation after step {summary['step']}", baselines)
    (Path(workdir) / "eval.json").write_text(json.dumps(results, indent=2) + "\n")
    # A quarter of the context at most (a token is at least a byte): the rest is the sample.
    prompt, doc = validation_prompt(trainer.data, max_bytes=min(64, cfg.model.max_seq_len // 4))
    sample = SampleConfig(prompt=prompt)
    print(
        f"\nsample (prompt {sample.prompt!r}: the start of validation document {doc!r}, "
        f"temperature {sample.temperature}):"
    )
    print(_sample(trainer, sample))
    return 0


def distill(
    teacher_dir: str,
    preset: str,
    overrides: Sequence[str],
    *,
    workdir: str | None = None,
    dry_run: bool = False,
) -> int:
    """Distill the teacher run (or a stored cache of its logits, `distill-cache`) into a
    `preset` student (or resume); print student vs teacher."""
    from compactlm.train.distill_cache import is_cache
    from compactlm.train.distill_run import run as run_distill

    if is_cache(teacher_dir):
        from compactlm.train.distill_cache import run as run_distill

    workdir = workdir or f"runs/{preset}-distilled"
    if dry_run:
        from compactlm import dry_run as plan
        from compactlm.train.workdir import check_workdir

        check_workdir(workdir, "distill")
        plan.distill(teacher_dir, preset, overrides, workdir)
        return 0
    summary = run_distill(teacher_dir, preset, overrides, workdir)
    if summary["status"] != "done":  # a signal: checkpoint saved, exit 130 / 143 (cli.main)
        raise interrupt.Interrupted(summary["signal"], summary["detail"])
    student, rows = summary["student"], summary["report"]
    s_len = student.cfg.train.seq_len
    context = f"every row scored at the student's context, {s_len} tokens"
    if summary["teacher"] is None:  # stored logits: the teacher's model was never loaded
        context += f"; teacher logits from the cache {teacher_dir}"
    elif summary["teacher"].cfg.train.seq_len != s_len:
        context += f"; the teacher trained at {summary['teacher'].cfg.train.seq_len}"
    print(
        f"\ndistillation report after step {summary['step']} (validation: "
        f"{student.cfg.data.corpus}, {int(rows['student']['tokens']):,} tokens; {context})"
    )
    print(f"  {'':<24}{'params':>10}{'loss':>9}{'bpb':>8}{'teacher NLL of samples':>25}")
    labels = {"student": "student (distilled)", "baseline": "student (hard labels)"}
    for key, row in rows.items():
        name = labels.get(key, key)
        sampled = row.get("sample_teacher_nll")
        sampled = f"{sampled:.4f}" if sampled is not None else "-"
        print(f"  {name:<24}{row['params']:>10,}{row['loss']:>9.4f}{row['bpb']:>8.4f}{sampled:>25}")
    (Path(workdir) / "eval.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


def distill_cache(teacher_dir: str, overrides: Sequence[str], *, workdir: str | None) -> int:
    """Run the teacher once over the windows of the stated seeds and steps and store its top-k
    logits (train/distill_cache.py); a rerun continues an interrupted one."""
    from compactlm.train.distill_cache import build

    if not workdir:
        raise ConfigError("distill-cache needs workdir=CACHE (the directory to write it to)")
    meta = build(teacher_dir, overrides, workdir)
    print(
        f"stored: {workdir} (teacher {meta['teacher']} step {meta['teacher_step']}, top "
        f"{meta['top_k']}); use it as `compactlm distill {workdir} [preset] train.seed=S "
        f"train.steps<={meta['steps']} train.batch_size={meta['batch_size']} "
        f"train.seq_len={meta['seq_len']} distill.*=...`"
    )
    return 0


def _load_run(run_dir: str, overrides: Sequence[str]):
    from compactlm.train.loop import load_run

    return load_run(run_dir, overrides)


def evaluate(run_dir: str, overrides: Sequence[str]) -> int:
    """Validation loss / bpb beside compressors; with tasks=: lm-eval's benchmarks instead
    (evaluation/lm_eval_run.py: lm-eval is imported only then)."""
    if any(a.split("=", 1)[0].strip() == "tasks" for a in overrides):
        from compactlm.evaluation.lm_eval_run import evaluate_tasks

        evaluate_tasks(run_dir, overrides)
        return 0
    trainer = _load_run(run_dir, overrides)
    _report_eval(trainer, f"validation at step {int(trainer.state.step)}")
    return 0


def generate(run_dir: str, args: Sequence[str]) -> int:
    sample = apply_overrides(SampleConfig(), args)
    if sample.prompt_file:  # read before the run loads: a wrong path fails fast
        if any(a.split("=", 1)[0].strip() == "prompt" for a in args):
            raise ConfigError(
                "prompt= and prompt_file= are both given; valid: one of them (prompt='text' or "
                "prompt_file=PATH)"
            )
        sample = dataclasses.replace(sample, prompt=sample.read_prompt_file())
    trainer = _load_run(run_dir, [])
    print(_sample(trainer, sample))
    return 0


def info(preset: str | None, overrides: Sequence[str]) -> int:
    from compactlm.allocator import describe
    from compactlm.config import PRESETS
    from compactlm.experiments.report import info_table

    if preset is not None and (Path(preset) / "config.json").is_file():
        from compactlm.compress.export import run_info

        if overrides:
            raise ConfigError(
                f"info {preset} describes the run as saved; overrides {list(overrides)} would be "
                "ignored (they apply to a preset: compactlm info PRESET key=value ...)"
            )
        print(run_info(preset))
        return 0
    names = [preset] if preset else list(PRESETS)
    configs = {name: make_config(name, overrides if preset else ()) for name in names}
    print(info_table(configs))
    print(f"\nallocator: {describe()}")
    return 0


def bench_train(preset: str, overrides: Sequence[str]) -> int:
    from compactlm.benchmarks.bench_train import bench_train as run_bench

    run_bench(make_config(preset, overrides))
    return 0


def bench_decode(run_dir: str, overrides: Sequence[str]) -> int:
    """Generation tokens/s of a compressed run vs the dense run it was made from."""
    from compactlm.benchmarks.bench_decode import BenchDecodeConfig
    from compactlm.benchmarks.bench_decode import bench_decode as run_bench

    run_bench(run_dir, apply_overrides(BenchDecodeConfig(), overrides))
    return 0


def bench_kernels(args: Sequence[str]) -> int:
    from compactlm.benchmarks.bench_kernels import main

    return main(args)


def sweep(name: str, args: Sequence[str], *, dry_run: bool = False) -> int:
    """Run (or print, with dry_run) every row × seed of configs/sweeps/NAME.py."""
    from compactlm.experiments import sweep as sweeps

    options = apply_overrides(sweeps.SweepOptions(), args)
    sweep_name, spec = sweeps.load(name)
    if dry_run:
        print("\n".join(sweeps.dry_run_lines(sweep_name, spec, options)))
        return 0
    counts = sweeps.run_sweep(sweep_name, spec, options)
    return 1 if counts["failed"] else 0


def report(name: str, args: Sequence[str]) -> int:
    """The sweep's markdown table (mean ± std over seeds, paper beside) and PNG plots."""
    from compactlm.experiments import sweep as sweeps
    from compactlm.experiments.report import ReportOptions, write_report

    options = apply_overrides(ReportOptions(), args)
    sweep_name, spec = sweeps.load(name)
    print(write_report(sweep_name, spec, options))


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExportConfig:
    """Options of `compactlm export RUN_DIR format=hf workdir=OUT` (format=gguf and
    format=compressed-tensors take their own keys: interop/gguf.py, compressed_tensors.py)."""

    # Target format. "hf": a Hugging Face directory (config.json, model.safetensors,
    # tokenizer.json) that transformers loads with the family's own class; "gguf": model.gguf for
    # llama.cpp (type=auto keeps int4 codes as Q4_0 / Q4_1); "compressed-tensors": llm-compressor's
    # pack-quantized int4 (and 2:4) for vLLM / transformers.
    format: typing.Literal["hf", "gguf", "compressed-tensors"] = "hf"


def export(run_dir: str, overrides: Sequence[str], *, workdir: str | None) -> int:
    """Write the run's latest checkpoint in another ecosystem's format."""
    from compactlm.interop.hf import export_hf
    from compactlm.train.workdir import check_workdir

    fmt = next((o.split("=", 1)[1] for o in overrides if o.startswith("format=")), "hf")
    if fmt == "compressed-tensors":
        from compactlm.interop import compressed_tensors as ct

        opts = apply_overrides(ct.CTExportConfig(), overrides)
    elif fmt != "hf":  # format=gguf, or a format that GGUFExportConfig's error lists as invalid
        from compactlm.interop import gguf

        opts = apply_overrides(gguf.GGUFExportConfig(), overrides)
    else:
        opts = apply_overrides(ExportConfig(), overrides)
    if not workdir:
        raise ConfigError("export needs workdir=OUT (the directory to write)")
    check_workdir(workdir, "export")  # written whole in a temporary sibling, then renamed
    if opts.format == "compressed-tensors":
        with interrupt.writing(workdir):  # a signal: no OUT (a complete temp dir is renamed)
            summary = ct.export_compressed_tensors(run_dir, workdir, opts)
        merged = " (adapters merged into the base first)" if summary["merged"] else ""
        print(
            f"exported step {summary['step']} of {run_dir}{merged} as format=compressed-tensors "
            f"({summary['weight_format']}) to {summary['out']}: {summary['tensors']} tensors, "
            f"{summary['bytes']:,} bytes (config.json, model.safetensors, tokenizer.json)"
        )
        print(ct.report(summary))
        return 0
    if opts.format == "gguf":
        with interrupt.writing(workdir):  # a signal: no OUT (a complete temp dir is renamed)
            summary = gguf.export_gguf(run_dir, workdir, opts)
        merged = " (adapters merged into the base first)" if summary["merged"] else ""
        print(
            f"exported step {summary['step']} of {run_dir}{merged} as format=gguf "
            f"type={opts.type} (llama.cpp architecture {summary['arch']}) to {summary['out']}: "
            f"{len(summary['written'])} tensors, {summary['bytes']:,} bytes"
        )
        print("\n".join(gguf.report(summary)))
        return 0
    with interrupt.writing(workdir):  # a signal: no OUT (export_hf renames a complete temp dir)
        summary = export_hf(run_dir, workdir)
    print(
        f"exported step {summary['step']} of {run_dir} as format={opts.format} to {workdir}: "
        f"{summary['tensors']} tensors, {summary['parameters']:,} parameters "
        "(config.json, model.safetensors, tokenizer.json)"
    )
    return 0


def import_(source: str, overrides: Sequence[str], *, workdir: str | None) -> int:
    """Turn a Hugging Face Llama directory into a compactlm run directory (step 0)."""
    from compactlm.interop.hf import import_hf
    from compactlm.train.workdir import check_workdir

    if not workdir:
        raise ConfigError("import needs workdir=RUN_DIR (the run directory to create)")
    check_workdir(workdir, "import")  # written whole in a temporary sibling, then renamed
    summary = import_hf(source, workdir, overrides)
    m = summary["config"].model
    vocab = f"{m.vocab_valid} (padded to {m.vocab_size})" if m.vocab_valid else m.vocab_size
    print(
        f"imported {source} into {workdir}: {summary['parameters']:,} parameters "
        f"(d_model {m.d_model}, {m.n_layers} layers, {m.n_heads}/{m.n_kv_heads} heads, vocab "
        f"{vocab}, tokenizer {summary['config'].data.tokenizer}); eval, generate and "
        "finetune take it as RUN_DIR"
    )
    return 0


def pick(args: Sequence[str]) -> int:
    """Presets × storage formats under a memory / latency budget: the Pareto front and a pick."""
    from compactlm.experiments.pick import PickConfig
    from compactlm.experiments.pick import pick as run_pick

    print(run_pick(apply_overrides(PickConfig(), args)))
    return 0


def _evaluate_base_on(trainer, base_dir: str) -> dict:
    """The base model's validation metrics on the fine-tuning run's (new) validation split."""
    from compactlm.evaluation.perplexity import evaluate_tokens
    from compactlm.train.program import program_and_state
    from compactlm.train.run_dir import read_config

    base_cfg = read_config(base_dir)
    program, state = program_and_state(base_cfg, base_dir)
    t = trainer.cfg.train
    return evaluate_tokens(
        program,
        state,
        trainer.data.val_tokens,
        byte_lengths=trainer.data.tokenizer.token_byte_lengths(),
        batch_size=t.batch_size // t.grad_accum,
        seq_len=t.seq_len,
    )


def _startup_line(trainer) -> str:
    from compactlm.train.finetune import trainable_summary

    s = trainable_summary(trainer.program.model(trainer.state), trainer.program.trainable)
    line = (
        f"trainable parameters: {s['trainable_params']:,} ({_mib(s['trainable_bytes'])} + "
        f"optimizer state); frozen: {_mib(s['frozen_bytes'])}"
    )
    if "packed_bits_per_param" in s:
        line += (
            f"; {trainer.cfg.model.weight_format} base at "
            f"{s['packed_bits_per_param']:.3f} bits/param"
        )
    return line


def _mib(n: float) -> str:
    return f"{n / 2**20:.2f} MiB"


def finetune(
    base_dir: str, overrides: Sequence[str], *, workdir: str | None = None, dry_run: bool = False
) -> int:
    """Adapt a trained run (LoRA / DoRA / QLoRA / full) to `data.*`; print base vs fine-tuned."""
    from compactlm.train.finetune import finetune_config, schedule_line
    from compactlm.train.loop import Trainer
    from compactlm.train.run_dir import prepare_workdir
    from compactlm.train.workdir import check_workdir, claim_workdir

    workdir = workdir or f"runs/finetune-{Path(base_dir).name}"
    check_workdir(workdir, "finetune")  # the base's own directory, or any other run, is refused
    if dry_run:
        from compactlm import dry_run as plan

        plan.finetune(base_dir, overrides, workdir)
        return 0
    cfg = finetune_config(base_dir, overrides, workdir=workdir)
    claim_workdir(workdir, "finetune")
    prepare_workdir(base_dir, workdir)
    trainer = Trainer(cfg, workdir)
    trainer.restore_or_init()
    print(_startup_line(trainer))
    print(schedule_line(trainer.cfg))
    summary = trainer.train()
    if summary["status"] != "done":  # a signal: checkpoint saved, exit 130 / 143 (cli.main)
        raise interrupt.Interrupted(summary["signal"], summary["detail"])
    results = _report_eval(trainer, f"fine-tuned, validation after step {summary['step']}")
    base = _evaluate_base_on(trainer, base_dir)
    _print_kv(
        f"base {base_dir} on the same validation split",
        {"loss (nats/token)": f"{base['loss']:.4f}", "bits per byte": f"{base['bpb']:.4f}"},
    )
    results.update({f"base/{k}": v for k, v in base.items()})
    results.update(_run_costs(trainer))
    (Path(workdir) / "eval.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


def _run_costs(trainer) -> dict:
    """Trainable parameters, latest checkpoint bytes, mean logged tokens/s, peak RSS (MiB)."""
    import resource

    from compactlm.train.finetune import trainable_summary
    from compactlm.train.loop import load_metrics
    from compactlm.train.run_dir import latest_checkpoint_dir

    summary = trainable_summary(trainer.program.model(trainer.state), trainer.program.trainable)
    ckpt_dir = latest_checkpoint_dir(trainer.workdir)
    tps = [m["tokens/s"] for m in load_metrics(trainer.workdir) if "tokens/s" in m][1:]
    return {
        "trainable_params": summary["trainable_params"],
        "checkpoint_bytes": sum(p.stat().st_size for p in ckpt_dir.rglob("*") if p.is_file()),
        "tokens_per_s": sum(tps) / len(tps) if tps else float("nan"),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


@dataclasses.dataclass(frozen=True, kw_only=True)
class MergeConfig:
    """Options of `compactlm merge`."""

    # A packed (nf4 / int4 / fp4) base cannot absorb an adapter: merging means dequantize + merge
    # (+ requantize, `compactlm quantize`). true: write the dequantized merged model in dense f32.
    dequantize: bool = False


def merge(run_dir: str, overrides: Sequence[str], *, workdir: str | None = None) -> int:
    """Fold a run's adapters into its base: a dense run directory eval / generate / export take."""
    from compactlm.train import checkpoint as ckpt
    from compactlm.train.finetune import merged_config, merged_model
    from compactlm.train.loop import Trainer
    from compactlm.train.run_dir import read_config
    from compactlm.train.step import state_from_model
    from compactlm.train.workdir import check_workdir, claim_workdir

    opts = apply_overrides(MergeConfig(), overrides)
    if workdir is None:
        raise ConfigError("merge needs workdir=DIR for the merged run")
    check_workdir(workdir, "merge")  # the source itself, or any other run, is refused here
    fmt = read_config(run_dir).model.weight_format  # refused before loading any weights
    if fmt != "dense" and not opts.dequantize:
        raise ConfigError(
            f"{run_dir} has a {fmt} base: an adapter cannot be merged into packed codes; "
            "pass dequantize=true for a dense merged model (then `compactlm quantize` it again)"
        )
    src = _load_run(run_dir, [])
    claim_workdir(workdir, "merge")
    from compactlm.data.tokenizer import TOKENIZER_FILE

    if (Path(run_dir) / TOKENIZER_FILE).is_file():  # the source's own tokenizer, exactly (an
        # imported run's "hf" one cannot be made again from data: it was never trained)
        shutil.copy(Path(run_dir) / TOKENIZER_FILE, Path(workdir) / TOKENIZER_FILE)
    cfg = merged_config(src.cfg)
    out = Trainer(cfg, workdir)
    state = state_from_model(out.program, merged_model(src), seed=cfg.train.seed)
    out.state = state.replace(step=src.state.step)
    path = out.save(metrics={"merged_from": str(Path(run_dir).resolve())})
    assert ckpt.latest_step(out.manager) == int(src.state.step)
    print(f"merged {run_dir} (step {int(src.state.step)}) into {path}")
    return 0


def quantize(
    run_dir: str, overrides: Sequence[str], *, workdir: str | None, dry_run: bool = False
) -> int:
    """Post-training quantization of a run into a new run directory (compress/job.py)."""
    from compactlm.compress.job import quantize_run

    if dry_run:
        from compactlm import dry_run as plan

        plan.compress("quantize", run_dir, overrides, workdir)
        return 0

    with interrupt.writing(workdir):  # a signal stops it at the next block, OUT unwritten
        quantize_run(run_dir, overrides, workdir=workdir)
    return 0


def prune(
    run_dir: str, overrides: Sequence[str], *, workdir: str | None, dry_run: bool = False
) -> int:
    """Pruning (+ recovery, + quantization) of a run into a new run directory."""
    from compactlm.compress.job import prune_run

    if dry_run:
        from compactlm import dry_run as plan

        plan.compress("prune", run_dir, overrides, workdir)
        return 0

    with interrupt.writing(workdir):  # a signal stops it at the next block / recovery step
        prune_run(run_dir, overrides, workdir=workdir)
    return 0


def recipe(run_dir: str | None, args: Sequence[str], *, dry_run: bool = False) -> int:
    """Pretrain (or take RUN_DIR), compress, and print the table of stages."""
    from compactlm.experiments.recipe import RecipeConfig, run_recipe, table

    if dry_run:
        from compactlm import dry_run as plan

        plan.recipe(run_dir, args)
        return 0

    cfg = apply_overrides(RecipeConfig(), args)
    rows = run_recipe(run_dir, cfg)
    text = table(rows)
    print("\n" + text)
    out = Path(cfg.workdir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.md").write_text(text + "\n")
    return 1 if any(str(r["status"]).startswith("failed") for r in rows) else 0
