# duotpu — everything a fresh machine needs: `make demo`, `make test`.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
# The install is redone only when one of these changes.
STAMP := $(VENV)/.installed-$(shell cat requirements.lock requirements-nodeps.lock pyproject.toml | sha256sum | cut -c1-16)
SSHD  := /usr/sbin/sshd
CHROMIUM := /usr/bin/chromium

.PHONY: install demo test test-fast test-unit lint bench docs docs-serve clean help

help:
	@echo "make demo   install, then run the built-in demo (EfficientNet-Lite0 -> INT8 + BF16)"
	@echo "make test   install, then run the test suite"
	@echo "make lint   ruff (lint + format check), the layer contract (import-linter), mypy"
	@echo "make test-unit  the unit tier: no compiler, a few seconds"
	@echo "make bench  install, then rerun the benchmarks that fit in ~30 min (bench/run.py; --all: every one)"
	@echo "make docs   the docs site into site/ (make docs-serve: on http://127.0.0.1:8000)"

install: $(STAMP)

$(STAMP): requirements.lock requirements-nodeps.lock pyproject.toml
	@PY310="$$(scripts/find-python310.sh)" || exit 1; \
	if [ ! -x $(PY) ] || ! $(PY) -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null; then \
	  echo "creating $(VENV) with $$PY310"; rm -rf $(VENV); "$$PY310" -m venv $(VENV) || exit 1; \
	fi
	$(PY) -m pip install --quiet --upgrade "pip==25.1.1"
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.lock
	$(PY) -m pip install --quiet --no-deps -e .
	@command -v flatc >/dev/null || { echo "installing Debian's flatbuffers-compiler (flatc, to read cvimodel files)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq flatbuffers-compiler >/dev/null; }
	$(PY) -m duotpu.compiler.selfcheck
	@rm -f $(VENV)/.installed-*; touch $@

demo: install
	$(VENV)/bin/duotpu demo

# Debian's OpenSSH server, for the board tests (which start it themselves on 127.0.0.1 in front
# of the board emulator; never as a system service).
# A policy-rc.d that answers 101 keeps apt from starting the ssh service while installing it.
$(SSHD):
	@made=; if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made=1; fi; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssh-server openssh-client >/dev/null; rc=$$?; \
	if [ -n "$$made" ]; then rm -f /usr/sbin/policy-rc.d; fi; exit $$rc

# Debian's Chromium, for the report tests (they open each report headless, over its DevTools
# pipe: no port, no service).
$(CHROMIUM):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null

# Debian's stb_image header, for the C board app's JPEG / PNG reading (a dependency of the app,
# compiled into it; the app builds without it and then reads PPM/PGM/BMP only).
STB := /usr/include/stb/stb_image.h
$(STB):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libstb-dev >/dev/null

# The suite runs in TEST_WORKERS processes (pytest-xdist), each test file whole in one of them
# (files share module-scoped builds and run their tests in order).
TEST_WORKERS ?= 2
test: install $(SSHD) $(CHROMIUM) $(STB)
	$(VENV)/bin/python -m pytest -q --durations=25 -n $(TEST_WORKERS) --dist loadfile

test-unit: install
	$(VENV)/bin/python -m pytest -q -m unit

lint: install
	$(VENV)/bin/ruff check src tests bench scripts
	$(VENV)/bin/ruff format --check src tests bench scripts
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy src/duotpu

test-fast: install $(SSHD) $(CHROMIUM) $(STB)
	$(VENV)/bin/python -m pytest -q -m "not slow" -n $(TEST_WORKERS) --dist loadfile

bench: install $(STB)
	$(PY) bench/run.py

# The docs site: the reference pages are generated from the code and bench/results, then MkDocs
# builds it in strict mode (a broken link or a reference to a name that is gone fails).
docs: install
	$(PY) -m duotpu.cli.reference docs
	$(VENV)/bin/mkdocs build --strict --quiet

docs-serve: docs
	$(VENV)/bin/mkdocs serve --dev-addr 127.0.0.1:8000

clean:
	rm -rf build site .pytest_cache
