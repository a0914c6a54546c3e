# The two commands: `make demo` (set up, run the stack on sample DICOMs) and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test soak setup test-packages bench-packages protos check-protos lint typecheck up down clean train train-deps reproduce bench lock

# torch's CPU build (torch==2.13.0+cpu in requirements/train.lock) is published on the PyTorch
# CPU index, not on PyPI. Where pip's configuration does not already find it, pass that index:
# `make train-deps TORCH_INDEX=https://download.pytorch.org/whl/cpu` (make lock takes it too).
TORCH_INDEX ?=
PIP_TORCH := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))

demo: setup
	$(BIN)/imaging-platform demo

test: setup test-packages check-protos lint typecheck
	$(BIN)/pytest

# The kill -9 durability tests at many more seeded points than `make test` runs: receiving
# (tests/integration/test_ingest_stack.py, 20 in CI, 5 to 7 s a point) and exporting
# (tests/integration/test_export_stack.py, 20 in CI, 2 to 11 s a point).
KILL_POINTS ?= 200
EXPORT_KILL_POINTS ?= 100
soak: setup test-packages
	IMAGING_KILL_POINTS=$(KILL_POINTS) IMAGING_EXPORT_KILL_POINTS=$(EXPORT_KILL_POINTS) \
		$(BIN)/pytest -k kill tests/integration/test_ingest_stack.py tests/integration/test_export_stack.py

# Debian packages only the tests use (dciodvfy, dsrdump, Orthanc, Prometheus, nginx), installed with
# no daemon started or enabled; the main job (make demo) needs none. See the README's list.
test-packages:
	bash scripts/system-packages.sh test

bench-packages:
	bash scripts/system-packages.sh bench

setup: $(STAMP)

$(STAMP): pyproject.toml requirements/dev.lock requirements/grpcurl.txt scripts/setup.sh
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

# Hash-checked like setup: train.lock is the dev environment plus the train extra.
train-deps: setup
	$(BIN)/pip install --require-hashes --no-deps $(PIP_TORCH) -r requirements/train.lock

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
# Results go to .run/bench/ (untracked); `make bench PUBLISH=1` replaces the published ones in
# load_tests/results/, which the README quotes.
BENCH_OUT = $(if $(PUBLISH),load_tests/results,.run/bench)
bench: setup bench-packages
	$(BIN)/pip install -q --require-hashes --no-deps -r requirements/bench.lock
	$(BIN)/python load_tests/bench_platform.py --out $(BENCH_OUT)

# Regenerate the hash-pinned locks (requirements/*.lock) from pyproject.toml and requirements/*.in
# with pip-tools, which runs from a venv of its own (installed from requirements/lock-tools.lock).
# Pins already in a lock are kept, so only what pyproject.toml changed moves:
# `make lock LOCK_ARGS=--upgrade` moves everything, LOCK_ARGS='-P numpy' one package. dev.lock is
# resolved first and constrains the others, so a package has the same version in every lock.
# The locks are resolved for CPython 3.11 on Linux (markers), with the hashes of every file of
# each pinned version (all platforms).
LOCK_VENV := .run/lock-venv
LOCK_ARGS ?=
PIP_COMPILE = CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_VENV)/bin/pip-compile --quiet \
	--generate-hashes --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links \
	--no-emit-trusted-host $(PIP_TORCH) $(LOCK_ARGS)

$(LOCK_VENV)/.installed: requirements/lock-tools.lock
	[ -x $(LOCK_VENV)/bin/python ] || $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install -q --require-hashes --no-deps -r requirements/lock-tools.lock
	touch $@

lock: $(LOCK_VENV)/.installed
	$(PIP_COMPILE) --extra local --extra dev \
		-o requirements/dev.lock pyproject.toml requirements/install.in
	$(PIP_COMPILE) -c requirements/dev.lock -o requirements/runtime.lock pyproject.toml
	$(PIP_COMPILE) --extra local --extra dev --extra train -c requirements/dev.lock \
		-o requirements/train.lock pyproject.toml requirements/install.in requirements/train.in
	$(PIP_COMPILE) --extra local --extra dev --extra bench -c requirements/dev.lock \
		-o requirements/bench.lock pyproject.toml requirements/install.in
	$(PIP_COMPILE) -c requirements/dev.lock -o requirements/lock-tools.lock requirements/lock-tools.in

clean:
	rm -rf $(VENV) .run demo-output
