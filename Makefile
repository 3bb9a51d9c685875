# Set-up and checks for p2pdist. Two commands do everything on a fresh machine:
#   make demo   - install into .venv and run `p2pdist demo`
#   make test   - install into .venv (plus Debian test packages when root) and run lint + tests
#
# torch is the extra `p2pdist[torch]` (loading, trainer, demo); `make install` installs it with
# everything else. A tracker-only host needs none: `pip install -e .` (see README).
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
	$(BIN)/python -m pip install --quiet -e ".[torch,test]"
	touch $(STAMP)

install: $(STAMP)

# Debian packages the tests and benchmarks use: aria2c (a standard BitTorrent client, for the
# interoperability test), the zstd CLI (the delta benchmark's baseline), iproute2, nftables,
# iperf3 and curl (the multi-host test bed and bench/cluster.py: network namespaces,
# tbf-shaped links, NAT), nginx (a TLS-terminating proxy in front of the tracker), PostgreSQL
# and Redis (tracker replicas). Installed when missing and root; elsewhere the dependent tests
# skip with a visible reason.
DEBIAN_PACKAGES := aria2 zstd iproute2 nftables iperf3 curl nginx-light postgresql redis-server

system-deps:
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing from Debian:" $$missing; \
			apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
				-o DPkg::Lock::Timeout=300 $$missing >/dev/null \
			|| echo "warning: could not install" $$missing "; their tests will be skipped"; \
		else echo "warning:" $$missing "missing and no root apt-get; their tests will be skipped"; fi; \
	fi

demo: install
	$(BIN)/p2pdist demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python .ci/typecheck.py

# Tests run in parallel, one worker per core (pytest-xdist), each test module on one worker:
# most tests wait on sockets and child processes, so two workers halve the wall time on a
# 2-core CI machine. `make test TEST_WORKERS=0` runs them in this process, one at a time.
TEST_WORKERS ?= auto

test: install system-deps lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .hypothesis
