# Two commands set everything up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install install-test demo test clean

# torch first and pinned: a bare `torch` requirement with no torch installed pulls GBs of CUDA wheels.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e .
	touch $(STAMP)

# The test extras, and DeepSpeed for its launch tests: its CPU backend JIT-compiles a shared-memory
# op on its first launch (about 30 s), so build it here, once. The demo needs none of this.
$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[test,deepspeed]'
	$(PY) -c "from deepspeed.comm.torch import build_shm_op; build_shm_op()"
	touch $(TEST_STAMP)

install: $(STAMP)

install-test: $(TEST_STAMP)

# --resume: a second `make demo` reprints the finished run (or finishes an interrupted one)
demo: $(STAMP)
	$(VENV)/bin/sftbc compare --config recipes/demo.yaml --resume

test: $(TEST_STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
