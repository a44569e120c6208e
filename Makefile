# Two entry points from a fresh clone: `make run` and `make test`. Each creates .venv and installs first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test bench lint install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,routers]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m harness.cli run

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -n 2 tests

# Benchmarks: the simulated worker's req/s, then the proxy's added latency, capacity and memory (~3 min).
bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/sim_worker_rps.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/proxy_overhead.py

lint: $(STAMP)
	$(VENV)/bin/ruff check harness tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
