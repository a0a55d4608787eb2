# `make train` / `make test` set everything up on a fresh machine: a .venv with the project installed
# (with the [tf] extra, TensorFlow's CPU build for trainer=tensorflow and tf2, the [jax] extra, for trainer=jax,
# and the [server] extra, for a team server).
# Pass Hydra overrides with ARGS, pytest options with PYTEST_ARGS:
#   make train ARGS="model=dynamic optim=sgd_momentum"      make test PYTEST_ARGS="-k pipeline" WORKERS=0 COVERAGE=0
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: train test test-quick lint ui verify bench examples examples-sine backends compare gpu-check docs docs-images

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,tf,jax,server]'
	touch $(STAMP)

train: $(STAMP)
	$(PY) scripts/train.py $(ARGS)

# The suite runs under coverage (pyproject.toml's [tool.coverage]), the CLI processes it starts included, and
# prints the report after the tests, whatever their outcome (information, not a pass mark). Coverage costs ~1.6x
# on 2 cores, so the test files are spread over one pytest-xdist worker per CPU (a file stays on one worker: its
# module fixtures run once); most tests wait on processes, servers and sqlite, which two workers overlap.
# COVERAGE=0 runs bare pytest; WORKERS=0 runs serially.
COVERAGE ?= 1
WORKERS ?= auto
XDIST := $(if $(filter 0,$(WORKERS)),,-n $(WORKERS) --dist loadfile)
test: $(STAMP)
ifeq ($(COVERAGE),1)
	rm -f .coverage .coverage.*
	COVERAGE_FILE=$(CURDIR)/.coverage $(PY) -m coverage run -m pytest $(XDIST) $(PYTEST_ARGS); status=$$?; \
	$(PY) -m coverage combine -q && $(PY) -m coverage report; exit $$status
else
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)
endif

# The edit-test loop: the unit-level tests (no servers, browsers, clusters or multi-process sweeps: those are
# marked slow), without coverage, in under 3 minutes on 2 cores. `make test` stays the whole suite; CI runs it.
test-quick: $(STAMP)
	$(PY) -m pytest $(XDIST) -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests scripts benchmarks

examples: $(STAMP)
	$(PY) scripts/train.py -m experiment=numpy,tensor,autograd,function,tensorflow,nn,optim,module,dynamic

# the tutorial as it is taught today: sin(x) fitted eight ways (conf/experiment/sine_*.yaml)
examples-sine: $(STAMP)
	$(PY) scripts/train.py -m experiment=sine_numpy,sine_tensor,sine_autograd,sine_function,sine_nn,sine_optim,sine_module,sine_dynamic

# the same problem (the tutorial's bias-free net, randn start, SGD 1e-6) through every trainer, one multirun
backends: $(STAMP)
	$(PY) scripts/train.py -m trainer=numpy,tensor,autograd,function,tensorflow,tf2,jax,lightning model.bias=false model.init=randn optim.lr=1e-6

# three optimizers over five seeds: groups, bands and paired contrasts in the report (docs/comparing.md)
compare: $(STAMP)
	$(PY) scripts/train.py -m optim=sgd,adam,rmsprop 'seed=range(0,5)'

verify: $(STAMP)
	$(PY) scripts/verify.py $(ARGS)

bench: $(STAMP)
	$(PY) scripts/bench.py $(ARGS)

# MLflow's UI on the store scripts/train.py writes from here (./mlflow.db, artifacts in ./mlruns); it first
# prints the address of the experiment's runs table. Ctrl-C (or SIGTERM to scripts/ui.py) stops it and every
# process MLflow started for it.
ui: $(STAMP)
	$(PY) scripts/ui.py $(ARGS)

# Everything a GPU can show in one run (<= 5 min, --budget 280): a Markdown table, also in gpu-check.md.
# No venv: it uses the node's own CUDA torch and puts src/ on PYTHONPATH itself. Exits 0 without CUDA.
gpu-check:
	$(PYTHON) scripts/gpu_check.py $(ARGS)

# The manual's generated parts: docs/configuration.md from conf/ (tests/test_docs.py says when it is stale) ...
docs: $(STAMP)
	$(PY) scripts/config_docs.py

# ... and its pictures, from real runs: make examples and examples-sine, then MLflow's UI in headless Chromium,
# driven by Playwright (~2 min). ARGS=--check only says which pictures their drawing code has changed since.
docs-images: $(STAMP)
	$(PY) scripts/docs_images.py $(ARGS)
