"""Stored teacher logits: `compactlm distill-cache` runs the teacher once, `distill CACHE` trains.

The cache holds, for every training window a student will draw (`get_batch(seed, step)` for the
stated seeds, steps, batch_size and seq_len: the stream `compactlm distill` reads with those
train.* settings), the teacher's top-k at every position, so a sweep over divergences and seeds
pays for the teacher's forward pass once per window instead of once per row (MaxText's offline
distillation stores top-k logits the same way).

Data contract (numpy .npy memmaps under CACHE, one per field; S steps, N seeds, B batch rows,
T = seq_len positions, k = top_k, M declared temperatures; slot [s, n] = seed seeds[n], step s):

    tokens       int32 [S, N, B, T+1]  the window (checked against the student's own batch)
    ids          int32 [S, N, B, T, k] the teacher's k most likely next tokens, most likely first
    logits       f32   [S, N, B, T, k] their raw logits z (temperature 1, f32 as the model's)
    lse          f32   [S, N, B, T, M] log Σ_v exp((z_v − z_max)/T_m) over ALL V ids: the
                                       log-sum-exp of the logits at T_m, shifted by the max as a
                                       stable softmax computes it (logsumexp(z/T) = z_max/T + lse)
    tail         f32   [S, N, B, T, M] log of the teacher's probability mass at T_m outside the k
    teacher_nll  f32   [S, N, B, T]    −log p_teacher(target) at T = 1 (metric distill/teacher_ce)

plus cache.json (teacher / data / tokenizer fingerprints, the teacher's config, top_k,
temperatures, steps, seeds, batch_size, seq_len, the field shapes) and progress.json
({"written": n}: slots 0 … n−1 in step-major order s·N + n are complete; replaced atomically after
their memmaps are flushed, so an interrupted build continues where it stopped).

Exactness. At temperature T the top-k bucket log-probabilities are (z/T − z_max/T) − lse_T, the
same operations `jax.nn.log_softmax` runs online (z_max = logits[..., 0]), and the tail bucket is
stored as computed online. The tail at T cannot be rebuilt from the T = 1 log-sum-exp (it needs
logsumexp over the non-top-k ids of z/T) and 1 − Σ top-k loses its digits in f32, so the cache
stores lse and tail for each temperature declared at build time (`temperatures=1,2`) and a
student may distill only at those. Losses from the cache equal the online `distill.top_k=k`
losses to float rounding (tests/train/test_distill_cache.py: 1e-6 over whole runs).
"""
# ruff: noqa: F722  (jaxtyping shape strings are not forward references)

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from compactlm.data.tokenizer import TOKENIZER_FILE
from compactlm.train.distill import DistillConfig, DistillLoss, bucket_log_mass

CACHE_FILE, PROGRESS_FILE = "cache.json", "progress.json"
FORMAT = 1  # bump when the data contract above changes


@dataclasses.dataclass(frozen=True, kw_only=True)
class CacheConfig:
    """Keys of `compactlm distill-cache` (besides data.*, which apply to the teacher's data)."""

    # The teacher's k most likely tokens kept per position (+ one tail bucket); 0 < k < vocab.
    # 64: MaxText's default for stored top-k teacher logits; a student may use exactly this k.
    top_k: int = 64
    # Training steps stored per seed; a student run may use train.steps <= this (0 = the nano
    # preset's train.steps, the default student of `compactlm distill`).
    steps: int = 0
    # train.seed values stored; a student run's train.seed must be one of them.
    seeds: tuple[int, ...] = (0,)
    # train.batch_size / train.seq_len of the student runs (0 = the nano preset's).
    batch_size: int = 0
    seq_len: int = 0
    # Temperatures the tail bucket and log-sum-exp are stored at (2 floats per position each);
    # a student's distill.temperature must be one of them (module docstring: why).
    temperatures: tuple[float, ...] = (1.0, 2.0)


def is_cache(path: str | Path) -> bool:
    return (Path(path) / CACHE_FILE).is_file()


