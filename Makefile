# The two commands of the README: `make demo` and `make test`. Each creates .venv when missing.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup browser demo test bench-throughput bench-startup bench-gpu-smoke

setup: $(STAMP)

# constraints.txt pins torch to the CPU build: open-clip-torch -> torchvision would otherwise pull CUDA.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: setup
	$(BIN)/coe demo

# The report tests drive Debian's Chromium headless through Playwright (which downloads no browser).
CHROMIUM ?= /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
browser:
	@test -x $(CHROMIUM) || { echo "installing Debian's chromium for the report tests"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; }

test: setup browser
	$(BIN)/python -m pytest -q -m "not slow and not gpu"

bench-throughput: setup
	$(BIN)/python -m benchmarks.scripts.throughput

bench-startup: setup
	$(BIN)/python -m benchmarks.scripts.startup

bench-gpu-smoke: setup
	$(BIN)/python -m benchmarks.scripts.gpu_smoke --size tiny --size full
