"""DataConfig (`data.*`), the augmentation names it checks, and DataError: the bottom of data/.

It imports no other data module, so the corpus reader, the tokenizers, the token cache and the
augmentations all read their options and raise their errors from here, and compactlm.config
composes `data.*` without importing the data pipeline (as models/config.py and train/config.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


class DataError(ValueError):
    """Bad data configuration or input: the message names the problem and the valid choices."""


# Host-side sequence augmentations, in the vocabulary of `data.augment`.
AUGMENTATIONS: tuple[str, ...] = ("dropout", "swap", "insert")
# Names people reach for that act on the model's inputs instead: where to set them.
MODEL_INPUT_AUGMENTATIONS = {
    "span_mask": "model.span_mask_rate (and model.span_length)",
    "neftune": "model.neftune_alpha",
}


def padded_vocab_size(vocab_size: int) -> int:
    """model.vocab_size for a vocabulary of `vocab_size` ids (a tokenizer's, or an imported
    checkpoint's): padded to a multiple of 64 (divides any tensor axis up to 64 and keeps logits
    matmuls aligned, as nanoGPT's 50304; model.vocab_valid masks the padding of an import)."""
    return -(-vocab_size // 64) * 64


def check_augment(names: tuple[str, ...], rate: float) -> None:
    """Validate `data.augment` / `data.augment_rate`; one-line DataError listing valid choices."""
    for name in names:
        if name in MODEL_INPUT_AUGMENTATIONS:
            raise DataError(
                f"data.augment={name!r} acts on the model inputs only (targets kept): set "
                f"{MODEL_INPUT_AUGMENTATIONS[name]} instead"
            )
        if name not in AUGMENTATIONS:
            raise DataError(
                f"unknown data.augment {name!r}; valid: none, {', '.join(AUGMENTATIONS)} "
                "(comma-separated, applied in order)"
            )
    if len(set(names)) != len(names):
        raise DataError(f"data.augment={','.join(names)!r} names an augmentation twice")
    if not 0.0 <= rate < 1.0:
        raise DataError(f"data.augment_rate must be in [0, 1), got {rate}")


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Which text to train on, how to tokenize it, and how to hold out validation."""

    # "pystdlib" (this Python's standard-library sources, ~11 MB, no tests), "pydocs" (the
    # reference-documentation topics in pydoc_data, ~0.5 MB English), or a path: a text file, a
    # directory (files chosen by `glob`), a glob pattern, or a .jsonl file. Default: the biggest
    # corpus that needs no download.
    corpus: str = "pystdlib"
    # "byte": ids are UTF-8 bytes (+3 specials), nothing to train or store; the default because
    # it works on any text and bits-per-byte is directly comparable across runs. "bpe": byte-level
    # BPE trained on the training split (fewer tokens per byte, so longer context per step).
    # "hf": the tokenizer.json of a checkpoint brought in by `compactlm import` (run dir only).
    tokenizer: Literal["byte", "bpe", "hf"] = "byte"
    # BPE vocabulary size including the 3 special tokens. 4096 keeps the embedding small next to
    # a tiny model and still gives ~3.4 bytes/token on pystdlib (~4.2 on pydocs).
    bpe_vocab_size: int = 4096
    # Fraction of the corpus' UTF-8 bytes held out as whole validation documents. 0.025 gives
    # ~270 KB of pystdlib (29 files): enough for a stable bits-per-byte, quick to evaluate.
    val_fraction: float = 0.025
    # Seeds the document hash that picks validation documents; recorded in the run's metadata.
    split_seed: int = 0
    # Optional cap on corpus size in UTF-8 bytes (first documents in id order); None = all.
    # For quick experiments and tests.
    max_corpus_bytes: int | None = None
    # Low-data experiments: train on only the first fraction of the TRAINING split's tokens
    # (cut after the split, so the validation split stays the full corpus'); 1 = all of it.
    train_fraction: float = 1.0
    # Where token caches and trained BPE tokenizers live. "" = $COMPACTLM_CACHE, else
    # ~/.cache/compactlm (resolved when used, so the recorded config stays portable).
    cache_dir: str = ""
    # Files of a directory corpus, relative to it ("**/" recurses). Text files by default so a
    # directory with binaries in it does not fail; use "**/*" or "**/*.md" otherwise.
    glob: str = "**/*.txt"
    # JSONL corpora: the field of each line's object that holds the document text.
    jsonl_field: str = "text"
    # Token-level augmentation of TRAINING batches only (never evaluation), comma-separated and
    # applied in order: dropout (random deletion, refilled from the right), swap (adjacent
    # swap), insert (random ordinary-token insertion); data/augment.py. They act on the whole
    # window (inputs and targets). () / none = off: pretraining on plenty of data needs none.
    augment: tuple[str, ...] = ()
    # Probability per token of each augmentation in `augment` (EDA, Wei & Zou 2019: 0.1).
    augment_rate: float = 0.1

    def __post_init__(self) -> None:
        if self.augment == ("none",):
            object.__setattr__(self, "augment", ())
        check_augment(tuple(self.augment), self.augment_rate)
        if self.tokenizer not in ("byte", "bpe", "hf"):
            raise DataError(f"data.tokenizer={self.tokenizer!r}; valid: 'byte', 'bpe', 'hf'")
        if not 0.0 < self.val_fraction < 0.5:
            raise DataError(f"data.val_fraction must be in (0, 0.5), got {self.val_fraction}")
        if self.max_corpus_bytes is not None and self.max_corpus_bytes <= 0:
            raise DataError(f"data.max_corpus_bytes must be positive, got {self.max_corpus_bytes}")
        if not 0.0 < self.train_fraction <= 1.0:
            raise DataError(f"data.train_fraction must be in (0, 1], got {self.train_fraction}")
