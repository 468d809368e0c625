# shim: `make run` starts the service on embedded defaults; `make test` runs the whole suite.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test

.PHONY: run test lint bench lock clean screenshots

$(BIN)/python:
	$(PY) -m venv $(VENV)

# `make run` installs the runtime dependencies only; the test tools come with `make test`.
$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $(RUN_STAMP)

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	touch $(TEST_STAMP) $(RUN_STAMP)

run: $(RUN_STAMP)
	$(BIN)/shim serve $(if $(CONFIG),--config $(CONFIG),)

lint: $(TEST_STAMP)
	$(BIN)/ruff check shim tests bench
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile

test: $(TEST_STAMP) lint
	$(BIN)/pytest -q $(PYTEST_ARGS)

# The README's console screenshots, taken by the browser tests (needs chromium + chromium-driver).
screenshots: $(TEST_STAMP)
	SHIM_SCREENSHOTS=docs/console $(BIN)/pytest -q tests/console/test_browser.py

# `make bench` is the quick run (under ~10 minutes); `make bench BENCH_ARGS=` the full one. Add
# `--baseline PATH` (a checkout, e.g. a `git worktree`) to print its figures beside the current ones.
BENCH_ARGS ?= --quick
bench: $(TEST_STAMP)
	sh bench/setup.sh
	$(BIN)/python bench/run.py $(BENCH_ARGS)
	$(BIN)/python bench/bench_inproc.py
	$(BIN)/python bench/console.py

# requirements.lock: what the image installs, hash-pinned (pip-tools in a throwaway venv).
lock:
	$(PY) -m venv .lock-venv && .lock-venv/bin/pip install -q pip-tools
	.lock-venv/bin/pip-compile -q --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url \
	  --no-emit-find-links --no-header -o requirements.lock.new pyproject.toml deploy/build-requirements.in
	{ sed -n '1,2p' requirements.lock; cat requirements.lock.new; } > requirements.lock.tmp
	mv requirements.lock.tmp requirements.lock && rm -rf requirements.lock.new .lock-venv

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache shim.db shim.db-wal shim.db-shm
