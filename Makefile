# make reproduce  -- creates .venv on first use, installs, runs every study's default preset -> results/REPORT.md
# make test       -- creates .venv on first use, installs with the test-only references, runs the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: reproduce test clean

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed requirements-test.txt
	$(PY) -m pip install --quiet -r requirements-test.txt
	touch $@

reproduce: $(VENV)/.installed
	$(PY) -m experiments.reproduce

test: $(VENV)/.installed-test
	$(PY) -m pytest -q -n 2 --dist worksteal --durations=10

clean:
	rm -rf $(VENV)
