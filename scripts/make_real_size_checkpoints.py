"""Write random-weight Hugging Face checkpoints at the published shapes of real models (issue 18).

Run BY HAND in the dev venv with torch + transformers (never in CI, nothing committed but this
script); nothing is downloaded: each model is `AutoModelForCausalLM.from_config` of the
published config.json below, its weights random (seed 0) and saved in bfloat16, as the real
checkpoints are stored:

    DEV=/work/devvenv/bin/python   # torch 2.13.0+cpu, transformers 5.25.0
    $DEV scripts/make_real_size_checkpoints.py smollm2-135m /tmp/real/smollm2-135m
    $DEV scripts/make_real_size_checkpoints.py qwen2.5-0.5b /tmp/real/qwen2.5-0.5b
    $DEV scripts/make_real_size_checkpoints.py --count   # every shape's count

`--count` builds every shape of PUBLISHED on torch's meta device (no memory) and checks that
transformers' `sum(p.numel() for p in model.parameters())` is the published count; the preset
test (tests/test_presets.py) reads PUBLISHED too (this module imports torch only inside
functions), so presets, importer and transformers are checked against one table.

The directory gets config.json, generation_config.json and model.safetensors
(`save_pretrained`), and tokenizer.json + tokenizer_config.json: a byte-level BPE whose
vocabulary has the real model's number of ids. Training one that large on local text takes
minutes, so the merges are those `tokenizers` learns from ~2 MB of this interpreter's standard
library (realistic token lengths on code) and then synthetic ones — each existing token in id
order extended by one byte character — until the vocabulary has exactly the real count. It
loads through `tokenizers` and round-trips any text (byte-level: every byte has a token).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

# The published config.json of each model (the fields that shape it; transformers fills the
# rest with its defaults), the parameter count its model card / transformers gives, the real
# tokenizer's special tokens and where they sit. Sources: the Hub config.json of each repo as
# published (HuggingFaceTB/SmolLM2-135M, HuggingFaceTB/SmolLM2-360M, Qwen/Qwen2.5-0.5B,
# Qwen/Qwen3-0.6B, meta-llama/Llama-3.2-1B, HuggingFaceTB/SmolLM3-3B, google/gemma-3-270m);
# every count is checked against transformers 5.25.0 by `--count`.
PUBLISHED: dict[str, dict[str, Any]] = {
    "smollm2-135m": {
        "params": 134_515_008,
        "config": {
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
            "vocab_size": 49152,
            "hidden_size": 576,
            "intermediate_size": 1536,
            "num_hidden_layers": 30,
            "num_attention_heads": 9,
            "num_key_value_heads": 3,
            "head_dim": 64,
            "hidden_act": "silu",
            # 8192 in the current config.json (the first revision said 2048).
            "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-5,
            "rope_theta": 100000.0,
            "initializer_range": 0.041666666666666664,
            "tie_word_embeddings": True,
            "bos_token_id": 0,
            "eos_token_id": 0,
        },
        # <|endoftext|> 0, <|im_start|> 1, <|im_end|> 2 lead the vocabulary (SmolLM2's own).
        "specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "specials_first": True,
        "tokenizer_ids": 49152,
        "eos": "<|endoftext|>",
    },
    "smollm2-360m": {
        "params": 361_821_120,
        "config": {
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
            "vocab_size": 49152,
            "hidden_size": 960,
            "intermediate_size": 2560,
            "num_hidden_layers": 32,
            "num_attention_heads": 15,
            "num_key_value_heads": 5,
            "head_dim": 64,
            "hidden_act": "silu",
            "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-5,
            "rope_theta": 100000.0,
            "initializer_range": 0.02,
            "tie_word_embeddings": True,
            "bos_token_id": 0,
            "eos_token_id": 0,
        },
        "specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "specials_first": True,
        "tokenizer_ids": 49152,
        "eos": "<|endoftext|>",
    },
    "qwen2.5-0.5b": {
        "params": 494_032_768,
        "config": {
            "model_type": "qwen2",
            "architectures": ["Qwen2ForCausalLM"],
            "vocab_size": 151936,
            "hidden_size": 896,
            "intermediate_size": 4864,
            "num_hidden_layers": 24,
            "num_attention_heads": 14,
            "num_key_value_heads": 2,
            "hidden_act": "silu",
            "max_position_embeddings": 32768,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0,
            "initializer_range": 0.02,
            "tie_word_embeddings": True,
            "use_sliding_window": False,
            "sliding_window": 32768,
            "max_window_layers": 24,
            "bos_token_id": 151643,
            "eos_token_id": 151643,
        },
        # 151,643 byte-level BPE ids, then the specials from 151,643 (<|endoftext|>,
        # <|im_start|>, <|im_end|>, ... 22 in the real one, 151,665 ids): the embedding's
        # 151,936 rows are more than the tokenizer has, as in the real checkpoint.
        "specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "specials_first": False,
        "tokenizer_ids": 151_646,
        "eos": "<|endoftext|>",
    },
    "qwen3-0.6b": {
        "params": 596_049_920,
        "config": {
            "model_type": "qwen3",
            "architectures": ["Qwen3ForCausalLM"],
            "vocab_size": 151936,
            "hidden_size": 1024,
            "intermediate_size": 3072,
            "num_hidden_layers": 28,
            "num_attention_heads": 16,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "hidden_act": "silu",
            "max_position_embeddings": 40960,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0,
            "initializer_range": 0.02,
            "tie_word_embeddings": True,
            "attention_bias": False,
            "use_sliding_window": False,
            "sliding_window": None,
            "max_window_layers": 28,
            "bos_token_id": 151643,
            "eos_token_id": 151645,
        },
        "specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "specials_first": False,
        "tokenizer_ids": 151_646,
        "eos": "<|im_end|>",
    },
    "llama3.2-1b": {
        "params": 1_235_814_400,
        "config": {
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
            "vocab_size": 128256,
            "hidden_size": 2048,
            "intermediate_size": 8192,
            "num_hidden_layers": 16,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "head_dim": 64,
            "hidden_act": "silu",
            "max_position_embeddings": 131072,
            "rms_norm_eps": 1e-5,
            "rope_theta": 500000.0,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 32.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
            "initializer_range": 0.02,
            "tie_word_embeddings": True,
            "bos_token_id": 128000,
            "eos_token_id": 128001,
        },
        # 128,000 BPE ids, then 256 reserved specials (<|begin_of_text|> 128000, ...).
        "specials": ["<|begin_of_text|>", "<|end_of_text|>"],
        "specials_first": False,
        "tokenizer_ids": 128_002,
        "eos": "<|end_of_text|>",
    },
    "smollm3-3b": {
        "params": 3_075_098_624,
        "config": {
            "model_type": "smollm3",
            "architectures": ["SmolLM3ForCausalLM"],
            "vocab_size": 128256,
            "hidden_size": 2048,
            "intermediate_size": 11008,
            "num_hidden_layers": 36,
            "num_attention_heads": 16,
            "num_key_value_heads": 4,
            "hidden_act": "silu",
            # 64k and θ = 5e6: the final long-context stage (SmolLM3 blog, "Long Context
            # extension"); transformers' SmolLM3Config defaults are 32768 and 2e6.
            "max_position_embeddings": 65536,
            "rms_norm_eps": 1e-6,
            "rope_theta": 5000000.0,
            "initializer_range": 0.02,
            "tie_word_embeddings": True,
            "use_sliding_window": False,
            # Every 4th layer without RoPE (1 = uses RoPE), transformers' own default rule.
            "no_rope_layers": [int((i + 1) % 4 != 0) for i in range(36)],
            "bos_token_id": None,
            "eos_token_id": 128012,
        },
        # Only the first two of the 256 reserved specials are written: the real eos
        # (<|im_end|>, 128012) is past this tokenizer's ids, so its eos is <|end_of_text|>.
        "specials": ["<|begin_of_text|>", "<|end_of_text|>"],
        "specials_first": False,
        "tokenizer_ids": 128_002,
        "eos": "<|end_of_text|>",
    },
    "gemma3-270m": {
        "params": 268_098_176,
        "config": {
            "model_type": "gemma3_text",
            "architectures": ["Gemma3ForCausalLM"],
            "vocab_size": 262144,
            "hidden_size": 640,
            "intermediate_size": 2048,
            "num_hidden_layers": 18,
            "num_attention_heads": 4,
            "num_key_value_heads": 1,
            "head_dim": 256,
            "hidden_activation": "gelu_pytorch_tanh",
            "max_position_embeddings": 32768,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0,
            "rope_local_base_freq": 10000.0,
            "sliding_window": 512,
            "query_pre_attn_scalar": 256,
            # 5 sliding-window layers, then 1 global, three times.
            "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 3,
            "initializer_range": 0.02,
            "tie_word_embeddings": True,
            "bos_token_id": 2,
            "eos_token_id": 1,
            "pad_token_id": 0,
        },
        # Gemma's tokenizer is a SentencePiece-style BPE (<pad> 0, <eos> 1, <bos> 2); this
        # script writes only the checkpoints compactlm imports today (not gemma3 yet).
        "specials": ["<pad>", "<eos>", "<bos>"],
        "specials_first": True,
        "tokenizer_ids": 262_144,
        "eos": "<eos>",
    },
}

# Local training text for the learned part of the merges: the first TRAIN_BYTES of this
# interpreter's standard library (sorted paths), deterministic for a given Python.
TRAIN_BYTES = 2_000_000
SEED = 0


def count_params(name: str) -> int:
    """transformers' parameter count of PUBLISHED[name], built on the meta device (no memory)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(PUBLISHED[name]["config"])
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def _training_text() -> list[str]:
    """~TRAIN_BYTES of the standard library's .py files, whole files in sorted path order."""
    stdlib = Path(os.__file__).parent
    texts, size = [], 0
    for path in sorted(stdlib.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        texts.append(text)
        size += len(text.encode("utf-8"))
        if size >= TRAIN_BYTES:
            break
    return texts


def make_tokenizer(name: str) -> tuple[Any, int]:
    """(tokenizer, learned merges): a byte-level BPE `tokenizers.Tokenizer` with exactly
    PUBLISHED[name]["tokenizer_ids"] ids, learned merges then synthetic ones, the specials first
    or last as in the real tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    spec = PUBLISHED[name]
    specials = spec["specials"]
    n_regular = spec["tokenizer_ids"] - len(specials)
    learner = Tokenizer(models.BPE())
    learner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=n_regular,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    learner.train_from_iterator(_training_text(), trainer=trainer)
    learned = json.loads(learner.to_str())["model"]
    pieces = sorted(learned["vocab"], key=learned["vocab"].get)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learned["merges"]]
    n_learned = len(merges)
    known = set(pieces)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    # Synthetic merges: every token so far (in id order, so shorter ones first) extended by one
    # byte character; a merge of two existing tokens, so the BPE stays consistent.
    i = 0
    while len(pieces) < n_regular:
        left = pieces[i]
        for right in alphabet:
            piece = left + right
            if piece not in known:
                known.add(piece)
                pieces.append(piece)
                merges.append((left, right))
                if len(pieces) == n_regular:
                    break
        i += 1
    regular = {piece: j for j, piece in enumerate(pieces)}
    if spec["specials_first"]:
        vocab = {s: j for j, s in enumerate(specials)} | {
            p: len(specials) + j for p, j in regular.items()
        }
    else:
        vocab = regular | {s: n_regular + j for j, s in enumerate(specials)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    # Already in the vocabulary at their ids: this only marks them special (never split).
    tok.add_special_tokens(specials)
    assert tok.get_vocab_size() == spec["tokenizer_ids"], (tok.get_vocab_size(), name)
    return tok, n_learned


def write_checkpoint(name: str, out: Path) -> dict[str, Any]:
    """config.json, generation_config.json, model.safetensors (bf16), tokenizer files in out."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = PUBLISHED[name]
    if out.exists() and any(out.iterdir()):
        sys.exit(f"{out} exists and is not empty")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tok, n_learned = make_tokenizer(name)
    t_tok = time.perf_counter() - t0
    tok.save(str(out / "tokenizer.json"))
    sample = "def f(x):\n    return x ** 2  # héllo → ∑ 🙂\n"
    ids = tok.encode(sample, add_special_tokens=False).ids
    assert tok.decode(ids) == sample, "tokenizer.json does not round-trip"
    tok_cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": spec["eos"],
        "pad_token": spec["eos"],
        "model_max_length": spec["config"]["max_position_embeddings"],
        "clean_up_tokenization_spaces": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")

    cfg = dict(spec["config"])
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    torch.manual_seed(SEED)
    t0 = time.perf_counter()
    # Built (and randomly initialised) directly in bfloat16: what real checkpoints store, and
    # half the memory of an f32 build.
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == spec["params"], (name, n_params, spec["params"])
    model.save_pretrained(str(out))
    t_model = time.perf_counter() - t0
    weights = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    return {
        "name": name,
        "out": str(out),
        "params": n_params,
        "safetensors_bytes": weights,
        "tokenizer_ids": tok.get_vocab_size(),
        "learned_merges": n_learned,
        "tokenizer_s": round(t_tok, 1),
        "model_s": round(t_model, 1),
        "bytes_per_token_on_sample": round(len(sample.encode()) / len(ids), 2),
    }


def main(argv: list[str]) -> int:
    """`NAME OUT_DIR` writes one checkpoint; `--count` checks every published count."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="?", choices=sorted(PUBLISHED))
    parser.add_argument("out", nargs="?", type=Path)
    parser.add_argument("--count", action="store_true", help="check every count (meta device)")
    args = parser.parse_args(argv)
    if args.count:
        ok = True
        for name, spec in PUBLISHED.items():
            n = count_params(name)
            ok &= n == spec["params"]
            print(f"{name:14s} transformers {n:>15,}  published {spec['params']:>15,}  "
                  f"{'equal' if n == spec['params'] else 'DIFFERENT'}")  # fmt: skip
        return 0 if ok else 1
    if args.name is None or args.out is None:
        parser.error("give NAME OUT_DIR, or --count")
    print(json.dumps(write_checkpoint(args.name, args.out), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
