# Two entry points for a new user: `make demo` and `make test`. Each creates .venv when missing.
VENV ?= .venv
PY := $(VENV)/bin/python
# The PyTorch build to install first; override for another platform, e.g. TORCH_SPEC="torch torchvision".
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test quick lint venv versions

# The package and what it needs to run (the demo needs nothing more) ...
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e .
	touch $@

# ... and the tools of the test suite and lint (pytest, ruff, mypy, transformers, datasets, ...).
$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps torchmultimodal-nightly==2024.4.1 iopath portalocker
	touch $@

venv: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(PY) -m flava.train config=pretraining/demo.yaml

test: $(VENV)/.installed-dev
	$(PY) -m pytest

# The quick loop (under 90 s): every module's fast tests, without the end-to-end and multi-process ones.
quick: $(VENV)/.installed-dev
	$(PY) -m pytest -m "not slow"

# The declared dependency ranges at both ends (.ci/run runs it after the tests): two more
# environments, the lowest versions pyproject.toml declares and the newest, each running the
# quick suite and a 2-process DDP image-text run (about 6 GB of disk each).
versions:
	.ci/versions

# ruff (lint and format) on everything; mypy on src/ ([tool.mypy] in pyproject.toml).
lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy src
