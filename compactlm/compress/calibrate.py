"""Calibration: a deterministic sample of training sequences and per-linear input statistics.

One mechanism serves every algorithm. The model is processed block by block: block ℓ is run on
the calibration activations produced by the *already compressed* blocks 0 … ℓ−1 (GPTQ's and
SparseGPT's sequential scheme; Wanda and AWQ run the same way), while each of its linears'
inputs is recorded as streaming statistics (``InputStats``):

- ``XᵀX`` (the layer Hessian up to a factor; GPTQ, SparseGPT, AWQ's search loss),
- ``‖X[:, k]‖₂`` (Wanda) and ``mean |X[:, k]|`` (AWQ), and the per-input absmax.

There are four *sites* per block, one per distinct linear input: ``qkv`` (one statistic serves
q, k and v: they read the same normed x), ``o``, ``gate_up`` (serves gate and up) and ``down``.
A callback then compresses the block in place from those statistics; the compressed block's
outputs become the next block's inputs. Scanned (stacked ``[L, ...]``) and unrolled layers are
both handled: a scanned layer is sliced out, compressed, and written back.

The block runs under ``jax.jit`` with its linears wrapped by a recorder that returns their
inputs' statistics as extra outputs of the trace (nothing escapes the trace, nothing is added to
the model's code). Statistics are accumulated on the host in float64.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from compactlm.models.layers import make_context

# Site → (sub-module, linear attribute) inside a Block, and the projection names it serves.
SITES: dict[str, tuple[str, str]] = {
    "qkv": ("attn", "qkv_proj"),
    "o": ("attn", "o_proj"),
    "gate_up": ("mlp", "gate_up_proj"),
    "down": ("mlp", "down_proj"),
}
SITE_PARTS: dict[str, tuple[str, ...]] = {
    "qkv": ("q", "k", "v"),
    "o": ("o",),
    "gate_up": ("gate", "up"),
    "down": ("down",),
}
# Added to CalibConfig.seed so that calibration windows are not the windows of training step 0.
CALIB_SEED_SALT = 0x5EED_CA1B


@dataclasses.dataclass(frozen=True, kw_only=True)
class CalibConfig:
    """The calibration set (`calib.*` on the command line)."""

    # Sequences drawn from the run's training split. 128: GPTQ's, SparseGPT's and Wanda's
    # papers all calibrate on 128 sequences (of 2048 tokens there).
    sequences: int = 128
    # Tokens per sequence; 0 = the run's train.seq_len.
    seq_len: int = 0
    # Sequences per forward pass of a block (memory vs dispatch overhead).
    batch_size: int = 16
    # Seeds the window offsets (plus a fixed salt, so not training step 0's windows).
    seed: int = 0

    def __post_init__(self) -> None:
        if self.sequences < 1 or self.batch_size < 1 or self.seq_len < 0:
            raise ValueError(
                "calib.sequences and calib.batch_size must be >= 1 and calib.seq_len >= 0, got "
                f"{self.sequences}, {self.batch_size}, {self.seq_len}"
            )


def calibration_tokens(train_tokens: np.ndarray, cfg: CalibConfig, seq_len: int) -> np.ndarray:
    """[sequences, seq_len] int32 windows of the training tokens, a pure function of the seed."""
    from compactlm.data import get_batch

    t = cfg.seq_len or seq_len
    if train_tokens.size <= t + 1:
        raise ValueError(f"training split has {train_tokens.size} tokens, fewer than seq_len={t}")
    # A calibration set larger than the training split only re-reads it (windows overlap), at a
    # cost linear in its size (calib.sequences=100000 once ran for 7.5 minutes): refuse it.
    most = train_tokens.size // t
    if cfg.sequences > most:
        raise ValueError(
            f"calib.sequences={cfg.sequences} windows of {t} tokens would read the training "
            f"split ({train_tokens.size:,} tokens) {cfg.sequences * t / train_tokens.size:.1f} "
            f"times over; valid: 1 to {most} (the papers use 128)"
        )
    batch = get_batch(
        train_tokens, seed=CALIB_SEED_SALT + cfg.seed, step=0, batch_size=cfg.sequences, seq_len=t
    )
    return batch[:, :-1]


@dataclasses.dataclass
class InputStats:
    """Streaming statistics of one linear's input x[·, K] over the calibration tokens."""

    xtx: np.ndarray  # [K, K] float64, Σ xᵀx
    abs_sum: np.ndarray  # [K] float64, Σ |x|
    absmax: np.ndarray  # [K] float64, max |x|
    count: int = 0  # tokens seen

    @classmethod
    def empty(cls, k: int) -> InputStats:
        return cls(np.zeros((k, k)), np.zeros(k), np.zeros(k))

    def add(self, xtx, abs_sum, absmax, count: int) -> None:
        self.xtx += np.asarray(xtx, np.float64)
        self.abs_sum += np.asarray(abs_sum, np.float64)
        self.absmax = np.maximum(self.absmax, np.asarray(absmax, np.float64))
        self.count += count

    @property
    def hessian(self) -> np.ndarray:
        """XᵀX / n: the layer error is tr(ΔWᵀ H ΔW) per token."""
        return self.xtx / max(self.count, 1)

    @property
    def x_norm(self) -> np.ndarray:
        """‖X[:, k]‖₂ over all calibration tokens (Wanda's activation norm)."""
        return np.sqrt(np.diag(self.xtx))

    @property
    def mean_abs(self) -> np.ndarray:
        """mean |X[:, k]| (AWQ's activation scale)."""
        return self.abs_sum / max(self.count, 1)