def field_shapes(meta: dict) -> dict[str, tuple[tuple[int, ...], str]]:
    """{field: (shape, dtype)} of a cache (the data contract of the module docstring)."""
    S, N = meta["steps"], len(meta["seeds"])
    B, T, k, M = meta["batch_size"], meta["seq_len"], meta["top_k"], len(meta["temperatures"])
    return {
        "tokens": ((S, N, B, T + 1), "int32"),
        "ids": ((S, N, B, T, k), "int32"),
        "logits": ((S, N, B, T, k), "float32"),
        "lse": ((S, N, B, T, M), "float32"),
        "tail": ((S, N, B, T, M), "float32"),
        "teacher_nll": ((S, N, B, T), "float32"),
    }


def cache_bytes(meta: dict) -> int:
    return sum(int(np.prod(s)) * 4 for s, _ in field_shapes(meta).values())


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError


def data_fingerprint(train_tokens: np.ndarray) -> str:
    """sha256 of the training tokens (ids as int64): what get_batch draws windows from."""
    return hashlib.sha256(np.ascontiguousarray(train_tokens, np.int64).tobytes()).hexdigest()


def _read_json(path: Path) -> dict:
    from compactlm.config import ConfigError

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path} is unreadable ({e}); rebuild the cache") from None


def _write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def written(cache_dir: str | Path) -> int:
    path = Path(cache_dir) / PROGRESS_FILE
    return int(_read_json(path)["written"]) if path.is_file() else 0


def train_batch(cfg, data, seed: int, step: int) -> np.ndarray:
    """[B, T+1] int32: the window rows Trainer.batch draws for (seed, step) before sharding."""
    from compactlm.data import get_batch

    t, d = cfg.train, cfg.data
    if d.augment:
        from compactlm.data.augment import augmented_batch

        tok = data.tokenizer
        tokens = augmented_batch(
            data.train_tokens,
            names=d.augment,
            rate=d.augment_rate,
            ordinary_ids=np.flatnonzero(tok.token_byte_lengths() > 0),
            fill_id=tok.eos_id,
            seed=seed,
            step=step,
            batch_size=t.batch_size,
            seq_len=t.seq_len,
        )
    else:
        tokens = get_batch(
            data.train_tokens, seed=seed, step=step, batch_size=t.batch_size, seq_len=t.seq_len
        )
    return np.asarray(tokens, np.int32).reshape(t.batch_size, t.seq_len + 1)


def make_teacher_rows(graphdef, top_k: int, temperatures: Sequence[float]):
    """rows(teacher_state, tokens_BT1) -> (ids, logits, lse, tail, teacher_nll) of one window
    batch, jitted; every quantity computed with the operations the online loss uses."""
    from flax import nnx

    from compactlm.train.distill import _token_nll

    @jax.jit
    def rows(state, tokens_BT1):
        teacher = nnx.merge(graphdef, state)
        z_BTV = teacher(tokens_BT1[:, :-1]).astype(jnp.float32)
        z_top, ids = jax.lax.top_k(z_BTV, top_k)
        lse, tail = [], []
        for temperature in temperatures:
            x = z_BTV / temperature
            # jax.nn.log_softmax's own normalizer: log Σ exp(x − max x)
            x_max = jnp.max(x, -1, keepdims=True)
            lse.append(jnp.log(jnp.sum(jnp.exp(x - jax.lax.stop_gradient(x_max)), -1)))
            tail.append(bucket_log_mass(jax.nn.log_softmax(x, -1), ids)[..., -1])
        nll = _token_nll(z_BTV, tokens_BT1[:, 1:])
        return ids, z_top, jnp.stack(lse, -1), jnp.stack(tail, -1), nll

    return rows


# ---------------------------------------------------------------------------------------------
# compactlm distill-cache TEACHER_RUN_DIR [data.*=...] top_k=64 steps=N seeds=0,1,2 workdir=CACHE
# ---------------------------------------------------------------------------------------------


