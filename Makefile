# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean ui

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m imgrag.emulators.demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python -m bench.cli --busy 1
	$(BIN)/python -m bench.normalize
	$(BIN)/python -m bench.query
	$(BIN)/python -m bench.ingest
	$(BIN)/python -m bench.app
	$(BIN)/python -m bench.quality --engines

clean:
	rm -rf $(VENV) .demo  # never the store (./chroma_images_db) or the ledger (./.imgrag)

# The Prefect UI over the demo's Prefect home: its flow runs, logs and artifacts.
UI_PORT ?= 4200
ui: $(STAMP)
	@test -d .demo/prefect || { echo "make ui: run 'make demo' first"; exit 2; }
	PREFECT_HOME=.demo/prefect PREFECT_UI_API_URL=http://127.0.0.1:$(UI_PORT)/api \
	PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 \
	$(BIN)/prefect server start --host 127.0.0.1 --port $(UI_PORT)
