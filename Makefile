# The README's commands. `make demo` and `make test` do all the set-up on a fresh clone.
.PHONY: setup test demo lint format bench gpu-setup gpu-wheels clean help

PY := .venv/bin/python

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' Makefile | sed 's/:.*## /\t/'

setup:  ## create .venv and install every package (editable, with test extras); quick when nothing changed
	@tools/setup

test: setup  ## run each package's suite alone, then tests/, with timings
	@$(PY) tools/run-tests

demo: setup  ## raw text to a pretrained mpt_tiny on the CPU (no network, no ../shared needed)
	@$(PY) tools/demo.py

lint: setup  ## ruff check and format check
	@$(PY) -m ruff check .
	@$(PY) -m ruff format --check .

format: setup  ## apply ruff's fixes and formatting
	@$(PY) -m ruff check --fix .
	@$(PY) -m ruff format .

bench: setup  ## CPU benchmarks (GPU ones run on a lent machine: see tools/bench/README.md)
	@$(PY) tools/bench/run_cpu.py

gpu-wheels:  ## download the cp312 wheels a lent GPU machine lacks into .gpu-wheels/
	@tools/gpu-wheels

gpu-setup:  ## on a lent H100/H200: install our packages without touching its torch
	@tools/gpu-setup

clean:  ## remove .venv and caches
	rm -rf .venv .pytest_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
