# One command to set up, one to test, one to run the demo.
#   make test   set up everything, then ruff, mypy and pytest
#   make demo   set up everything, then run the platform on this machine
# Set-up is idempotent: the venv is rebuilt only when pyproject.toml changes, and the Debian
# packages are installed only when their binaries are missing.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.setup-stamp
PACKAGES := telemetry firmware_bridge edge_agent ingest api simulators smartcity
DEBIAN_PACKAGES := mosquitto influxdb

.PHONY: setup system-packages lint typecheck test test-fast demo bench clean

setup: $(STAMP) system-packages

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

# mosquitto and influxd are real services in tests and the demo; chromium (Debian's, driven
# by Playwright) runs the dashboard tests, since Playwright's own browser download is not
# used. Install what is missing, as root only; otherwise print the exact command.
system-packages:
	@missing=""; \
	command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto || missing="$$missing mosquitto"; \
	command -v influxd >/dev/null 2>&1 || test -x /usr/bin/influxd || missing="$$missing influxdb"; \
	test -x /usr/bin/chromium || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = "0" ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else \
	    echo "missing Debian packages:$$missing -- run: sudo apt-get install -y$$missing" >&2; exit 1; \
	  fi; \
	fi

lint: setup
	$(BIN)/ruff check .

typecheck: setup
	$(BIN)/mypy

test: setup lint typecheck
	$(BIN)/pytest

# Unit tests only (no real services): quick feedback while editing.
test-fast: setup
	$(BIN)/pytest -m "not integration"

demo: setup
	$(BIN)/smartcity demo

bench: setup
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis var
