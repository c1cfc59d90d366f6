# Developer and CI entry points. Needs python3 (3.11+), node 20 + npm, make and a C compiler.
#   make demo       the main job: `loraledger demo` (the whole system on CPU, no downloads, about a minute)
#   make test       import contracts, then the whole pytest suite
#   make venv       .venv with `-e .[dev]` at the versions in constraints.txt, and node_modules (solc, anvil)
#   make contracts  recompile contracts/ into sdk/chain/artifacts/
#   make chain      a local dev chain with the contracts deployed
#   make clean      build outputs and caches; `make distclean` also drops .venv and node_modules

PYTHON ?= python3
VENV := .venv
VENV_STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
PYTEST_FLAGS ?= -q --durations=10

.PHONY: venv demo test contracts chain clean distclean

venv: $(VENV_STAMP) $(NODE_STAMP)

# The stamp is newer than both inputs once an install has succeeded, so a second `make venv` is a no-op.
$(VENV_STAMP): pyproject.toml constraints.txt
	$(VENV)/bin/python -c '' 2>/dev/null || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet -c constraints.txt pip
	$(VENV)/bin/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

# The lock holds only this platform's anvil binary package (the registry has no others), which
# `npm ci` rejects as out of sync; `npm install --no-save` installs exactly the locked versions.
$(NODE_STAMP): package.json package-lock.json
	npm install --no-save --no-audit --no-fund
	touch $@

demo: venv
	OMP_NUM_THREADS=1 $(VENV)/bin/loraledger demo

test: venv
	OMP_NUM_THREADS=1 $(VENV)/bin/lint-imports
	$(VENV)/bin/python -m pytest $(PYTEST_FLAGS)

contracts: venv
	$(VENV)/bin/python -m loraledger.sdk.chain.build

chain: venv
	$(VENV)/bin/loraledger chain

clean:
	rm -rf build dist *.egg-info .pytest_cache .hypothesis .import_linter_cache
	find . -path ./$(VENV) -prune -o -path ./node_modules -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) node_modules
