# omnipush: `make run` starts the whole stack, `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SOCKETIO_JS := ws_gateway/static/socket.io.min.js

.PHONY: install run test bench lint format clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error

$(SOCKETIO_JS): node_modules/.package-lock.json
	cp node_modules/socket.io-client/dist/socket.io.min.js $(SOCKETIO_JS)

install: $(STAMP) $(SOCKETIO_JS)

run: install
	$(BIN)/omnipush dev prepare
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/honcho -f var/Procfile start

test: install
	bash scripts/run-tests.sh

bench: install
	$(BIN)/python -m bench.publish
	$(BIN)/python -m bench.e2e

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) node_modules var $(SOCKETIO_JS)
