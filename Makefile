# Two commands do all set-up on a fresh machine:
#   make run    create .venv if missing, install, run the default sweep offline (params.yaml): SmolLM2-135M,
#               dense + every method, evaluated on held-out Wikipedia summaries; prints the results table
#   make test   create .venv if missing, install, run the test suite
# Also: make run-full (params-full.yaml: bigger calibration, zero-shot tasks; 1.5-2 h on 2 cores), make repro (the DVC
# pipeline), make lint.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.pruneflow-installed
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1

.PHONY: install run run-full test lint repro device-wheels

$(STAMP): pyproject.toml constraints.txt
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PYTHON) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(OFFLINE) $(VENV)/bin/pruneflow sweep --params params.yaml

run-full: $(STAMP)
	$(OFFLINE) $(VENV)/bin/pruneflow sweep --params params-full.yaml

repro: $(STAMP)
	$(OFFLINE) PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/dvc repro

test: $(STAMP)
	$(OFFLINE) $(PYTHON) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check pruning tasks flows tests bench
	$(VENV)/bin/mypy pruning

# What bench/gpu_scale.py needs on the device machine beyond its own torch/transformers (python 3.12, no pydantic):
# the wheels, unpacked into .device/site for PYTHONPATH (git ignores .device; carry it).
DEVICE_WHEELS := pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
device-wheels:
	rm -rf .device && mkdir -p .device/wheels .device/site
	python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
		--platform manylinux2014_x86_64 -d .device/wheels $(DEVICE_WHEELS)
	for wheel in .device/wheels/*.whl; do python3 -m zipfile -e $$wheel .device/site; done
