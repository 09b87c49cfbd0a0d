# Two commands for a fresh clone:  `make demo`  and  `make test`.
# Each creates .venv and installs exactly the versions in requirements/dev.txt (a lock file
# with hashes), so a release upstream cannot break a fresh clone. `make upgrade` is the
# deliberate step that re-resolves the lock from pyproject.toml and runs the whole suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LOCK   := requirements/dev.txt

.PHONY: demo test lint docs bench bench-quick upgrade lock clean

$(STAMP): pyproject.toml $(LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/hatz-worker demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

test: lint docs
	$(BIN)/python -m pytest

# The documentation site (mkdocs.yml, docs/): strict, so a broken link or anchor fails the build.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

bench: $(STAMP)
	$(BIN)/python -m bench

bench-quick: $(STAMP)
	$(BIN)/python -m bench --quick

# Re-resolve both lock files from pyproject.toml's ranges (newest versions), then prove them.
lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml --extra dev --generate-hashes --universal \
	  --python-version 3.11 --upgrade --quiet -o requirements/dev.txt
	$(BIN)/uv pip compile pyproject.toml --extra flower --generate-hashes --universal \
	  --python-version 3.11 --upgrade --quiet -o requirements/main.txt

upgrade: lock
	$(MAKE) test

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache site
