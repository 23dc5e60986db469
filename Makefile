# Two commands do all set-up on a fresh machine:
#   make run    create .venv if missing, install, prune SmolLM2-135M offline and print dense vs pruned perplexity
#   make test   create .venv if missing, install, run the test suite
VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.pruneflow-installed
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1

.PHONY: install run test lint

$(STAMP): pyproject.toml constraints.txt
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PYTHON) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(OFFLINE) $(VENV)/bin/pruneflow prune --method sparsegpt --sparsity 0.5 \
		--calibration wiki-summaries --num-samples 32 --seqlen 512 \
		--eval wiki-summaries --eval-windows 32 --eval-dense --output runs/demo-sparsegpt-50

test: $(STAMP)
	$(OFFLINE) $(PYTHON) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check pruning tasks flows tests bench
	$(VENV)/bin/mypy pruning
