"""ModelConfig, AdapterConfig and THE registries of names: storage formats, adapter kinds, linears.

This is the bottom of the package: it imports nothing from compactlm, so kernels, models,
benchmarks, `info` and the compression code can all take their vocabulary from here (one name
per storage format, one list of projection names adapters can target).
"""

from __future__ import annotations

import dataclasses
import re
import typing
from typing import Literal

from flax import nnx

# Storage of a linear layer's weight (DESIGN §3). dense: a trainable [in, out] kernel; int4:
# 4-bit codes + per-group scales (symmetric; the affine variant is a packing option of the
# compression code); nf4 / fp4: 4-bit codes into the QLoRA NF4 / E2M1 code books with per-block
# absmax; sparse24: 2:4 values + metadata; sparse24_int4: both. Packed formats are frozen.
STORAGE_FORMATS: tuple[str, ...] = ("dense", "int4", "nf4", "fp4", "sparse24", "sparse24_int4")
StorageFormat = Literal["dense", "int4", "nf4", "fp4", "sparse24", "sparse24_int4"]
# The 4-bit code-book / integer formats QuantizedLinear builds (QLoRA bases).
QUANTIZED_FORMATS: tuple[str, ...] = ("int4", "nf4", "fp4")
SPARSE_FORMATS: tuple[str, ...] = ("sparse24", "sparse24_int4")

# Group / block sizes along K the packed formats support (kernels/packing.py GROUP_SIZES).
QUANT_GROUP_SIZES: tuple[int, ...] = (32, 64, 128, 256)

ADAPTER_KINDS: tuple[str, ...] = ("none", "lora", "dora")
AdapterKind = Literal["none", "lora", "dora"]

# Projection names as in an unfused Hugging Face Llama (q_proj ... down_proj, lm_head). The fused
# qkv / gate_up linears expose these as named parts, so adapters, export and calibration all see
# the unfused model.
LINEAR_NAMES: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down", "lm_head")
# `adapter.targets=all-linear` (PEFT's spelling): every projection of the blocks, not the head.
ALL_LINEAR: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")
# transformers' module names (PEFT's `target_modules=["q_proj", "v_proj"]`) for the same ones.
HF_LINEAR_NAMES: dict[str, str] = {f"{name}_proj": name for name in ALL_LINEAR}

DType = Literal["float32", "bfloat16"]
# RoPE frequency scaling (models/layers.py::rope_inv_freq): none = plain RoPE; linear = positions
# / factor (Chen et al. 2023, position interpolation); llama3 = Meta's Llama 3.1 piecewise rule
# (transformers' `_compute_llama3_parameters`).
RopeScaling = Literal["none", "linear", "llama3"]


class Frozen(nnx.Variable):
    """Storage that is never trained: packed codes, scales, 2:4 metadata, PiSSA residuals.

    Not an `nnx.Param`, so neither training filter (`nnx.Param`, `nnx.LoRAParam`) selects it:
    it lives in the step's `frozen` state and never enters the optimizer state.
    """


# Parameter kinds, declared where each parameter is created, so that the optimizer's groups
# (weight decay; Muon or AdamW: train/optim.py) follow what a parameter is, never its module's
# name. A plain nnx.Param of rank >= 2 is a linear map's matrix: decayed, Muon's. Adapter
# parameters are nnx.LoRAParam (models/lora.py). A new vector parameter (a bias) needs a kind:
# under scanned layers it is [L, out], rank 2.


class EmbeddingParam(nnx.Param):
    """A lookup table (the token embedding [V, D], also the tied head): decayed only with
    optim.decay_embeddings (a step moves the rows of the tokens seen; decay shrinks every row),
    AdamW's under Muon."""


class BiasParam(nnx.Param):
    """An additive per-output bias (Qwen2's q/k/v biases, init 0; [L, out] under scanned
    layers): never decayed (decay pulls it towards 0, a choice of function, not a regulariser of
    a map), AdamW's under Muon. Trains like any nnx.Param; frozen under adapters."""


