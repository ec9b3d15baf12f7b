"""compactlm: a JAX research framework for small language models."""

from setuptools import find_packages, setup

setup(
    name="compactlm",
    version="0.1.0",
    description="Compact Transformers in Flax NNX: training, LoRA/QLoRA, distillation, "
    "quantization, 2:4 pruning and Triton kernels.",
    python_requires=">=3.11",
    packages=find_packages(include=["compactlm", "compactlm.*"]),
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11",
        "numpy<2.4",  # triton 3.6's interpreter breaks on runtime-bounded loops under numpy>=2.4
        "triton>=3.6",
        "tokenizers>=0.20",
        # Chat templates of imported checkpoints (interop/hf_tokenizer.py), rendered in jinja2's
        # sandbox as transformers does; 3.1.6 fixes the sandbox escapes of earlier versions.
        "jinja2>=3.1.6",
        "safetensors>=0.4",  # HF checkpoints in and out (compactlm/interop): no pickle
        "tqdm>=4.66",
        "tensorboardX>=2.6",
        "matplotlib>=3.8",
        "jaxtyping>=0.2.36",  # array annotations at public boundaries (checked only under pytest)
        # The allocator the CLI preloads (compactlm/allocator.py): XLA:CPU's per-step temporary
        # buffer is mmap'ed and page-faulted afresh every step under glibc (docs/benchmarks.md).
        "cmeel-mimalloc>=3.2; sys_platform == 'linux' and "
        "(platform_machine == 'x86_64' or platform_machine == 'aarch64')",
    ],
    extras_require={
        # jax-triton is installed --no-deps by scripts/bootstrap.sh: its pinned deps would replace jax.
        "gpu": ["jax-triton>=0.4.1"],
        # beartype: the checker of the jaxtyping annotations under pytest (tests/conftest.py).
        # lm-eval's core needs no torch (0.4.13 pulls datasets, evaluate, scikit-learn, sacrebleu,
        # pandas, pyarrow: ~30 s of pip here); imported only by `compactlm eval RUN tasks=...`.
        "eval": ["lm_eval>=0.4.13,<0.5"],
        # llama.cpp's own GGUF container writer (pure Python + numpy): `export format=gguf`.
        "gguf": ["gguf>=0.17"],
        "test": ["pytest>=8", "beartype>=0.18", "lm_eval>=0.4.13,<0.5", "gguf>=0.17"],
        "dev": ["pytest>=8", "beartype>=0.18", "ruff>=0.6"],
    },
    entry_points={"console_scripts": ["compactlm=compactlm.cli:main"]},
)
