# omnipush: `make run` starts the whole stack, `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SOCKETIO_JS := ws_gateway/static/socket.io.min.js
SWAGGER_UI_DIR := producer_api/static/swagger-ui
SWAGGER_UI := $(addprefix $(SWAGGER_UI_DIR)/,swagger-ui-bundle.js swagger-ui.css swagger-ui-standalone-preset.js favicon-32x32.png)

# `make run` is read by people, so its services log console lines (honcho is not a terminal).
OMNIPUSH_LOG_FORMAT ?= console

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

# Swagger UI of the API's `GET /docs`, served from its own static folder (no CDN).
$(SWAGGER_UI_DIR)/%: node_modules/.package-lock.json
	mkdir -p $(SWAGGER_UI_DIR)
	cp node_modules/swagger-ui-dist/$* $@

install: $(STAMP) $(SOCKETIO_JS) $(SWAGGER_UI)

run: install
	$(BIN)/omnipush dev prepare
	PATH="$(CURDIR)/$(BIN):$$PATH" OMNIPUSH_LOG_FORMAT=$(OMNIPUSH_LOG_FORMAT) \
		$(BIN)/honcho -f var/Procfile start

test: install
	bash scripts/run-tests.sh

# bench.api drives HTTP load with wrk (C; a Python client would be the bottleneck): the Debian
# package is installed here when it is missing (root, as on the development machines and CI).
bench: install
	command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	$(BIN)/python -m bench.publish
	$(BIN)/python -m bench.e2e
	$(BIN)/python -m bench.api

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) node_modules var $(SOCKETIO_JS) $(SWAGGER_UI_DIR)
