# The two front-door commands: `make train` (main job) and `make test` (the suite CI runs).
PY := .venv/bin/python

.PHONY: setup setup-run train test lint recipe
setup:
	@bash scripts/bootstrap.sh

setup-run:  # what running needs: no CUDA export plugin (tests and `bench kernels sass=1` only)
	@bash scripts/bootstrap.sh --no-export-plugin

# `make train`'s recipe for `tiny`: beat xz -9 on pystdlib's validation split by a wide margin in
# about four minutes on 2 CPU cores, install included (docs/benchmarks.md, "The default job").
# Byte-level BPE with 4,096 ids trained on the training split (~3.3 bytes per token: each step
# sees 3.3x the text of byte-level ids), Muon on the block linears; no periodic evaluation (the
# final one scores the whole split); one checkpoint, at the end (Ctrl-C still saves one).
# `compactlm train tiny` alone keeps the preset's byte-level AdamW defaults (sweeps rely on them).
TRAIN_RECIPE := data.tokenizer=bpe optim.kind=muon train.steps=600 train.eval_every=0 train.checkpoint_every=0

train: setup-run
	$(PY) -m compactlm train tiny $(TRAIN_RECIPE) workdir=runs/make-train

recipe: setup
	$(PY) -m compactlm recipe preset=tiny workdir=runs/recipe

test: setup
	$(PY) -m pytest -q

lint: setup
	@$(PY) -m ruff --version >/dev/null 2>&1 || $(PY) -m pip install -q "ruff>=0.6"
	$(PY) -m ruff check compactlm tests && $(PY) -m ruff format --check compactlm tests
