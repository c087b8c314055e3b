# The project's interface: README and CI call these targets and nothing else.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
PYTEST_ARGS ?=

.PHONY: setup test lint format simulate bench-engine clean

setup: $(STAMP)

# A second `make setup` costs nothing: the stamp is newer than the pins.
$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -r requirements.txt
	$(VENV)/bin/pip install --no-deps -e .
	touch $@

test: $(STAMP)
	$(PY) -m pytest -m "not gpu" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Paper-scale throughput from the H200 calibration (simulated rows, table, Gantt and N-sweep PNGs).
CALIBRATION ?= experiments/calibration/h200
simulate: $(STAMP)
	$(PY) -m experiments.simulate --calibration-dir $(CALIBRATION) --out results/simulated
	$(PY) -m analysis.simulated results/simulated

# Every schedule, ddp and the torch pipelining peer on a synthetic CNN pair, 2 processes, CPU.
bench-engine: $(STAMP)
	$(PY) -m experiments.bench_engine --out results/engine
	$(PY) -m analysis.bench results/engine --command "make bench-engine" \
		--title "Engine benchmark: synthetic CNN teacher/student, 2 stages, CPU"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