def plan(teacher_dir: str, overrides: Sequence[str], cache_dir: str | Path):
    """Every check that can fail, before CACHE is touched: (teacher Trainer, student-side Config,
    data, meta for cache.json)."""
    from compactlm.config import ConfigError, apply_overrides, get_preset, to_json
    from compactlm.data import prepare_data
    from compactlm.train.loop import load_run
    from compactlm.train.run_dir import run_fingerprint

    ours = [o for o in overrides if not o.split("=", 1)[0].strip().startswith("data.")]
    data_overrides = [o for o in overrides if o not in ours]
    try:
        ccfg = apply_overrides(CacheConfig(), ours)
    except ConfigError as e:
        raise ConfigError(f"{e} (and data.* keys, applied to the teacher's data)") from None
    nano = get_preset("nano").train
    ccfg = dataclasses.replace(
        ccfg,
        steps=ccfg.steps or nano.steps,
        batch_size=ccfg.batch_size or nano.batch_size,
        seq_len=ccfg.seq_len or nano.seq_len,
    )
    for name in ("steps", "batch_size", "seq_len"):
        if getattr(ccfg, name) < 1:
            raise ConfigError(f"{name} must be >= 1, got {getattr(ccfg, name)}")
    if not ccfg.seeds or len(set(ccfg.seeds)) != len(ccfg.seeds):
        raise ConfigError(f"seeds must be distinct and at least one, got {ccfg.seeds}")
    temps = ccfg.temperatures
    if (
        not temps
        or any(not (t > 0 and np.isfinite(t)) for t in temps)
        or len(set(temps)) < len(temps)
    ):
        raise ConfigError(f"temperatures must be distinct and > 0, got {temps}")
    cache_dir = Path(cache_dir)
    if cache_dir.exists() and not is_cache(cache_dir) and any(cache_dir.iterdir()):
        raise ConfigError(
            f"workdir {cache_dir} is not empty and holds no {CACHE_FILE}: use a new one"
        )

    teacher = load_run(teacher_dir)
    cfg = apply_overrides(teacher.cfg, data_overrides)
    cfg = dataclasses.replace(
        cfg,
        train=dataclasses.replace(cfg.train, batch_size=ccfg.batch_size, seq_len=ccfg.seq_len),
    )
    data = prepare_data(cfg.data, run_dir=teacher_dir if cfg.data.tokenizer == "hf" else None)
    t_tok = teacher.data.tokenizer
    if data.tokenizer.fingerprint() != t_tok.fingerprint():
        raise ConfigError(
            f"these data.* settings make a {data.tokenizer.kind} tokenizer (vocab "
            f"{data.tokenizer.vocab_size}) that is not the teacher's ({t_tok.kind}, vocab "
            f"{t_tok.vocab_size}); the cache stores the teacher's ids"
        )
    vocab = teacher.cfg.model.vocab_size
    if not 0 < ccfg.top_k < vocab:
        raise ConfigError(
            f"top_k={ccfg.top_k} must be in [1, {vocab - 1}] (the teacher's vocabulary is {vocab}; "
            "the full distribution needs no cache: run `compactlm distill TEACHER_RUN_DIR`)"
        )
    from compactlm.data.dataset import batch_offsets

    batch_offsets(data.train_tokens.size, seed=0, step=0, batch_size=1, seq_len=ccfg.seq_len)
    meta = {
        "format": FORMAT,
        "teacher": str(Path(teacher_dir).resolve()),
        "teacher_fingerprint": run_fingerprint(teacher_dir),
        "teacher_step": int(teacher.state.step),
        "teacher_config": json.loads(to_json(cfg)),
        "data_fingerprint": data_fingerprint(data.train_tokens),
        "tokenizer_fingerprint": data.tokenizer.fingerprint(),
        "vocab_size": vocab,
        "top_k": ccfg.top_k,
        "temperatures": [float(t) for t in temps],
        "steps": ccfg.steps,
        "seeds": [int(s) for s in ccfg.seeds],
        "batch_size": ccfg.batch_size,
        "seq_len": ccfg.seq_len,
    }
    meta["fields"] = {k: [list(s), d] for k, (s, d) in field_shapes(meta).items()}
    if is_cache(cache_dir):
        saved = _read_json(cache_dir / CACHE_FILE)
        changed = [k for k in meta if saved.get(k) != meta[k]]
        if changed:
            detail = "; ".join(
                f"{k}: saved {_short(saved.get(k))}, now {_short(meta[k])}" for k in changed
            )
            raise ConfigError(f"{cache_dir} holds another cache ({detail}): use a new workdir")
    return teacher, cfg, data, meta


