# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates .venv in the repo and installs what it needs the first time.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-slow lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	rm -rf runs/demo
	$(VENV)/bin/imgcls train digits --out runs/demo --model classic --epochs 25
	$(VENV)/bin/imgcls evaluate runs/demo digits --out runs/demo/eval
	$(PY) examples/export_digits.py runs/demo/samples 5
	$(VENV)/bin/imgcls predict runs/demo runs/demo/samples --top-k 3

# Two pytest workers, one test file each at a time (the longest files first: tests/conftest.py):
# two cores run the suite in ~7 minutes, 9 with creating the venv (docs/BENCHMARKS.md).
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not slow" tests
	@command -v chromium >/dev/null 2>&1 || echo "make test: the browser test was skipped: no chromium here (apt-get install chromium; .ci/run does)"

# The tests marked slow (tuning searches, Ray Data, a two-process job, the larger backbones,
# PyTorch's whole train path, more SIGKILL-and-resume cases): ~13 min.
test-slow: $(STAMP)
	$(PY) -m pytest -q -n 2 -m slow tests

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

clean:
	rm -rf $(VENV) runs .pytest_cache
