# One command each: `make setup`, `make test`. See README.md.
PYTHON ?= python3.11
VENV   ?= .venv

.PHONY: setup test lint

setup:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade pip
	$(VENV)/bin/pip install -e '.[dev]'

test:
	$(VENV)/bin/python -m pytest

lint:
	$(VENV)/bin/ruff check src tests benchmarks