class ScaleParam(nnx.Param):
    """A per-feature gain (RMSNorm's scale, init 1; [L, D] under scanned layers): decayed only
    with optim.decay_norms (decay pulls a gain towards 0, not towards the identity), AdamW's
    under Muon."""


def literal_values(tp: object, namespace: dict | None = None) -> tuple:
    """The allowed values of a (possibly string-annotated) Literal type, else ()."""
    if isinstance(tp, str):
        tp = eval(tp, namespace if namespace is not None else globals())
    if typing.get_origin(tp) is Literal:
        return typing.get_args(tp)
    return ()


def _check_literals(obj: object) -> None:
    for f in dataclasses.fields(obj):
        valid = literal_values(f.type)
        if valid and getattr(obj, f.name) not in valid:
            raise ValueError(
                f"{type(obj).__name__}.{f.name}={getattr(obj, f.name)!r}; valid: "
                + ", ".join(map(str, valid))
            )


@dataclasses.dataclass(frozen=True, kw_only=True)
class AdapterConfig:
    """Parameter-efficient adapters on the linear layers (`adapter.*` on the command line)."""

    # none: no adapter (full training / fine-tuning); lora: W + s·B·A (Hu et al. 2021); dora:
    # magnitude · column-normalised (W + s·B·A) (Liu et al. 2024).
    kind: AdapterKind = "none"
    # Rank r of B·A. 8: the LoRA paper's common setting for attention projections.
    rank: int = 8
    # Scale numerator: s = alpha / r (alpha / sqrt(r) with rslora). 16 = 2r, a common pairing.
    alpha: float = 16.0
    # Dropout on the adapter's input x (LoRA §4.2 applies it to the low-rank path only). 0 = off.
    dropout: float = 0.0
    # Projection names (q, k, v, o, gate, up, down, lm_head; or transformers' q_proj ...
    # down_proj) or all-linear (every block linear). (q, v) is the LoRA paper's default.
    targets: tuple[str, ...] = ("q", "v")
    # If non-empty, a regex over module paths such as `layers.3.attn.q` or `lm_head`; replaces
    # `targets` (re.search, so `attn\.(q|v)$` or `layers\.[0-1]\.` work).
    target_regex: str = ""
    # A's init (B is always zero, so ΔW = 0 at start): kaiming = PEFT's kaiming-uniform(a=√5);
    # gaussian = N(0, 1/r) (the LoRA paper); pissa = top-r SVD of W into A, B, the residual
    # W - B·A frozen (Meng et al. 2024; ΔW starts at the principal part, not 0).
    init: Literal["kaiming", "gaussian", "pissa"] = "kaiming"
    # rsLoRA (Kalajdzievski 2023): s = alpha / sqrt(r), rank-stable learning.
    rslora: bool = False
    # LoRA+ (Hayou et al. 2024): B's learning rate = ratio × A's. 0 = off (same lr); paper: 16.
    lora_plus_ratio: float = 0.0
    # Weight decay on A and B (and DoRA's magnitude). Off: decay would pull ΔW towards 0, the base.
    decay: bool = False

    def __post_init__(self) -> None:
        _check_literals(self)
        if self.rank < 1:
            raise ValueError(f"adapter.rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"adapter.dropout must be in [0, 1), got {self.dropout}")
        if self.lora_plus_ratio < 0:
            raise ValueError("adapter.lora_plus_ratio must be >= 0 (0 = off)")
        if self.target_regex:
            try:
                re.compile(self.target_regex)
            except re.error as e:
                raise ValueError(f"adapter.target_regex {self.target_regex!r}: {e}") from None
        else:
            self.target_names()  # validates the names

    @property
    def scale(self) -> float:
        """s in W + s·B·A."""
        return self.alpha / (self.rank**0.5 if self.rslora else self.rank)

    def target_names(self) -> tuple[str, ...]:
        """`targets` with all-linear expanded; unknown names raise, listing the valid ones."""
        names: list[str] = []
        for t in self.targets:
            t = HF_LINEAR_NAMES.get(t, t)  # q_proj = q, as PEFT users write it
            expanded = ALL_LINEAR if t == "all-linear" else (t,)
            for name in expanded:
                if name not in LINEAR_NAMES:
                    raise ValueError(
                        f"unknown adapter target {name!r}; valid targets: "
                        f"{', '.join(LINEAR_NAMES)}, all-linear (or q_proj ... down_proj)"
                    )
                if name not in names:
                    names.append(name)
        return tuple(names)

    def targets_path(self, path: str) -> bool:
        """Is the projection at module path `path` (e.g. `layers.3.attn.q`) adapted?"""
        if self.kind == "none":
            return False
        if self.target_regex:
            return re.search(self.target_regex, path) is not None
        return path.rsplit(".", 1)[-1] in self.target_names()


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Decoder shape and numerics. Defaults are the `tiny` preset (828,544 params at V=320)."""

    # Token vocabulary incl. specials, padded by the caller to a multiple of 64 so it divides the
    # tensor axis (data/config.py padded_vocab_size). 320 = 256 bytes + specials, padded: the
    # default byte-level tokenizer.
    vocab_size: int = 320
    # The checkpoint's own vocabulary when vocab_size pads it (an imported vocabulary that is not
    # a multiple of 64, e.g. GPT-2's 50,257): ids >= vocab_valid are padding, their logits masked
    # out of every softmax, loss and sample (models/transformer.py, one place), and export writes
    # vocab_valid rows. 0: every one of the vocab_size ids is the model's (our own runs, whose
    # padding ids are trained as unused tokens).
    vocab_valid: int = 0
    # Residual-stream width (units). 128 keeps `tiny` near 0.8M params: fast CPU tests and runs.
    d_model: int = 128
    # Decoder blocks. 4: enough depth for scan/remat to matter while compiling in seconds.
    n_layers: int = 4
    # Query heads. 4 heads of 32 dims.
    n_heads: int = 4
    # Key/value heads (GQA); must divide n_heads. 2 so the default exercises real GQA.
    n_kv_heads: int = 2
    # Per-head width; None → d_model // n_heads. 32 at the default shape.
    head_dim: int | None = None
    # SwiGLU hidden width. 3 × d_model ≈ Llama's 8/3 × d_model rounded up to a multiple of 64.
    d_ff: int = 384
    # Longest sequence (tokens) trained on / the default KV-cache length. RoPE has no table, so
    # this only bounds the cache and the data pipeline.
    max_seq_len: int = 256
    # RoPE base wavelength (Su et al. 2021; Llama 1/2 use 10_000).
    rope_theta: float = 10_000.0
    # RoPE frequency scaling for long contexts (see RopeScaling); none = today's plain RoPE.
    rope_scaling: RopeScaling = "none"
    # linear / llama3: the scale factor (llama3: low frequencies are divided by it). 8 = Llama 3.1.
    rope_factor: float = 1.0
    # llama3: wavelengths longer than original_max_len / low_freq_factor are fully scaled. 1 = 3.1.
    rope_low_freq_factor: float = 1.0
    # llama3: wavelengths shorter than original_max_len / high_freq_factor are kept. 4 = 3.1.
    rope_high_freq_factor: float = 4.0
    # llama3: the context length the model was pre-trained at (8192 for Llama 3.1).
    rope_original_max_len: int = 8192
    # Which layers rotate q and k (SmolLM3; transformers' `no_rope_layers`, its reading kept: 1 =
    # layer i USES RoPE, 0 = it attends without positions, NoPE). Empty: every layer uses RoPE.
    # Otherwise n_layers 0/1 flags, read in one place (models/layers.py::Attention); scanned
    # layers get them as scanned data (models/transformer.py).
    no_rope_layers: tuple[int, ...] = ()
    # Learned biases on the q, k, v projections (Qwen2 / Qwen2.5), in the fused qkv column layout
    # (models/layers.py::Attention); o keeps none. False: Llama (no biases).
    qkv_bias: bool = False
    # A learned bias on the attention output projection o (Llama's `attention_bias=true` puts
    # biases on q, k, v and o: qkv_bias and o_bias together). False: Llama.
    o_bias: bool = False
    # Learned biases on gate, up (in the fused gate_up column layout) and down (Llama's
    # `mlp_bias=true`). False: Llama.
    mlp_bias: bool = False
    # Per-head RMSNorm (learned [head_dim] scales, eps = norm_eps) on q and k after the
    # projection and before RoPE (Qwen3). False: Llama.
    qk_norm: bool = False
    # RMSNorm epsilon added to mean(x²). 1e-5 as Llama 2; harmless in f32 statistics.
    norm_eps: float = 1e-5
    # --- Gemma 3's differences from Llama, each read in one place (models/layers.py) ---
    # Every RMSNorm (q/k norms too) stores w and multiplies by (1 + w), w initialised to 0
    # (Gemma; transformers' Gemma3RMSNorm). False: Llama's gain w, init 1.
    norm_plus_one: bool = False
    # A second RMSNorm on the attention and on the MLP output before each residual add
    # (Gemma 2 / 3's post_attention_layernorm / post_feedforward_layernorm). False: Llama.
    sandwich_norms: bool = False
    # The gated MLP's activation: silu = SwiGLU (Llama); gelu_tanh = GeGLU with the tanh GELU
    # approximation (Gemma's gelu_pytorch_tanh).
    mlp_activation: Literal["silu", "gelu_tanh"] = "silu"
    # Token embeddings multiplied by sqrt(d_model), rounded to the parameter dtype (Gemma).
    embed_scale: bool = False
    # Attention scores scaled by query_pre_attn_scalar^-1/2 (Gemma 3's); 0 = head_dim^-1/2.
    query_pre_attn_scalar: float = 0.0
    # Sliding-window attention: a query at t sees keys t - sliding_window < s <= t (0 = off).
    sliding_window: int = 0
    # Which layers slide (1) and which attend globally (0), as no_rope_layers: n_layers flags,
    # read in one place (models/layers.py::Attention). Empty with sliding_window > 0: every
    # layer slides. Gemma 3: 5 local : 1 global.
    sliding_layers: tuple[int, ...] = ()
    # RoPE base of the sliding layers (Gemma 3's rope_local_base_freq; plain RoPE, no
    # rope_scaling); global layers use rope_theta and rope_scaling.
    rope_local_theta: float = 10_000.0
    # Logits reuse the embedding matrix (saves V·D params; at tiny shapes that's 5% of the model).
    tie_embeddings: bool = True
    # Storage dtype of parameters. f32 so optimizer updates don't underflow; bf16 to halve memory.
    param_dtype: DType = "float32"
    # Matmul/activation dtype; "bfloat16" on GPU/TPU. f32 by default on CPU: XLA:CPU runs native
    # bf16 dots where the CPU has them (AVX512-BF16 on Zen 4), but with mimalloc preloaded tiny's
    # bf16 step measured 0.90x the f32 one (1.09-1.2x under glibc; loss parity over 1200 steps
    # holds, docs/benchmarks.md), and CPUs without AVX512-BF16 / AMX would emulate it.
    compute_dtype: DType = "float32"
    # Stack the blocks and run them with lax.scan: compile time independent of n_layers.
    scan_layers: bool = True
    # Rematerialization per block: "none" stores all activations, "block" stores only block
    # inputs (recompute everything, ~+33% FLOPs), "dots" saves matmul outputs, recomputes the rest.
    remat: Literal["none", "block", "dots"] = "none"
    # Std of the normal init for embeddings and linear kernels (GPT-2 / Llama use 0.02). Residual
    # output projections (o, down) get init_std / sqrt(2·n_layers) (GPT-2 §2.3).
    init_std: float = 0.02
    # Storage of the block linears (qkv, o, gate_up, down); the LM head and the embedding stay
    # dense (QLoRA keeps them in 16 bit too). Packed formats are frozen: train them through
    # adapters (QLoRA). See STORAGE_FORMATS.
    weight_format: StorageFormat = "dense"
    # Group size along K of int4 scales / block size of NF4 / FP4 absmax. 64: QLoRA's NF4 block.
    # 0 = one group per output channel (each linear's own K). sparse24_int4: counts kept rows.
    quant_group_size: int = 64
    # int4 with zero points (affine, w = (q − z)·s with unsigned codes) instead of symmetric;
    # what `compactlm quantize format=int4_affine` writes.
    quant_zero_point: bool = False
    # QLoRA double quantization (§3): absmax constants quantized again to 8 bit in blocks of 256
    # (4.127 bits/param at block 64 instead of 4.5). Applies to nf4 / fp4.
    double_quant: bool = True
    # Adapters on the linears (the `adapter.*` keys of the command line).
    adapter: AdapterConfig = dataclasses.field(default_factory=AdapterConfig)
    # Attention kernel: "auto" = cuDNN flash attention on GPU with bf16/fp16, the blocked
    # flash-style custom-VJP kernel on CPU (models/attention.py: 1.2x faster train step than XLA's),
    # else XLA. The KV-cache path (decode) always uses XLA with an explicit mask.
    attention_impl: Literal["auto", "xla", "cudnn", "blocked"] = "auto"
    # Training-only noise on the input embeddings (models/input_noise.py; off in eval/generate).
    # NEFTune (Jain et al. 2023): + U(-1, 1)·alpha/√(T·D). 0 = off; the paper uses 5-15.
    neftune_alpha: float = 0.0
    # Span masking of the inputs (targets kept): probability that a position is inside a masked
    # span (its embedding zeroed). 0 = off; 0.15 is BERT's / T5's corruption rate.
    span_mask_rate: float = 0.0
    # Tokens per masked span. 3: T5's mean span length.
    span_length: int = 3

    def __post_init__(self) -> None:
        _check_literals(self)
        if self.neftune_alpha < 0:
            raise ValueError(
                f"model.neftune_alpha must be >= 0 (0 = off), got {self.neftune_alpha}"
            )
        if not 0.0 <= self.span_mask_rate < 1.0:
            raise ValueError(f"model.span_mask_rate must be in [0, 1), got {self.span_mask_rate}")
        if self.span_length < 1:
            raise ValueError(f"model.span_length must be >= 1, got {self.span_length}")
        assert literal_values(StorageFormat) == STORAGE_FORMATS  # one vocabulary
        for name in (
            "vocab_size",
            "d_model",
            "n_layers",
            "n_heads",
            "n_kv_heads",
            "d_ff",
            "max_seq_len",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"ModelConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.vocab_valid <= self.vocab_size:
            raise ValueError(
                f"model.vocab_valid={self.vocab_valid}; valid: 0 (every id) or 1..vocab_size="
                f"{self.vocab_size}"
            )
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads} (GQA)"
            )
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ValueError(
                f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                "set head_dim explicitly"
            )
        if self.resolved_head_dim % 2:
            raise ValueError(f"head_dim={self.resolved_head_dim} must be even (RoPE pairs)")
        if self.rope_scaling != "none" and self.rope_factor <= 0:
            raise ValueError(f"model.rope_factor must be > 0, got {self.rope_factor}")
        if self.rope_scaling == "llama3" and not (
            0 < self.rope_low_freq_factor < self.rope_high_freq_factor
            and self.rope_original_max_len >= 1
        ):
            raise ValueError(
                "model.rope_scaling=llama3 needs 0 < rope_low_freq_factor < rope_high_freq_factor "
                "and rope_original_max_len >= 1"
            )
        if self.no_rope_layers and (
            len(self.no_rope_layers) != self.n_layers or set(self.no_rope_layers) - {0, 1}
        ):
            raise ValueError(
                f"model.no_rope_layers={list(self.no_rope_layers)}; valid: empty (every layer "
                f"uses RoPE) or n_layers={self.n_layers} flags 0/1 (1 = the layer uses RoPE)"
            )
        if self.sliding_window < 0 or self.query_pre_attn_scalar < 0:
            raise ValueError("model.sliding_window and model.query_pre_attn_scalar must be >= 0")
        if self.sliding_layers and (
            len(self.sliding_layers) != self.n_layers
            or set(self.sliding_layers) - {0, 1}
            or not self.sliding_window
        ):
            raise ValueError(
                f"model.sliding_layers={list(self.sliding_layers)}; valid: empty or "
                f"n_layers={self.n_layers} flags 0/1 (1 = the layer slides) with "
                "model.sliding_window > 0"
            )
        if self.init_std <= 0 or self.norm_eps <= 0 or self.rope_theta <= 0:
            raise ValueError("init_std, norm_eps and rope_theta must be > 0")
        if self.quant_group_size != 0 and self.quant_group_size not in QUANT_GROUP_SIZES:
            raise ValueError(
                f"quant_group_size={self.quant_group_size}; valid: "
                + ", ".join(map(str, QUANT_GROUP_SIZES))
                + ", or 0 (per channel)"
            )
        # What each packed format needs of every linear's input width K: int4 / NF4 / FP4 scale
        # blocks of quant_group_size rows; 2:4 metadata words of 32 rows (8 groups of 4); the
        # int4 + 2:4 variant both. sparse24 keeps bf16 values: no group size applies.
        sparse = self.weight_format in ("sparse24", "sparse24_int4")
        grouped = self.weight_format not in ("dense", "sparse24") and self.quant_group_size
        widths = {"d_model": self.d_model, "d_ff": self.d_ff}
        widths["n_heads*head_dim"] = self.n_heads * self.resolved_head_dim
        for name, width in widths.items():
            if grouped and width % self.quant_group_size:
                raise ValueError(
                    f"{self.weight_format} packs the inputs of every linear in blocks of "
                    f"quant_group_size={self.quant_group_size}, but {name}={width} is not "
                    "divisible by it"
                )
            if sparse and width % 32:
                raise ValueError(
                    f"{self.weight_format} stores 2:4 metadata in words of 32 input rows, but "
                    f"{name}={width} is not divisible by 32"
                )

    def projection_shapes(self) -> dict[str, tuple[int, int]]:
        """(d_in, d_out) of every projection adapters can target, by its name in LINEAR_NAMES
        (the unfused views of qkv / gate_up); lm_head only when untied (else there is none)."""
        D, F, H = self.d_model, self.d_ff, self.resolved_head_dim
        NH, KH = self.n_heads * H, self.n_kv_heads * H
        shapes = {"q": (D, NH), "k": (D, KH), "v": (D, KH), "o": (NH, D)}
        shapes |= {"gate": (D, F), "up": (D, F), "down": (F, D)}
        if not self.tie_embeddings:
            shapes["lm_head"] = (D, self.vocab_size)
        return shapes

    def projection_paths(self) -> dict[str, str]:
        """Module path (`layers.3.attn.q`, `lm_head`) -> projection name, what
        `adapter.target_regex` is matched against (models/linear.py::make_linear)."""
        section = {"q": "attn", "k": "attn", "v": "attn", "o": "attn"}
        section |= {"gate": "mlp", "up": "mlp", "down": "mlp"}
        paths = {
            f"layers.{i}.{section[name]}.{name}": name
            for i in range(self.n_layers)
            for name in section
        }
        if not self.tie_embeddings:
            paths["lm_head"] = "lm_head"
        return paths

    def check_uniform_targets(self) -> None:
        """Scanned layers share one structure: adapters must target every layer or none."""
        if self.adapter.kind == "none" or not self.adapter.target_regex:
            return
        for part in ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down"):
            hits = {self.adapter.targets_path(f"layers.{i}.{part}") for i in range(self.n_layers)}
            if len(hits) > 1:
                raise ValueError(
                    f"adapter.target_regex={self.adapter.target_regex!r} selects {part} in some "
                    "layers only; scanned layers share one structure: set model.scan_layers=false"
                )

    def check_adapter(self) -> None:
        """The adapter fits this model: its targets select at least one projection, and its rank
        is at most every selected projection's min(d_in, d_out). A check of the finished config
        (compactlm/config.py Config.check_combined): targets, rank and shape are set apart."""
        a = self.adapter
        if a.kind == "none":
            return
        shapes = self.projection_shapes()
        if not a.target_regex and not a.targets:
            raise ValueError(
                f"adapter.targets is empty: adapter.kind={a.kind} would train nothing; valid "
                f"targets: {', '.join(shapes)}, all-linear"
            )
        hit = {name for path, name in self.projection_paths().items() if a.targets_path(path)}
        if not hit:
            asked = (
                f"adapter.target_regex={a.target_regex!r}"
                if a.target_regex
                else f"adapter.targets={','.join(a.targets)}"
            )
            tied = self.tie_embeddings and ("lm_head" in a.targets or "lm_head" in a.target_regex)
            note = " (no lm_head: model.tie_embeddings=true)" if tied else ""
            raise ValueError(
                f"{asked} selects no layer of this model{note}; its projections are "
                f"layers.0-{self.n_layers - 1}.attn.q|k|v|o and .mlp.gate|up|down"
                + (", lm_head" if "lm_head" in shapes else "")
                + "; valid targets: "
                + ", ".join(shapes)
                + ", all-linear"
            )
        if self.scan_layers:
            self.check_uniform_targets()
        max_rank = min(min(shapes[name]) for name in hit)
        if a.rank > max_rank:
            dims = ", ".join(f"{n} {shapes[n][0]}->{shapes[n][1]}" for n in shapes if n in hit)
            raise ValueError(
                f"adapter.rank={a.rank} is more than a targeted layer allows (rank <= "
                f"min(d_in, d_out); targeted d_in->d_out: {dims}); valid: "
                f"adapter.rank=1..{max_rank}"
            )

    def rope_flags(self) -> tuple[bool, ...] | None:
        """Per layer, does it rotate q and k (no_rope_layers); None when every layer does."""
        if all(self.no_rope_layers):
            return None
        return tuple(bool(f) for f in self.no_rope_layers)

    def sliding_flags(self) -> tuple[bool, ...] | None:
        """Per layer, does it attend in a sliding window (sliding_layers); None when no layer
        does (sliding_window 0)."""
        if not self.sliding_window:
            return None
        return tuple(bool(f) for f in self.sliding_layers or (1,) * self.n_layers)

    def layer_flags(self) -> dict[str, tuple[bool, ...]]:
        """What differs between layers, by the name Attention takes it under (`use_rope`,
        `sliding`): only the kinds that do differ somewhere. THE list of per-layer data:
        Transformer scans them beside the layer parameters, calibration passes them per layer."""
        flags = {"use_rope": self.rope_flags(), "sliding": self.sliding_flags()}
        return {name: f for name, f in flags.items() if f is not None}

    @property
    def resolved_head_dim(self) -> int:
        """head_dim, or d_model // n_heads when head_dim is None."""
        return self.head_dim if self.head_dim is not None else self.d_model // self.n_heads

    @property
    def residual_init_std(self) -> float:
        """Init std of the projections that write into the residual stream (o, down)."""
        return self.init_std / (2 * self.n_layers) ** 0.5
