# Every target installs what it needs into a local virtualenv first (torch pinned to the CPU wheel on this machine).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-slow test-wheel lint format clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)  ## train SAL and BP on scikit-learn's digits, print both accuracies, save the SAL model
	$(PY) examples/train_digits.py

test: $(STAMP)  ## the default, fast test suite (what CI runs)
	$(PY) -m pytest -q

test-slow: $(STAMP)  ## only the long tests
	$(PY) -m pytest -q -m slow

test-wheel: $(STAMP)  ## build the wheel, install it without extras into a clean virtualenv, train the quickstart (CI)
	$(PY) -m pytest -q -m slow tests/test_install.py

lint: $(STAMP)
	$(PY) -m ruff check sal_hf tests examples scripts
	$(PY) -m ruff format --check sal_hf tests examples scripts

format: $(STAMP)
	$(PY) -m ruff check --fix sal_hf tests examples scripts
	$(PY) -m ruff format sal_hf tests examples scripts

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