def _short(v: Any) -> str:
    if isinstance(v, str) and len(v) == 64:  # a sha256
        return v[:12]
    text = json.dumps(v)
    return text if len(text) <= 40 else text[:37] + "..."


def build(teacher_dir: str, overrides: Sequence[str], cache_dir: str | Path) -> dict:
    """Write (or continue) the cache; prints its size first. Returns cache.json's dict."""
    from compactlm.config import ConfigError
    from compactlm.train.distill_run import teacher_aux

    cache_dir = Path(cache_dir)
    teacher, cfg, data, meta = plan(teacher_dir, overrides, cache_dir)
    total, done = cache_bytes(meta), written(cache_dir) if is_cache(cache_dir) else 0
    slots = meta["steps"] * len(meta["seeds"])
    sizes = ", ".join(f"{k} {_human(np.prod(s) * 4)}" for k, (s, _) in field_shapes(meta).items())
    print(
        f"distill-cache: {len(meta['seeds'])} seed(s) x {meta['steps']} steps x "
        f"{meta['batch_size']} x {meta['seq_len']} positions, top {meta['top_k']} + tail at "
        f"T = {', '.join(f'{t:g}' for t in meta['temperatures'])}: {_human(total)} ({sizes}) "
        f"in {cache_dir}" + (f"; {done} of {slots} slots already written" if done else "")
    )
    probe = cache_dir
    while not probe.exists():
        probe = probe.parent
    need = total * (slots - done) // slots
    free = shutil.disk_usage(probe).free
    if free < need:
        raise ConfigError(
            f"{probe} has {_human(free)} free; the cache needs {_human(need)} more: free space "
            "or store fewer steps / seeds / a smaller top_k"
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    fresh = not is_cache(cache_dir)
    if fresh:
        if (Path(teacher_dir) / TOKENIZER_FILE).is_file():
            shutil.copy(Path(teacher_dir) / TOKENIZER_FILE, cache_dir / TOKENIZER_FILE)
        for name, (shape, dtype) in field_shapes(meta).items():
            np.lib.format.open_memmap(cache_dir / f"{name}.npy", "w+", np.dtype(dtype), shape)
        _write_json_atomic(cache_dir / PROGRESS_FILE, {"written": 0})
        _write_json_atomic(cache_dir / CACHE_FILE, meta)  # last: a cache.json means a whole set
    arrays = {k: np.load(cache_dir / f"{k}.npy", mmap_mode="r+") for k in field_shapes(meta)}
    graphdef, state = teacher_aux(teacher, "float32")
    rows = make_teacher_rows(graphdef, meta["top_k"], meta["temperatures"])
    N = len(meta["seeds"])
    for slot in range(done, slots):
        step, n = divmod(slot, N)
        tokens = train_batch(cfg, data, meta["seeds"][n], step)
        out = jax.device_get(rows(state, jnp.asarray(tokens)))
        arrays["tokens"][step, n] = tokens
        for name, value in zip(("ids", "logits", "lse", "tail", "teacher_nll"), out, strict=True):
            arrays[name][step, n] = value
        if slot % N == N - 1 or slot == slots - 1:  # one step of every seed: record it
            for a in arrays.values():
                a.flush()
            _write_json_atomic(cache_dir / PROGRESS_FILE, {"written": slot + 1})
            if sys.stdout.isatty():
                print(f"\r  step {step + 1}/{meta['steps']}", end="", flush=True)
    if sys.stdout.isatty():
        print()
    return meta


# ---------------------------------------------------------------------------------------------
# compactlm distill CACHE [preset] distill.*=... : the student's side
# ---------------------------------------------------------------------------------------------


class Cache:
    """An opened cache directory: cache.json and read-only memmaps of every field."""

    def __init__(self, path: str | Path) -> None:
        from compactlm.config import ConfigError

        self.path = Path(path)
        self.meta = _read_json(self.path / CACHE_FILE)
        if self.meta.get("format") != FORMAT:
            raise ConfigError(
                f"{self.path} is a cache of format {self.meta.get('format')}, this compactlm "
                f"reads format {FORMAT}: rebuild it with `compactlm distill-cache`"
            )
        self.written = written(self.path)
        self.arrays = {
            k: np.load(self.path / f"{k}.npy", mmap_mode="r") for k in field_shapes(self.meta)
        }

    def teacher_config(self):
        from compactlm.config import from_json

        return from_json(json.dumps(self.meta["teacher_config"]), source=str(self.path))

    def steps_complete(self, seed_index: int) -> int:
        """How many leading steps of seed seeds[seed_index] are written (step-major slots)."""
        N = len(self.meta["seeds"])
        return max(0, (self.written - seed_index + N - 1) // N)

    def payload(self, seed_index: int, step: int, temp_index: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens [B, T+1], the teacher's columns [B, T·(2k+3)]) as int32 (floats bit-cast)."""
        a = self.arrays
        B = self.meta["batch_size"]
        cols = [
            a["ids"][step, seed_index].reshape(B, -1),
            a["logits"][step, seed_index].reshape(B, -1).view(np.int32),
            a["lse"][step, seed_index][..., temp_index].view(np.int32),
            a["tail"][step, seed_index][..., temp_index].view(np.int32),
            a["teacher_nll"][step, seed_index].view(np.int32),
        ]
        tokens = np.asarray(a["tokens"][step, seed_index])
        return tokens, np.concatenate([np.ascontiguousarray(c) for c in cols], axis=1)

    def check_student(self, cfg, dcfg: DistillConfig, workdir: Path) -> tuple[int, int]:
        """Every check before the student's run directory is touched; returns (seed index,
        temperature index)."""
        from compactlm.config import ConfigError
        from compactlm.data import prepare_data
        from compactlm.train.loop import resolve_vocab
        from compactlm.train.run_dir import run_fingerprint

        m, where = self.meta, f"the cache {self.path}"
        online = "needs the teacher's model: distill from TEACHER_RUN_DIR instead"
        if dcfg.on_policy > 0:
            raise ConfigError(f"distill.on_policy={dcfg.on_policy} {online}")
        if dcfg.features != "none":
            raise ConfigError(f"distill.features={dcfg.features} {online}")
        if dcfg.init_from_teacher:
            raise ConfigError(f"distill.init_from_teacher=true {online}")
        if dcfg.cross_tokenizer != "none":  # a cache holds the teacher's logits on OUR tokens
            raise ConfigError(f"distill.cross_tokenizer={dcfg.cross_tokenizer} {online}")
        if dcfg.teacher_dtype != "float32":
            raise ConfigError(f"{where} holds a float32 teacher; distill.teacher_dtype=float32")
        if dcfg.top_k not in (0, m["top_k"]):
            raise ConfigError(
                f"distill.top_k={dcfg.top_k}: {where} holds the top {m['top_k']} "
                f"(leave distill.top_k out or set it to {m['top_k']})"
            )
        if dcfg.temperature not in m["temperatures"]:
            stored = ", ".join(f"{t:g}" for t in m["temperatures"])
            raise ConfigError(
                f"distill.temperature={dcfg.temperature:g}: {where} holds the tail bucket at "
                f"T = {stored} only (rebuild with temperatures=... to add one)"
            )
        t = cfg.train
        for name in ("batch_size", "seq_len"):
            if getattr(t, name) != m[name]:
                raise ConfigError(
                    f"train.{name}={getattr(t, name)} differs from {where}'s {name} {m[name]}"
                )
        if t.seed not in m["seeds"]:
            seeds = ", ".join(str(s) for s in m["seeds"])
            raise ConfigError(f"train.seed={t.seed} is not among {where}'s seeds {seeds}")
        seed_index = m["seeds"].index(t.seed)
        have = self.steps_complete(seed_index)
        if t.steps > have:
            limit = f"{have} of its {m['steps']} written" if have < m["steps"] else str(have)
            raise ConfigError(
                f"train.steps={t.steps} exceeds {where}'s steps for seed {t.seed}: {limit}"
            )
        if Path(m["teacher"], "config.json").is_file():  # gone: the cache stands on its own
            now = run_fingerprint(m["teacher"])
            if now != m["teacher_fingerprint"]:
                raise ConfigError(
                    f"teacher changed: {m['teacher']} hashes to {now[:12]}, {where} was written "
                    f"from {m['teacher_fingerprint'][:12]}; rebuild the cache"
                )
        existing = workdir if (workdir / TOKENIZER_FILE).is_file() else None
        if existing is None and cfg.data.tokenizer == "hf":
            existing = self.path
        data = prepare_data(cfg.data, run_dir=existing)
        if data.tokenizer.fingerprint() != m["tokenizer_fingerprint"]:
            raise ConfigError(
                f"tokenizer mismatch: the student's {data.tokenizer.kind} tokenizer (sha256 "
                f"{data.tokenizer.fingerprint()[:12]}) is not {where}'s "
                f"({m['tokenizer_fingerprint'][:12]})"
            )
        now = data_fingerprint(data.train_tokens)
        if now != m["data_fingerprint"]:
            raise ConfigError(
                f"data mismatch: the student's training tokens (data.corpus={cfg.data.corpus}, "
                f"sha256 {now[:12]}) are not {where}'s ({m['data_fingerprint'][:12]}); give the "
                "cache's data.* settings"
            )
        if resolve_vocab(cfg, data.tokenizer.vocab_size).model.vocab_size != m["vocab_size"]:
            raise ConfigError(
                f"vocabulary mismatch: the student's is not {where}'s {m['vocab_size']}"
            )
        return seed_index, m["temperatures"].index(dcfg.temperature)


def make_objective(dcfg: DistillConfig, seq_len: int, top_k: int):
    """objective(student, packed_BX, rng, aux) for train/step.py's build(): packed_BX is the
    window [B, T+1] followed by the cache's columns (Cache.payload), int32, floats bit-cast. The
    teacher's rows travel inside the batch so that gradient accumulation and data sharding split
    them exactly as they split the tokens."""
    loss_fn = DistillLoss(dcfg)
    T, k, temperature = seq_len, top_k, dcfg.temperature

    def objective(model, packed_BX, rng, aux):
        del aux
        B = packed_BX.shape[0]
        offset = 0

        def take(n: int, *shape: int, f32: bool = False) -> jax.Array:
            nonlocal offset
            x = packed_BX[:, offset : offset + n]
            offset += n
            if f32:
                x = jax.lax.bitcast_convert_type(x, jnp.float32)
            return x.reshape(B, *shape)

        tokens_BT1 = take(T + 1, T + 1)
        ids_BTK = take(T * k, T, k)
        z_BTK = take(T * k, T, k, f32=True)
        lse_BT, tail_BT, nll_BT = (take(T, T, f32=True) for _ in range(3))
        x_BTK = z_BTK / temperature  # the same operations as jax.nn.log_softmax online
        top_BTK = (x_BTK - x_BTK[..., :1]) - lse_BT[..., None]
        log_p = jnp.concatenate([top_BTK, tail_BT[..., None]], -1)
        model_rng, _, _ = jax.random.split(rng, 3)  # distill_step's split: the same dropout
        student_logits_BTV = model(tokens_BT1[:, :-1], rng=model_rng)
        loss, metrics = loss_fn.from_buckets(
            student_logits_BTV, ids_BTK, log_p, nll_BT, tokens_BT1[:, 1:]
        )
        metrics["distill/on_policy"] = jnp.float32(0.0)
        return loss, metrics

    return objective


def _cached_trainer(cache: Cache, seed_index: int, temp_index: int, *args, **kwargs):
    """A Trainer whose batches carry the cache's teacher columns beside the tokens."""
    from compactlm.config import ConfigError
    from compactlm.train.loop import Trainer
    from compactlm.train.mesh import shard_batch

    class CachedTrainer(Trainer):
        def batch(self, step: int) -> jax.Array:
            t = self.cfg.train
            tokens = np.asarray(jax.device_get(super().batch(step)), np.int32)
            tokens = tokens.reshape(t.batch_size, t.seq_len + 1)
            stored, payload = cache.payload(seed_index, step, temp_index)
            if not np.array_equal(tokens, stored):
                raise ConfigError(
                    f"step {step}: the student's batch is not the one {cache.path} stored for "
                    f"seed {t.seed}; the data settings changed since the cache was written"
                )
            packed = np.concatenate([tokens, payload], axis=1)
            packed = packed.reshape(t.grad_accum, t.batch_size // t.grad_accum, -1)
            return shard_batch(packed, self.program.accum_sharding)

    return CachedTrainer(*args, **kwargs)


def run(cache_dir: str, preset: str, overrides: Sequence[str], workdir: str | Path) -> dict:
    """`compactlm distill CACHE [preset] ...`: distill (or resume) from stored teacher logits."""
    from compactlm.config import apply_overrides
    from compactlm.models.footprint import count_params
    from compactlm.train.distill_run import (
        DISTILL_FILE,
        DistillArgs,
        check_resume,
        evaluate_on,
        split_overrides,
        student_config,
    )
    from compactlm.train.loop import load_run
    from compactlm.train.workdir import check_workdir, claim_workdir

    workdir = Path(workdir)
    check_workdir(workdir, "distill")
    cache = Cache(cache_dir)
    ours, rest = split_overrides(overrides)
    dcfg = apply_overrides(DistillArgs(), ours).distill
    if dcfg.baseline:
        from compactlm.train.run_dir import latest_checkpoint_dir, read_config

        read_config(dcfg.baseline)
        latest_checkpoint_dir(dcfg.baseline)
    cfg = student_config(preset, rest, cache.teacher_config())
    seed_index, temp_index = cache.check_student(cfg, dcfg, workdir)
    m = cache.meta
    record = {
        "teacher": m["teacher"],
        "teacher_fingerprint": m["teacher_fingerprint"],
        "teacher_step": m["teacher_step"],
        "distill": dataclasses.asdict(dataclasses.replace(dcfg, top_k=m["top_k"])),
        "cache": str(Path(cache_dir).resolve()),
    }
    check_resume(workdir, record)
    claim_workdir(workdir, "distill")
    if cfg.data.tokenizer == "hf" and not (workdir / TOKENIZER_FILE).is_file():
        shutil.copy(Path(cache_dir) / TOKENIZER_FILE, workdir / TOKENIZER_FILE)
    student = _cached_trainer(
        cache,
        seed_index,
        temp_index,
        cfg,
        workdir,
        objective=make_objective(dcfg, cfg.train.seq_len, m["top_k"]),
    )
    student.progress_metrics = ("distill/divergence", "distill/agreement")
    if jax.process_index() == 0:
        (workdir / DISTILL_FILE).write_text(json.dumps(record, indent=2) + "\n")
    summary = student.train()
    summary["student"], summary["teacher"] = student, None
    if summary["status"] != "done":
        return summary
    val = student.data.val_tokens
    rows = {
        "student": {
            **evaluate_on(student, student, val),
            "params": count_params(student.cfg.model),
        }
    }
    if dcfg.baseline:
        base = load_run(dcfg.baseline)
        rows["baseline"] = {
            **evaluate_on(student, base, val),
            "params": count_params(base.cfg.model),
        }
    for row in rows.values():
        row["params"] = row["params"]["total"]
    summary["report"] = rows
    return summary
