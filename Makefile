# Two commands for a newcomer: `make demo` and `make test`. Every target does
# its own set-up, so nothing else needs to be run first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR := demo_data
# torch is pinned to the CPU build that lies on these machines' disks; an
# unpinned torch pulls a multi-GB CUDA build from PyPI.
TORCH_PIN := torch==2.13.0

.PHONY: install demo test test-slow test-all lint format clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	$(PY) -m pip install --quiet "$(TORCH_PIN)" -e ".[dev,bench]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) tools/demo.py --workdir $(DEMO_DIR)

test: $(STAMP)
	$(PY) -m pytest -q

# What CI runs after `make test`: the slow tests (kills, faults, peak RSS, crash
# resume) and every property test with 400 fixed examples.
test-slow: $(STAMP)
	REFRESH_HYPOTHESIS_PROFILE=ci $(PY) -m pytest -q -m "slow or hypothesis"

test-all: $(STAMP)
	REFRESH_HYPOTHESIS_PROFILE=thorough $(PY) -m pytest -q -m "slow or not slow"

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf $(DEMO_DIR) .pytest_cache build *.egg-info
