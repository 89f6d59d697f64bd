# Two commands do all the set-up on a fresh clone:
#   make run   installs, migrates, prepares the model store and serves the app with its worker
#   make test  installs and runs every test against real PostgreSQL and Redis
# Both use one .venv filled from requirements/dev.lock, which holds every pin (web + worker + dev sets; the
# web and worker images install the smaller requirements/web.lock and requirements/worker.lock).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
LOCKS := $(sort $(wildcard requirements/*.lock))
# The stamp's name changes whenever any lock or pyproject.toml changes, so the next make installs again.
STAMP := $(VENV)/.installed-$(shell cat $(LOCKS) pyproject.toml 2>/dev/null | sha256sum | cut -c1-16)
HOST ?= 127.0.0.1
PORT ?= 8000

TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/ris
TEST_BROKER_URL ?= redis://127.0.0.1:6379/14

.PHONY: install run test lint locks models bench clean

install: $(STAMP)

$(STAMP): $(LOCKS) pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements/dev.lock
	@rm -f $(VENV)/.installed-*
	@touch $@

models: install
	@PY=$(PY) scripts/ensure-wordnet.sh || echo "WordNet is missing: every pipeline but TAS works (see above)"
	$(PY) manage.py models ensure

run: install
	@mkdir -p "$${RIS_VAR_DIR:-var}"
	$(PY) manage.py migrate --noinput
	@PY=$(PY) scripts/ensure-wordnet.sh || echo "WordNet is missing: every pipeline but TAS works (see above)"
	$(PY) manage.py models ensure
	@umask 077; $(PY) manage.py ensure_admin > "$${RIS_VAR_DIR:-var}/.start-note"
	HOST=$(HOST) PORT=$(PORT) PY=$(PY) RIS_START_NOTE="$${RIS_VAR_DIR:-var}/.start-note" scripts/serve-dev.sh

test: install
	@scripts/ensure-services.sh
	@scripts/ensure-browser.sh
	@PY=$(PY) scripts/ensure-wordnet.sh
	DATABASE_URL=$(TEST_DATABASE_URL) CELERY_BROKER_URL=$(TEST_BROKER_URL) RIS_TEST_ARTIFACTS=$(CURDIR)/test-artifacts \
		$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) scripts/lock-check.py

# After editing a pin in requirements/dev.lock: install it, then cut web.lock and worker.lock out of it.
locks: install
	$(PY) scripts/lock-check.py --write

bench: install
	$(PY) scripts/bench_engine.py

clean:
	rm -rf var/cache test-artifacts .pytest_cache
