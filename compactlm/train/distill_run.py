"""`compactlm distill`: a frozen teacher run directory → a student run directory, resumable.

The student's run directory is an ordinary one (config.json is a plain Config, so `eval`,
`generate` and resume work on it); the teacher is not copied into it: `distill.json` records the
teacher's path, its content hash (train/run_dir.py::run_fingerprint) and the DistillConfig, and a
re-run refuses a changed teacher or changed `distill.*` settings. The student's `data` section
starts as the teacher's (one tokenizer, one vocabulary: checked by tokenizer fingerprint before
anything is written), then the command's own overrides apply. With
`distill.cross_tokenizer=uld|gold` the tokenizers may differ (train/distill_uld.py,
train/distill_gold.py): each batch then carries the teacher's re-tokenization of the student's
windows and their byte alignment.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from compactlm.data.tokenizer import TOKENIZER_FILE
from compactlm.train.distill import DistillConfig

DISTILL_FILE = "distill.json"
# End-of-run report: teacher NLL of student samples (the divergence table's second column).
SAMPLE_ROWS, SAMPLE_PROMPT, SAMPLE_NEW = 16, 32, 96


@dataclasses.dataclass(frozen=True, kw_only=True)
class DistillArgs:
    """The `distill.*` override namespace of the command (kept out of the student's Config, so
    its config.json stays loadable by every other command)."""

    distill: DistillConfig = dataclasses.field(default_factory=DistillConfig)


def split_overrides(overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """(distill.* overrides, everything else)."""
    ours = [o for o in overrides if o.split("=", 1)[0].strip().startswith("distill.")]
    return ours, [o for o in overrides if o not in ours]


def teacher_aux(teacher, dtype: str) -> tuple[nnx.GraphDef, nnx.State]:
    """The teacher as (graphdef, state) for the step; bfloat16 casts its weights and compute."""
    from compactlm.train.step import abstract_model

    graphdef, state = nnx.split(teacher.program.model(teacher.state))
    if dtype == "bfloat16":
        cfg = dataclasses.replace(
            teacher.cfg.model, compute_dtype="bfloat16", param_dtype="bfloat16"
        )
        graphdef = nnx.split(abstract_model(cfg))[0]
        state = jax.tree.map(
            lambda x: x.astype(jnp.bfloat16) if jnp.issubdtype(x.dtype, jnp.floating) else x,
            state,
        )
    return graphdef, state


def _tokenizer_desc(tok) -> str:
    return f"{tok.kind} tokenizer, vocab {tok.vocab_size}, sha256 {tok.fingerprint()[:12]}"


def check_student(cfg, dcfg: DistillConfig, teacher, workdir: Path) -> None:
    """Every check that can fail, before the student's run directory is touched."""
    from compactlm.config import ConfigError
    from compactlm.data import prepare_data
    from compactlm.train.distill_features import feature_pairs
    from compactlm.train.distill_init import check_compatible
    from compactlm.train.loop import resolve_vocab

    existing = workdir if (workdir / TOKENIZER_FILE).is_file() else None
    if existing is None and cfg.data.tokenizer == "hf":  # an import's: the teacher's own file
        existing = Path(teacher.workdir)
    tok = prepare_data(cfg.data, run_dir=existing).tokenizer
    t_tok = teacher.data.tokenizer
    cross = dcfg.cross_tokenizer != "none"
    if tok.fingerprint() != t_tok.fingerprint() and not cross:
        raise ConfigError(
            f"teacher and student tokenizers differ: teacher {_tokenizer_desc(t_tok)} "
            f"({teacher.workdir}), student {_tokenizer_desc(tok)}; distillation over one "
            "vocabulary needs one tokenizer: give the teacher's data.tokenizer settings, or "
            "distill.cross_tokenizer=uld (sorted-probability loss at byte-aligned positions) "
            "or distill.cross_tokenizer=gold (probabilities merged over byte-aligned token "
            "groups, identical tokens compared directly)"
        )
    student_model = resolve_vocab(cfg, tok.vocab_size).model
    if cross:
        from compactlm.train.distill_uld import teacher_length

        if teacher_length(tok, cfg.train.seq_len, teacher.cfg.model.max_seq_len) < 2:
            raise ConfigError(
                f"distill.cross_tokenizer={dcfg.cross_tokenizer}: the teacher's context is "
                "too short"
            )
    elif student_model.vocab_size != teacher.cfg.model.vocab_size:
        raise ConfigError(
            f"vocabulary mismatch: teacher model.vocab_size {teacher.cfg.model.vocab_size}, "
            f"student {student_model.vocab_size}"
        )
    try:
        dcfg.check_vocab(student_model.vocab_size)
        if dcfg.init_from_teacher:
            check_compatible(student_model, teacher.cfg.model)
        if dcfg.features != "none":
            feature_pairs(dcfg.feature_layers, student_model.n_layers, teacher.cfg.model.n_layers)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if dcfg.on_policy > 0 and dcfg.on_policy_prompt >= cfg.train.seq_len:
        raise ConfigError(
            f"distill.on_policy_prompt={dcfg.on_policy_prompt} leaves nothing to sample in "
            f"train.seq_len={cfg.train.seq_len} tokens; use a shorter prompt"
        )


