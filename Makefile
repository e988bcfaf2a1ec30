# Every target builds its own Python >= 3.12 virtual environment in .venv (scripts/find_python.sh finds the
# interpreter and explains what to do when there is none).
VENV ?= .venv
PY := $(VENV)/bin/python
AOT_LIBS := $(VENV)/aot-libs
PYTEST_ARGS ?=
# pytest-xdist processes: the suite is mostly XLA compilation, one core each (each simulates 8 JAX devices, ~3 GB)
PYTEST_WORKERS ?= 2

.PHONY: setup setup-test setup-aot lint test test-fast test-bench test-demo demo clean

$(VENV)/.runtime: requirements.txt pyproject.toml
	@py=$$(scripts/find_python.sh) && [ -x $(PY) ] || $$py -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	@touch $@

$(VENV)/.test: $(VENV)/.runtime $(AOT_LIBS)/.installed requirements-test.txt
	$(PY) -m pip install --quiet -r requirements-test.txt
	@touch $@

# libtpu and the CUDA plugin for `python -m spade_jax.aot`, in a side folder that only that tool loads
# (afresh: pip --target --upgrade leaves the old version's dist-info beside the new one, and the version check reads it)
$(AOT_LIBS)/.installed: requirements-aot.txt $(VENV)/.runtime
	rm -rf $(AOT_LIBS)
	$(PY) -m pip install --quiet --no-deps --target $(AOT_LIBS) -r requirements-aot.txt
	@touch $@

setup: $(VENV)/.runtime          ## runtime environment only

setup-test: $(VENV)/.test        ## runtime + test extras (pytest, torch as the parity oracle) + setup-aot

setup-aot: $(AOT_LIBS)/.installed  ## libtpu and the CUDA plugin beside the venv, for python -m spade_jax.aot

lint: setup-test                 ## ruff (configured in pyproject.toml)
	$(VENV)/bin/ruff check .

test: setup-test                 ## the whole suite, as CI runs it
	$(PY) -m pytest tests -n $(PYTEST_WORKERS) --dist loadscope --no-loadscope-reorder $(PYTEST_ARGS)

test-fast: setup-test            ## skip the slow end-to-end tests
	$(PY) -m pytest tests -m "not slow" -n $(PYTEST_WORKERS) --dist loadscope --no-loadscope-reorder $(PYTEST_ARGS)

test-bench: setup-test           ## run every bench/ script once on a tiny config (75 s; not in `make test`)
	SPADE_JAX_BENCH_SMOKE=1 $(PY) -m pytest tests/bench -q $(PYTEST_ARGS)

test-demo: setup-test            ## the demo recipe learns and draws every style: two demo runs (12-15 min; not in `make test`)
	SPADE_JAX_DEMO_RECIPE=1 $(PY) -m pytest tests/training/test_demo_recipe.py -q $(PYTEST_ARGS)

demo: setup                      ## generate the demo data set, train on it, write sample grids
	$(PY) train.py --config=configs/demo.py --workdir=$${WORKDIR:-runs/demo}

clean:
	rm -rf $(VENV) .pytest_cache
