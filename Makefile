# omnipush: `make run` starts the whole stack, `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# `make run` is read by people, so its services log console lines (honcho is not a terminal).
OMNIPUSH_LOG_FORMAT ?= console

.PHONY: install run test audit lock vendor bench lint format clean

# The exact versions of constraints.txt (`make lock` regenerates it).
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# The browser assets' npm packages, as package-lock.json has them. Install scripts are not run:
# the packages are only read (by `make vendor` and the test that checks the committed copies),
# and swagger-ui-dist's only script is a telemetry call.
node_modules/.package-lock.json: package.json package-lock.json
	npm ci --ignore-scripts --no-audit --no-fund --loglevel=error

install: $(STAMP) node_modules/.package-lock.json

run: install
	$(BIN)/omnipush dev prepare
	PATH="$(CURDIR)/$(BIN):$$PATH" OMNIPUSH_LOG_FORMAT=$(OMNIPUSH_LOG_FORMAT) \
		$(BIN)/honcho -f var/Procfile start

test: install
	bash scripts/run-tests.sh

# Known vulnerabilities in the installed Python packages and the npm lock; unlike the check in
# `make test`, a vulnerability service that cannot be reached is a failure here.
audit: install
	$(BIN)/python scripts/audit.py --require-service

# Regenerates constraints.txt from a fresh environment with the newest releases pyproject.toml
# allows; commit the result after `make test` passes with it.
lock:
	bash scripts/lock.sh

# Refreshes the committed browser assets from node_modules after package-lock.json changed.
vendor: node_modules/.package-lock.json
	$(PYTHON) scripts/vendor_assets.py

# bench.api and bench.e2e drive HTTP load with wrk (C; a Python client would be the bottleneck):
# the Debian package is installed here when it is missing (root, as on the development machines
# and CI).
bench: install
	command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	$(BIN)/python -m bench.publish
	$(BIN)/python -m bench.e2e
	$(BIN)/python -m bench.api
	$(BIN)/python -m bench.channels
	$(BIN)/python -m bench.dispatch
	$(BIN)/python -m bench.gateway

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) node_modules var
