# Every target sets up .venv on its own; a second run only checks a stamp file.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PACKAGES := fedadamw secure_agg coordinator edge_client

.PHONY: demo test bench soak lint format venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check \
		--constraint constraints.txt --editable '.[coordinator,agent,demo,postgres,dev]'
	@$(MAKE) --no-print-directory prometheus-tools
	@touch $(STAMP)

# promtool and prometheus (Debian's package) for the metrics tests, unless already on PATH.
.PHONY: prometheus-tools
prometheus-tools:
	@if ! command -v promtool >/dev/null && ! test -x $(BIN)/promtool; then \
		tmp=$$(mktemp -d) && (cd $$tmp && apt-get download -q prometheus >/dev/null 2>&1 \
		&& dpkg -x prometheus_*.deb x && cp x/usr/bin/promtool x/usr/bin/prometheus $(CURDIR)/$(BIN)/) \
		|| echo "note: could not fetch Debian's prometheus package; put promtool and prometheus on PATH, or the monitoring tests fail"; \
		rm -rf $$tmp; \
	fi

demo: $(STAMP)
	$(BIN)/fedadamw demo

# Four test processes (pytest-xdist) on two cores, a file each at a time, the longest files
# first (tests/conftest.py): most tests wait on real processes, deadlines and the network
# more than they compute, and with three the cores idled 13-15% of the run.
test: $(STAMP)
	$(BIN)/python -m pytest tests --ignore=tests/benchmarks -n 4 --dist loadfile --no-loadscope-reorder

bench: $(STAMP)
	$(BIN)/python -m tests.benchmarks

# 200 rounds on PostgreSQL with agents killed and the coordinator restarted; see
# tests/benchmarks/soak.py. Writes runs/soak/soak.png and prints whether each resource stays flat.
soak: $(STAMP)
	$(BIN)/python -m tests.benchmarks.soak

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
