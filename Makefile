# The two front-door commands: `make train` (main job) and `make test` (the suite CI runs).
PY := .venv/bin/python

.PHONY: setup train test lint recipe
setup:
	@bash scripts/bootstrap.sh

train: setup
	$(PY) -m compactlm train tiny workdir=runs/tiny

recipe: setup
	$(PY) -m compactlm recipe preset=tiny workdir=runs/recipe

test: setup
	$(PY) -m pytest -q

lint: setup
	@$(PY) -m ruff --version >/dev/null 2>&1 || $(PY) -m pip install -q "ruff>=0.6"
	$(PY) -m ruff check compactlm tests && $(PY) -m ruff format --check compactlm tests
