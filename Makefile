# One command each: `make demo` and `make test` create the virtualenv if missing, install, and run.
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.paragen-installed

.PHONY: demo test test-fast lint bench clean

# torch 2.13.0 is installed first and pinned, so pip never resolves a CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m paragen.demo

test: $(STAMP)
	$(PY) -m pytest -q

# The edit loop: unit tests on tiny random models; not the tests marked slow (built-in models, training,
# sampled-distribution tests, load and browser tests, killed subprocesses). `make test` runs them all.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests

bench: $(STAMP)
	$(VENV)/bin/paragen bench --task humaneval --limit 40 --strategies ar,speculative,lookup,jacobi,lookahead,hf-greedy,hf-assisted,hf-lookup --out out/bench

clean:
	rm -rf $(VENV) out .pytest_cache