def check_resume(workdir: Path, record: dict) -> None:
    from compactlm.config import ConfigError

    path = workdir / DISTILL_FILE
    if not path.exists():
        return
    saved = json.loads(path.read_text())
    if saved["teacher_fingerprint"] != record["teacher_fingerprint"]:
        raise ConfigError(
            f"{workdir} was distilled from a teacher with content hash "
            f"{saved['teacher_fingerprint'][:12]} ({saved['teacher']}); {record['teacher']} now "
            f"hashes to {record['teacher_fingerprint'][:12]}: use a new workdir"
        )
    changed = {
        k: (v, record["distill"].get(k))
        for k, v in saved["distill"].items()
        if record["distill"].get(k) != v
    }
    if changed:
        detail = "; ".join(f"distill.{k}: saved {a!r}, now {b!r}" for k, (a, b) in changed.items())
        raise ConfigError(f"{workdir} holds a distillation with other settings ({detail})")


def sample_teacher_nll(student, teacher_graphdef, teacher_state, val_tokens: np.ndarray) -> float:
    """Mean teacher NLL (nats/token) of continuations the student samples (temperature 1) from
    the first SAMPLE_PROMPT tokens of SAMPLE_ROWS validation windows: low = the student writes
    what the teacher finds likely (the mode-seeking view of quality)."""
    from compactlm.train.distill_step import sample_continuation

    S = SAMPLE_PROMPT + SAMPLE_NEW
    starts = np.linspace(0, len(val_tokens) - S - 1, SAMPLE_ROWS).astype(int)
    windows = jnp.asarray(np.stack([val_tokens[s : s + S] for s in starts]), jnp.int32)
    s_graphdef, s_state = nnx.split(student.program.model(student.state))

    @jax.jit
    def score(s_state, t_state, windows, rng):
        seq = sample_continuation(nnx.merge(s_graphdef, s_state), windows, SAMPLE_PROMPT, rng)
        logits = nnx.merge(teacher_graphdef, t_state)(seq[:, :-1]).astype(jnp.float32)
        nll = (
            jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, seq[:, 1:, None], -1)[..., 0]
        )
        return nll[:, SAMPLE_PROMPT - 1 :].mean()

    return float(score(s_state, teacher_state, windows, jax.random.key(0)))


def evaluate_on(trainer, program_owner, val_tokens) -> dict[str, float]:
    """`program_owner`'s model scored on `trainer`'s validation tokens (one split for all rows)."""
    from compactlm.evaluation.perplexity import evaluate_tokens

    t = trainer.cfg.train
    return evaluate_tokens(
        program_owner.program,
        program_owner.state,
        val_tokens,
        byte_lengths=trainer.data.tokenizer.token_byte_lengths(),
        batch_size=t.batch_size // t.grad_accum,
        seq_len=t.seq_len,
    )


