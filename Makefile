# The project's one task runner: the README, .ci/run and the GitHub workflow call these targets.
# `make help` lists them.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP_VERSION := 26.3
# pip >= 25.1 reads PEP 735 dependency groups; constraints.txt pins every Python dependency so a
# fresh clone is not broken by someone else's release.
PIP_INSTALL := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt
DEPS_STAMP  := $(VENV)/.deps-stamp
BENCH_STAMP := $(VENV)/.bench-stamp
export VIRTUAL_ENV := $(abspath $(VENV))
# Release builds for tests and benchmarks: debug builds run crypto and Argon2 tens of times slower.
MATURIN_FLAGS ?= --release

.DEFAULT_GOAL := help
.PHONY: help venv redis build test test-rust test-py test-py-fallback lint fmt bench bench-rust bench-py clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-18s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(DEPS_STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "pip==$(PIP_VERSION)"
	$(PIP_INSTALL) --group build --group test --group lint
	touch $@

venv: $(DEPS_STAMP) ## create .venv with the build, test and lint dependencies (pinned)

# The rollout tests and benchmarks start their own redis-server (a free loopback port, a temp
# dir). Debian's `redis-server` package is only a symlink plus a system service that its postinst
# starts; `redis-tools` ships the binary itself, which runs as the server when called by that
# name. So: use a redis-server on PATH if there is one, else install redis-tools (as root, or
# with passwordless sudo) and link .venv/bin/redis-server to it. No service is started.
redis: $(DEPS_STAMP) ## make a redis-server binary available to the tests (installs Debian's redis-tools if needed)
	@if command -v redis-server >/dev/null 2>&1 || [ -x $(BIN)/redis-server ]; then exit 0; fi; \
	if ! command -v redis-check-rdb >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; \
	  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO=sudo; \
	  else echo "redis-server is missing: install it (Debian/Ubuntu: apt-get install redis-tools)" >&2; exit 1; fi; \
	  echo "installing redis-tools (provides the redis-server binary)"; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends redis-tools >/dev/null; \
	fi; \
	ln -sf "$$(command -v redis-check-rdb)" $(BIN)/redis-server; \
	$(BIN)/redis-server --version

build: $(DEPS_STAMP) ## build the extension (release) and install it into .venv
	$(BIN)/maturin develop $(MATURIN_FLAGS) --quiet

test: build test-rust test-py test-py-fallback ## everything CI runs: cargo test, pytest on both backends, pytest with the extension disabled

test-rust: ## cargo test of the pure-Rust core (tests_rs/ and unit tests; no libpython needed)
	cargo test --no-default-features --all-targets

test-py: build redis ## pytest: every contract test on the Rust and the pure-Python backend
	$(BIN)/python -m pytest

test-py-fallback: build redis ## pytest with the extension disabled (SARK_NATIVE_BACKEND=python)
	SARK_NATIVE_BACKEND=python $(BIN)/python -m pytest

lint: build ## cargo fmt --check, clippy -D warnings, ruff, mypy, stubtest, zizmor
	cargo fmt --all -- --check
	cargo clippy --no-default-features --all-targets -- -D warnings
	cargo clippy --all-targets -- -D warnings
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m mypy.stubtest sark_native._native --mypy-config-file pyproject.toml
	$(BIN)/zizmor --offline --min-severity medium .github/workflows

fmt: $(DEPS_STAMP) ## format Rust and Python sources in place
	cargo fmt --all
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

$(BENCH_STAMP): $(DEPS_STAMP)
	$(PIP_INSTALL) --group bench
	touch $@

bench: bench-rust bench-py ## side-by-side benchmarks (criterion, then Python); writes docs/benchmarks.md

bench-py: build redis $(BENCH_STAMP) ## Python benchmarks against the peers (writes docs/benchmarks.md)
	$(BIN)/python benches/py/run.py --output docs/benchmarks.md

bench-rust: ## criterion benchmarks of the Rust core
	cargo bench --no-default-features --bench cache --bench bucket --bench tokens --bench policy

clean: ## remove .venv and build products (keeps the cargo target dir)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
