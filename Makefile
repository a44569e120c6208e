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
	HF_HUB_OFFLINE=1 $(VENV)/bin/harness run -m pre_merge

# pytest exits 5 when it collected nothing: that is a broken suite, not a pass.
test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -n 2 tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: no tests were collected" >&2; exit 1; fi; exit $$rc

# Benchmarks: the simulated worker's req/s; the proxy's added latency, capacity and memory; parallel vs serial boot.
bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/sim_worker_rps.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/proxy_overhead.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/boot_phases.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/packing.py

lint: $(STAMP)
	$(VENV)/bin/ruff check harness tests benchmarks
	$(VENV)/bin/mypy harness

clean:
	rm -rf $(VENV) build *.egg-info
