# The README's two commands. Both create .venv when it is missing and install from this repo's own files;
# `make test` also installs what the suite needs that pip cannot (Debian's chromium, for the headless
# browser tests), so it passes on a fresh Debian machine on its own.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = "0" ] || echo sudo)

.PHONY: demo test faults extended browser clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# A stamp per extra: re-install only when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

# Debian's chromium renders the HTML report, the Prefect UI and the FiftyOne App in the browser tests.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser tests"; \
	  $(SUDO) apt-get install -y --no-install-recommends chromium >/dev/null 2>&1 \
	  || { $(SUDO) apt-get update >/dev/null && $(SUDO) apt-get install -y --no-install-recommends chromium >/dev/null; }; }

demo: $(VENV)/.installed
	$(BIN)/flenwheel demo

test: $(VENV)/.installed-dev browser
	$(BIN)/python -m pytest

# The whole fault-injection suite (docs/reliability.md): every fault test, then 10 seeded SIGKILLs per command;
# about an hour and a half here.
faults: $(VENV)/.installed-dev
	$(BIN)/python -m pytest tests/test_faults.py -m ''
	$(BIN)/python -m tests.faults --kills 10

# The longer end-to-end variants of behaviours `make test` shows with a faster test (marker `extended`: e.g. the
# two-iteration demo, the real-width LoRA-format checks of the extra target sets); about 2 minutes here.
extended: $(VENV)/.installed-dev browser
	$(BIN)/python -m pytest -m extended

clean-venv:
	rm -rf $(VENV)
