# Two entry points from a fresh clone: `make run` and `make test`. Each creates .venv and installs first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test bench lint install clean dynamo

# NVIDIA Dynamo 1.6.1 in its own environment, for the Dynamo gate (profiles/dynamo.py, launch/dynamo.sh).
# --no-deps: its `aisimulate` dependency is a stub that downloads from another index and fails; the list below is
# what the frontend and the mocker import. About 620 MB. A failed install leaves its pip log in DYNAMO_LOG, which
# tests/e2e/test_dynamo.py prints as its failure.
DYNAMO_VENV := .venv-dynamo
DYNAMO_STAMP := $(DYNAMO_VENV)/.installed-1.6.1
DYNAMO_LOG := $(DYNAMO_VENV).install.log
DYNAMO_PKGS := ai-dynamo==1.6.1 ai-dynamo-runtime==1.6.1
DYNAMO_DEPS := aiohttp msgspec prometheus-client pyzmq tqdm transformers typing-extensions zstandard uvloop \
	pydantic==2.13.5 certifi redis

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,routers]'
	touch $(STAMP)

install: $(STAMP)

$(DYNAMO_STAMP):
	@echo "make dynamo: building $(DYNAMO_VENV) ($(DYNAMO_PKGS)); log: $(DYNAMO_LOG)"
	@( $(PYTHON) -m venv $(DYNAMO_VENV) \
	  && $(DYNAMO_VENV)/bin/python -m pip install --upgrade pip \
	  && $(DYNAMO_VENV)/bin/python -m pip install --no-deps $(DYNAMO_PKGS) \
	  && $(DYNAMO_VENV)/bin/python -m pip install $(DYNAMO_DEPS) \
	  && $(DYNAMO_VENV)/bin/python -c 'import dynamo.frontend, dynamo.mocker' ) >$(DYNAMO_LOG) 2>&1 \
	  && touch $@ \
	  || { echo "make dynamo: FAILED; the end of $(DYNAMO_LOG):" >&2; tail -n 25 $(DYNAMO_LOG) >&2; exit 1; }

dynamo: $(DYNAMO_STAMP)

run: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/harness run -m pre_merge

# pytest exits 5 when it collected nothing: that is a broken suite, not a pass.
# The Dynamo environment is built first; if that fails, the rest still runs and test_dynamo.py fails with pip's error.
test: $(STAMP)
	-@$(MAKE) --no-print-directory dynamo
	HF_HUB_OFFLINE=1 $(PY) -m pytest -n 2 tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: no tests were collected" >&2; exit 1; fi; exit $$rc

# Benchmarks: the simulated worker's req/s; the proxy's added latency, capacity and memory; parallel vs serial boot.
bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/sim_worker_rps.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/proxy_overhead.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/boot_phases.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/generator_ceiling.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/packing.py

lint: $(STAMP)
	$(VENV)/bin/ruff check harness tests benchmarks
	$(VENV)/bin/mypy harness

clean:
	rm -rf $(VENV) $(DYNAMO_VENV) $(DYNAMO_LOG) build *.egg-info
