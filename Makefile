# Set-up and checks for p2pdist. Two commands do everything on a fresh machine:
#   make demo   - install into .venv and run `p2pdist demo`
#   make test   - install into .venv (plus aria2/zstd from Debian when possible) and run lint + tests
#
# The torch pin lives here and only here: a GPU user swaps it, e.g.
#   make demo TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>"
TORCH_SPEC ?= torch==2.13.0
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install system-deps demo test lint clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# aria2c (a standard BitTorrent client, for the interoperability test) and the zstd CLI (the
# delta benchmark's baseline). Best effort: without root or apt the dependent tests skip
# with a visible reason.
system-deps:
	@if ! command -v aria2c >/dev/null 2>&1 || ! command -v zstd >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq aria2 zstd >/dev/null \
			|| echo "warning: could not install aria2/zstd; their tests will be skipped"; \
		else echo "warning: aria2c/zstd missing and no root apt-get; their tests will be skipped"; fi; \
	fi

demo: install
	$(BIN)/p2pdist demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: install system-deps lint
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
