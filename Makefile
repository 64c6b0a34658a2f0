# make run: set up and start the daemon on its embedded defaults.
# make test: set up and run the whole test suite.
VENV ?= .venv
PYTHON ?= python3
BIN = $(VENV)/bin

.PHONY: setup run test lint bench starter clean

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
	$(BIN)/mypy spamd bench

# The starter models: both networks trained on the train rows of the shared corpus's SPLIT.tsv.
CORPUS ?= ../shared/corpora/spamassassin
starter: setup
	mkdir -p var
	for l in spam ham; do awk -F'\t' -v d=$(CORPUS) -v l=$$l 'NR>1 && $$3=="train" && $$2==l {print d"/"$$1}' \
		$(CORPUS)/SPLIT.tsv > var/train-$$l.txt; done
	$(BIN)/spamd train --spam @var/train-spam.txt --ham @var/train-ham.txt --activate

# Benchmarks on the shared corpus; results land in bench/out/ and go into the README by hand.
bench: setup
	$(BIN)/python -m bench.accuracy
	$(BIN)/python -m bench.speed

clean:
	rm -rf $(VENV) var .pytest_cache
