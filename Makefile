# make run: set up and start the daemon on its embedded defaults.
# make test: set up and run the whole test suite.
VENV ?= .venv
PYTHON ?= python3
BIN = $(VENV)/bin

.PHONY: setup run test lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

run: setup
	$(BIN)/spamd db upgrade
	$(BIN)/spamd serve

test: setup
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check spamd tests bench
	$(BIN)/mypy spamd

clean:
	rm -rf $(VENV) var .pytest_cache
