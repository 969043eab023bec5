# `make demo`, `make test`, `make bench`, `make reproduce`: each creates .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.robustagg-installed
export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: demo test bench reproduce install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# the CPU wheel of torch; an unpinned torch would pull a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,flower]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) experiments/demo.py

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	# ByzFL is a bench-only peer; --no-deps keeps it from replacing torch with a CUDA build
	$(PY) -m pip install -q --no-deps byzfl==0.0.11 || echo "byzfl not installable: peer columns stay empty"
	$(PY) experiments/bench_aggregators.py --write docs/benchmarks.md
	$(PY) experiments/bench_aggregators.py --new --write docs/benchmarks.md
	$(PY) experiments/bench_election.py
	$(PY) experiments/bench_training.py --write docs/benchmarks.md

# every seed paper at CPU scale (results/<name>/: table.md, metrics.csv, plot.png; about 27 minutes
# on 2 idle cores, resumable), then the slow-marked tests (the --quick variants and their ranking checks)
reproduce: $(STAMP)
	$(PY) -m robustagg.cli reproduce all
	$(PY) -m pytest -q -m slow

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
