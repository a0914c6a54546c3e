# The two commands: `make demo` (set up, run the stack on sample DICOMs) and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test setup protos check-protos lint typecheck up down clean train train-deps reproduce bench

demo: setup
	$(BIN)/imaging-platform demo

test: setup check-protos lint typecheck
	$(BIN)/pytest

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt scripts/setup.sh
	PYTHON=$(PYTHON) bash scripts/setup.sh $(VENV)
	touch $(STAMP)

protos: setup
	$(BIN)/python scripts/gen_protos.py

check-protos: setup
	$(BIN)/python scripts/gen_protos.py --check

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy services scripts

up: setup
	$(BIN)/imaging-platform up

down: setup
	$(BIN)/imaging-platform down

train-deps: setup
	$(BIN)/pip install -c constraints.txt -e '.[train]'

train: train-deps
	$(BIN)/python scripts/train_cxr_pneumonia.py
	$(BIN)/python scripts/train_us_breast.py
	$(BIN)/python scripts/train_cxr_ensemble.py

# Re-run every model script (three trainings, the TensorFlow conversion) and compare the outputs
# with the committed model files: about 10 minutes of CPU, so not part of `make test`.
reproduce: train-deps
	$(BIN)/pytest -m reproduce tests/reproduce

# The platform against the thin client a vendor would write (same tritonserver, same files):
# closed loops at c=1, 4, 16, 64 for three workloads; ~10 minutes, so not part of `make test`.
bench: setup
	$(BIN)/pip install -q -c constraints.txt -e '.[bench]'
	$(BIN)/python load_tests/bench_platform.py --out load_tests/results

clean:
	rm -rf $(VENV) .run demo-output