def student_config(preset: str, overrides: Sequence[str], teacher_cfg) -> Any:
    """`preset` with the teacher's data section (one tokenizer), then `overrides`. An imported
    teacher's vocabulary is the student's too while the student keeps its tokenizer: its padding
    ids (model.vocab_valid) stay masked, so both softmaxes run over the same ids (a student of
    ours has vocab_valid 0 otherwise)."""
    from compactlm.config import apply_overrides, get_preset

    cfg = dataclasses.replace(get_preset(preset), data=teacher_cfg.data)
    t = teacher_cfg.model
    own = apply_overrides(cfg, overrides)
    # (a student on its own tokenizer, distill.cross_tokenizer, has its own vocabulary)
    if t.vocab_valid and teacher_cfg.data.tokenizer == "hf" and own.data == teacher_cfg.data:
        model = dataclasses.replace(cfg.model, vocab_size=t.vocab_size, vocab_valid=t.vocab_valid)
        return apply_overrides(dataclasses.replace(cfg, model=model), overrides)
    return own


def uld_trainer(teacher, teacher_len: int, *args, gold: bool = False, **kwargs):
    """A Trainer whose batches carry the teacher's re-tokenization of each window and the byte
    alignment beside the tokens (train/distill_uld.py: data contract), built on the host; with
    `gold`, the alignment groups instead (train/distill_gold.py: data contract)."""
    from compactlm.train.distill_gold import GroupAligner
    from compactlm.train.distill_uld import WindowAligner
    from compactlm.train.loop import Trainer
    from compactlm.train.mesh import shard_batch

    class UldTrainer(Trainer):
        def batch(self, step: int) -> jax.Array:
            t = self.cfg.train
            if getattr(self, "_aligner", None) is None:
                self._aligner = (GroupAligner if gold else WindowAligner)(
                    self.data.tokenizer, teacher.data.tokenizer, teacher_len
                )
            tokens = np.asarray(jax.device_get(super().batch(step)), np.int32)
            packed = self._aligner.batch(tokens.reshape(t.batch_size, t.seq_len + 1))
            packed = packed.reshape(t.grad_accum, t.batch_size // t.grad_accum, -1)
            return shard_batch(packed, self.program.accum_sharding)

    return UldTrainer(*args, **kwargs)


def run(
    teacher_dir: str, preset: str, overrides: Sequence[str], workdir: str | Path
) -> dict[str, Any]:
    """Distill (or resume); returns the summary with the end-of-run report rows."""
    from compactlm.config import apply_overrides
    from compactlm.models.footprint import count_params
    from compactlm.train.distill_features import feature_pairs, make_student_fn
    from compactlm.train.distill_init import init_from_teacher
    from compactlm.train.distill_step import make_objective
    from compactlm.train.loop import Trainer, load_run, resolve_vocab
    from compactlm.train.run_dir import run_fingerprint
    from compactlm.train.step import state_from_model
    from compactlm.train.workdir import check_workdir, claim_workdir

    workdir = Path(workdir)
    check_workdir(workdir, "distill")  # the teacher's own directory, or any other run: refused
    ours, rest = split_overrides(overrides)
    dcfg = apply_overrides(DistillArgs(), ours).distill
    if dcfg.baseline:  # read at the end of the run: a wrong path fails now, not after training
        from compactlm.train.run_dir import latest_checkpoint_dir, read_config

        read_config(dcfg.baseline)
        latest_checkpoint_dir(dcfg.baseline)
    teacher = load_run(teacher_dir)
    cfg = student_config(preset, rest, teacher.cfg)
    check_student(cfg, dcfg, teacher, workdir)
    record = {
        "teacher": str(Path(teacher_dir).resolve()),
        "teacher_fingerprint": run_fingerprint(teacher_dir),
        "teacher_step": int(teacher.state.step),
        "distill": dataclasses.asdict(dcfg),
    }
    check_resume(workdir, record)

    t_graphdef, t_state = teacher_aux(teacher, dcfg.teacher_dtype)
    pairs, model_fn = (), None
    if dcfg.features != "none":
        s_model, t_model = resolve_vocab(cfg, teacher.cfg.model.vocab_size).model, teacher.cfg.model
        pairs = feature_pairs(dcfg.feature_layers, s_model.n_layers, t_model.n_layers)
        model_fn = make_student_fn(s_model, t_model, len(pairs))
    objective_kw: dict[str, Any] = {}
    if dcfg.cross_tokenizer != "none":
        from compactlm.data import prepare_data
        from compactlm.train.distill_uld import first_bytes, teacher_length

        existing = workdir if (workdir / TOKENIZER_FILE).is_file() else None
        if existing is None and cfg.data.tokenizer == "hf":
            existing = Path(teacher_dir)
        s_tok = prepare_data(cfg.data, run_dir=existing).tokenizer
        teacher_len = teacher_length(s_tok, cfg.train.seq_len, teacher.cfg.model.max_seq_len)
        objective_kw = {
            "seq_len": cfg.train.seq_len,
            "teacher_len": teacher_len,
            "first_bytes": (first_bytes(s_tok), first_bytes(teacher.data.tokenizer)),
        }
        if dcfg.cross_tokenizer == "gold":
            from compactlm.train.distill_gold import vocabulary_map

            objective_kw["vocab_map"] = vocabulary_map(s_tok, teacher.data.tokenizer)
    claim_workdir(workdir, "distill")
    if cfg.data.tokenizer == "hf" and not (workdir / TOKENIZER_FILE).is_file():
        # An imported teacher's tokenizer is read from its run directory, never trained: the
        # student's run directory gets a copy (as `finetune` copies its base's).
        shutil.copy(Path(teacher_dir) / TOKENIZER_FILE, workdir / TOKENIZER_FILE)
    objective = make_objective(dcfg, t_graphdef, pairs, **objective_kw)
    if objective_kw:
        student = uld_trainer(
            teacher,
            objective_kw["teacher_len"],
            cfg,
            workdir,
            gold=dcfg.cross_tokenizer == "gold",
            objective=objective,
            aux=t_state,
        )
    else:
        student = Trainer(cfg, workdir, objective=objective, aux=t_state, model_fn=model_fn)
    student.progress_metrics = ("distill/divergence", "distill/agreement")
    if pairs:
        student.progress_metrics += ("distill/feature",)
    if jax.process_index() == 0:
        (workdir / DISTILL_FILE).write_text(json.dumps(record, indent=2) + "\n")
    state = student.restore_or_init()
    if int(state.step) == 0 and dcfg.init_from_teacher:
        _, t_params, _ = nnx.split(teacher.program.model(teacher.state), nnx.Param, ...)
        # (init_from_teacher needs equal widths, so there is no feature projection here)
        params = init_from_teacher(state.params, t_params, student.cfg.model, teacher.cfg.model)
        model = nnx.merge(student.program.graphdef, params, state.frozen)
        student.state = state_from_model(student.program, model, seed=student.cfg.train.seed)
    summary = student.train()
    summary["student"], summary["teacher"] = student, teacher
    if summary["status"] != "done":
        return summary

    val = student.data.val_tokens
    cross = dcfg.cross_tokenizer != "none"
    # Across tokenizers the teacher is scored on its own tokens of the validation text (bpb
    # compares; nats/token do not), and the teacher NLL of samples would need each sample
    # re-tokenized: not reported ("-").
    t_eval = evaluate_on(teacher, teacher, teacher.data.val_tokens) if cross else None
    rows = {
        "teacher": {
            **(t_eval or evaluate_on(student, teacher, val)),
            "params": count_params(teacher.cfg.model),
        },
        "student": {
            **evaluate_on(student, student, val),
            "params": count_params(student.cfg.model),
            "sample_teacher_nll": None
            if cross
            else sample_teacher_nll(student, t_graphdef, t_state, val),
        },
    }
    if dcfg.baseline:
        base = load_run(dcfg.baseline)
        rows["baseline"] = {
            **evaluate_on(student, base, val),
            "params": count_params(base.cfg.model),
            "sample_teacher_nll": None
            if cross
            else sample_teacher_nll(base, t_graphdef, t_state, val),
        }
    for row in rows.values():
        row["params"] = row["params"]["total"]
    summary["report"] = rows  # keys teacher / student / baseline (eval.json; sweeps read a/b)
    return summary
