# The project's interface: README and CI call these targets and nothing else.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
PYTEST_ARGS ?=

.PHONY: setup test lint format data simulate bench-engine bench-byol accuracy-byol report clean

setup: $(STAMP)

# A second `make setup` costs nothing: the stamp is newer than the pins.
$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -r requirements.txt
	$(VENV)/bin/pip install --no-deps -r requirements-nodeps.txt
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

# Fashion-MNIST from Debian's dataset-fashion-mnist package (needs root and apt), unless it is
# already there or DATA_DIR points at the IDX files.
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
data:
	@if [ -n "$$DATA_DIR" ] || [ -e $(FMNIST) ]; then echo "Fashion-MNIST: present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else echo "Fashion-MNIST missing: run 'sudo apt-get install dataset-fashion-mnist', or set DATA_DIR to a folder with the IDX files"; exit 2; fi

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

# BYOL: every schedule, ddp and the torch pipelining peer side by side (CPU default, about 6 min).
# On a GPU node: make bench-byol DEVICE=cuda NPROC=4 MODEL=resnet50 IMAGE=224 BATCH=256
DEVICE ?= cpu
NPROC ?= 2
MODEL ?= resnet18
IMAGE ?= 32
BATCH ?= 64
bench-byol: $(STAMP) $(if $(filter cpu,$(DEVICE)),data)
	$(PY) -m experiments.bench_byol --device $(DEVICE) --nproc $(NPROC) --model $(MODEL) --image $(IMAGE) \
		--batch $(BATCH) --out results/byol$(if $(filter cpu,$(DEVICE)),,-$(DEVICE)-$(MODEL))
	$(PY) -m analysis.bench results/byol$(if $(filter cpu,$(DEVICE)),,-$(DEVICE)-$(MODEL)) \
		--command "make bench-byol" --title "BYOL throughput, $(MODEL), $(NPROC) stages, $(DEVICE)"

# BYOL accuracy parity: synchronous vs tspipe (one-step-stale teacher), 3 seeds (CPU, < 60 min).
accuracy-byol: $(STAMP) data
	$(PY) -m experiments.accuracy_byol --out results/byol/accuracy
	$(PY) -m analysis.accuracy results/byol/accuracy --command "make accuracy-byol" --title "BYOL accuracy parity"

# results/REPORT.md and the README's results snippet from the rows (re-running missing
# throughput benchmarks); QUICK=1 re-measures a reduced set into results/quick/ (about 15 min).
QUICK ?= 0
report: $(STAMP)
	$(PY) -m experiments.report $(if $(filter 1,$(QUICK)),--quick)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# Each method's own targets (bench-kd, accuracy-mocov3, ...).
-include experiments/*.mk