class _Recorder:
    """Stands in for a linear inside one trace: returns its output, keeps its input's stats."""

    def __init__(self, inner, sink: dict, site: str):
        self.inner, self.sink, self.site = inner, sink, site

    def __getattr__(self, name: str):  # layout, in_features, ...: the wrapped linear's
        return getattr(self.inner, name)

    def __call__(self, x, rng=None):
        x2 = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
        xtx = jnp.einsum("mk,mj->kj", x2, x2, preferred_element_type=jnp.float32)
        ax = jnp.abs(x2)
        self.sink[self.site] = (xtx, ax.sum(axis=0), ax.max(axis=0))
        return self.inner(x, rng=rng)


@partial(jax.jit, static_argnums=(0, 3))
def _block_forward(graphdef, state, x_BTD, record: bool, ctx, flags=None):
    block = nnx.merge(graphdef, state)
    sink: dict = {}
    if record:
        for site, (sub, attr) in SITES.items():
            parent = getattr(block, sub)
            object.__setattr__(parent, attr, _Recorder(getattr(parent, attr), sink, site))
    y_BTD, _ = block(x_BTD, ctx, flags=flags)
    return y_BTD, sink


# ----------------------------------------------------------------------------- layer access


def n_blocks(model) -> int:
    return model.cfg.n_layers


def get_block(model, layer: int):
    """Block ``layer`` as a standalone module (a slice of the stacked state when scanned)."""
    if not model.cfg.scan_layers:
        return model.layers[layer]
    graphdef, state = nnx.split(model.layers)
    return nnx.merge(graphdef, jax.tree.map(lambda a: a[layer], state))


def set_block(model, layer: int, block) -> None:
    """Write ``block``'s state back into layer ``layer`` (no-op for unrolled: same object)."""
    if not model.cfg.scan_layers:
        return
    state = nnx.state(model.layers)
    new = nnx.state(block)
    nnx.update(model.layers, jax.tree.map(lambda a, b: a.at[layer].set(b), state, new))


def _embed(model, tokens_BT):
    """The model's input to block 0 and the pass's Context (as Transformer.__call__ makes
    them, through the same functions)."""
    positions_BT = jnp.broadcast_to(
        jnp.arange(tokens_BT.shape[1], dtype=jnp.int32), tokens_BT.shape
    )
    return model.embed(tokens_BT), make_context(positions_BT, model.cfg)


# A callback that compresses block `layer` in place from its sites' statistics.
CompressBlock = Callable[[int, object, dict[str, InputStats]], None]


def layerwise(model, tokens: np.ndarray, compress_block: CompressBlock, *, batch_size: int = 16):
    """Compress every block in order, each calibrated on the compressed model's activations."""
    chunks = [tokens[i : i + batch_size] for i in range(0, len(tokens), batch_size)]
    xs, ctxs = [], []
    for c in chunks:
        x, ctx = _embed(model, jnp.asarray(c))
        xs.append(x)
        ctxs.append(ctx)
    layer_flags = model.cfg.layer_flags()  # as Transformer.__call__ hands them to each block
    for layer in range(n_blocks(model)):
        flags = {name: jnp.asarray(f[layer]) for name, f in layer_flags.items()}
        block = get_block(model, layer)
        graphdef, state = nnx.split(block)
        stats: dict[str, InputStats] = {}
        for x, ctx in zip(xs, ctxs, strict=True):
            _, sink = _block_forward(graphdef, state, x, True, ctx, flags)
            n = x.shape[0] * x.shape[1]
            for site, (xtx, abs_sum, absmax) in jax.device_get(sink).items():
                if site not in stats:
                    stats[site] = InputStats.empty(xtx.shape[0])
                # The down-projection input appears once per token like the others.
                stats[site].add(xtx, abs_sum, absmax, n)
        compress_block(layer, block, stats)
        set_block(model, layer, block)
        graphdef, state = nnx.split(block)
        xs = [
            _block_forward(graphdef, state, x, False, ctx, flags)[0]
            for x, ctx in zip(xs, ctxs, strict=True)
        ]
    return model
