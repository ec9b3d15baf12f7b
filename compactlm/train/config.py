"""The training sections of the run config (`train.*`, `optim.*`, `mesh.*`), free of imports.

They live apart from their readers (train/loop.py, optim.py, mesh.py, which re-export them) so
that compactlm.config, the override parser, composes them without importing JAX / optax / orbax
training code: the readers import compactlm.config, never the reverse (tests/test_config.py).
"""

from __future__ import annotations

import dataclasses
from typing import Literal


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    steps: int = 1200  # optimizer steps; tiny: 1200 x 16 x 256 = 4.9M tokens (~0.5 epoch), <10 min
    batch_size: int = 16  # sequences per optimizer step (global, over all devices)
    seq_len: int = 256  # tokens per sequence (context length used in training)
    grad_accum: int = 1  # micro-batches per step; batch_size must divide by it
    seed: int = 0  # parameters, data order and RNG all derive from it
    z_loss: float = 0.0  # PaLM z-loss coefficient (1e-4 helps bf16 stability; 0 = off)
    log_every: int = 25  # steps between metrics.jsonl / TensorBoard / progress-bar updates
    eval_every: int = 500  # steps between validation evaluations (0 = only at the end)
    eval_tokens: int = 131072  # validation tokens scored at periodic evals (0 = all); final is all
    checkpoint_every: int = 500  # steps between checkpoints (and one at the end; 0 = only that)
    keep_checkpoints: int = 3  # most recent checkpoints kept (>= 1: the last one is the model)
    progress: bool = True  # tqdm progress bar (tokens/s, loss, ETA) on stderr
    tensorboard: bool = True  # TensorBoard event files under RUN_DIR/tb
    # What trains: "all" = every nnx.Param (pretraining, full fine-tuning); "adapters" = only the
    # nnx.LoRAParam adapters (the base is frozen state, outside the optimizer); "auto" = adapters
    # when model.adapter.kind is not none, else all.
    trainable: Literal["auto", "all", "adapters"] = "auto"

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "seq_len", "grad_accum", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1")
        if self.keep_checkpoints < 1:
            raise ValueError(
                f"train.keep_checkpoints={self.keep_checkpoints} would keep no checkpoint (the "
                "trained model is lost); valid: 1 or more"
            )
        zero = {"checkpoint_every": "only at the end", "eval_every": "only at the end"}
        for name, meaning in {**zero, "eval_tokens": "all"}.items():
            if getattr(self, name) < 0:
                # A negative every-N acts as |N|, or as every step (n % -1 == 0): refused.
                raise ValueError(
                    f"train.{name}={getattr(self, name)} is negative; valid: 0 ({meaning}) or "
                    "a positive number"
                )
        if self.z_loss < 0:
            raise ValueError(f"train.z_loss={self.z_loss} must be >= 0 (0 = off; PaLM: 1e-4)")
        if self.trainable not in ("auto", "all", "adapters"):
            raise ValueError(f"train.trainable={self.trainable!r}; valid: auto, all, adapters")
        if self.batch_size % self.grad_accum:
            raise ValueError(
                f"train.batch_size={self.batch_size} must be divisible by "
                f"train.grad_accum={self.grad_accum}"
            )


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimConfig:
    # "adamw" everywhere; "muon": Muon on the block linears' kernels, AdamW on the embedding and
    # norm scales (see the module docstring).
    kind: Literal["adamw", "muon"] = "adamw"
    lr: float = (
        3e-3  # peak learning rate; small byte-level models tolerate ~3e-3 (nanoGPT char: 1e-3)
    )
    schedule: Literal["cosine", "linear", "constant"] = "cosine"  # decay after warmup
    warmup_steps: int = 100  # linear warmup from 0 (Adam's second moment is noisy early)
    min_lr_ratio: float = 0.1  # final lr = lr * min_lr_ratio (Chinchilla/Llama use 0.1)
    b1: float = 0.9  # Adam's first-moment decay (the usual 0.9)
    b2: float = 0.95  # 0.95 rather than 0.999: more stable for LMs at small batch (Llama, GPT-3)
    eps: float = 1e-8  # Adam's denominator floor (the usual 1e-8)
    weight_decay: float = 0.1  # decoupled (AdamW); applied to matrices only, see decay_* below
    decay_embeddings: bool = False  # decay the embedding table too (off: sparse rows get shrunk)
    decay_norms: bool = False  # decay RMSNorm scales too (off: they are gains, not weights)
    grad_clip: float = 1.0  # global-norm clip; 0 disables
    # Muon only: momentum of the orthogonalized gradient (Nesterov), as modded-nanogpt / optax.
    muon_momentum: float = 0.95
    # Muon only: RMS of an orthogonalized update per unit learning rate, so `lr` is shared with
    # the AdamW group. 0.2 matches AdamW's update RMS (Liu et al. 2025); 0.6 was the best of
    # 0.2 / 0.6 / 1.2 for `tiny` at lr 3e-3 (docs/benchmarks.md, make train).
    muon_rms: float = 0.6

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError("lr must be > 0")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("min_lr_ratio must be in [0, 1]")
        if self.warmup_steps < 0:
            raise ValueError("warmup_steps must be >= 0")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("weight_decay and grad_clip must be >= 0 (grad_clip 0 = off)")
        if not (0 <= self.b1 < 1 and 0 <= self.b2 < 1 and 0 <= self.muon_momentum < 1):
            raise ValueError("b1, b2 and muon_momentum must be in [0, 1)")
        if self.eps <= 0 or self.muon_rms <= 0:
            raise ValueError("eps and muon_rms must be > 0")
        if self.kind == "muon" and (self.decay_embeddings or self.decay_norms):
            raise ValueError("optim.kind=muon keeps embeddings and norm scales undecayed")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MeshConfig:
    data: int = -1  # data-parallel replicas; -1 = all devices left after fsdp and tensor
    fsdp: int = 1  # parameter/optimizer sharding (ZeRO-3 style); batches are split over it too
    tensor: int = 1  # tensor (model) parallelism over heads / MLP hidden (Megatron layout)
    devices: int = 0  # use only the first N devices (0 = all): 1-device baselines, benchmarks
    distributed: bool = False  # call jax.distributed.initialize() (multi-host); env vars work too
    coordinator_address: str = ""  # host:port of process 0 when not auto-detected
    num_processes: int = 0  # 0 = auto-detect (SLURM, TPU pods, Kubernetes)
    process_id: int = -1  # -1 = auto-detect

    def __post_init__(self) -> None:
        for name in ("fsdp", "tensor"):
            if getattr(self, name) < 1:
                raise ValueError(f"mesh.{name} must be >= 1")
        if self.devices < 0:
            raise ValueError("mesh.devices must be >= 0 (0 = all devices)")
        if self.data == 0 or self.data < -1:
            raise ValueError("mesh.data must be >= 1, or -1 to use the remaining devices")
