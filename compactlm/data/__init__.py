"""Data: embedded and user corpora, byte/BPE tokenizers, cached token memmaps, batches."""

from compactlm.data.config import DataConfig, DataError
from compactlm.data.corpus import (
    BUILTIN_CORPORA,
    Document,
    Split,
    load_corpus,
    split_corpus,
)
from compactlm.data.dataset import (
    Data,
    EvalBatch,
    covered_bytes,
    eval_batches,
    get_batch,
    prepare_data,
    tokenize_documents,
)
from compactlm.data.tokenizer import (
    SPECIAL_TOKENS,
    BpeTokenizer,
    ByteTokenizer,
    HfTokenizer,
    Tokenizer,
    load_tokenizer,
    make_tokenizer,
)

__all__ = [
    "BUILTIN_CORPORA",
    "SPECIAL_TOKENS",
    "BpeTokenizer",
    "ByteTokenizer",
    "Data",
    "DataConfig",
    "DataError",
    "Document",
    "EvalBatch",
    "HfTokenizer",
    "Split",
    "Tokenizer",
    "covered_bytes",
    "eval_batches",
    "get_batch",
    "load_corpus",
    "load_tokenizer",
    "make_tokenizer",
    "prepare_data",
    "split_corpus",
    "tokenize_documents",
]
