# The two commands of the README: `make figures` and `make test`. Both start from python3 + pip.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PARAMS ?= params/default.yaml
# pipefail: a failing pip stops make even though its output goes through the filter below.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
# pip's local extra indexes on these machines print one warning per package; keep the log readable.
PIP_QUIET := 2>&1 | (grep -v "^WARNING: Location" || true)

.PHONY: setup figures test test-browser lint lab bench check regress replicates recovery clean-venv

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt -c constraints.txt $(PIP_QUIET)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e . $(PIP_QUIET)
	$(BIN)/python -c "import irlnb, torch, transformers, trl, papermill, profanity_check, vaderSentiment, readability"
	$(BIN)/irlnb fetch
	touch $@

figures: setup
	$(BIN)/irlnb run $(PARAMS)

# The tests run in one pytest-xdist worker per core (TEST_WORKERS=0: in this process): the smoke runs they make use
# one thread each, so two workers on two cores take about half the time one does. The tests marked slow come first,
# longest first (tests/conftest.py), and are handed out one at a time (--maxschedchunk 1; xdist's default hands each
# worker a quarter of its share at once, which would give one worker every slow test), so the workers finish together.
TEST_WORKERS ?= auto
test: setup lint
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --maxschedchunk 1 --durations=15

# Not part of `make test`: JupyterLab end to end in headless Chromium (Selenium, Debian's chromium and
# chromium-driver): runs 05_analysis by hand on a smoke run and on an audit of its expert without R*, scores two
# texts in the reward explorer, and checks that the committed notebook and the run are left unchanged.
# Screenshots: /tmp/browser_test_screenshot.png, /tmp/browser_test_screenshot-no-r-star.png
test-browser: setup
	@if [ ! -x /usr/bin/chromedriver ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get install -y chromium chromium-driver || { apt-get update && apt-get install -y chromium chromium-driver; }; \
		else echo "make test-browser needs Debian's Chromium; run: sudo apt-get install -y chromium chromium-driver"; exit 1; fi; \
	fi
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-browser.txt -c constraints.txt $(PIP_QUIET)
	$(BIN)/python -m pytest -q tests/browser

# Lint and format check (ruff; line length 120, rules in pyproject.toml).
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# JupyterLab on the repository (open notebooks/ first); committed notebooks are saved back without outputs.
lab: setup
	$(BIN)/python -m irlnb.pipeline.lab

bench: setup
	$(BIN)/irlnb bench

check: setup
	$(BIN)/irlnb check $(PARAMS)

# Not part of `make test`: reruns the whole pipeline into runs/regress/ and compares its metrics
# with the reference recorded on this machine kind: regress/<run name>.metrics.json, or one that
# regress/references.yaml lists (tolerances in regress/tolerances.yaml).
regress: setup
	$(BIN)/irlnb regress $(PARAMS)

clean-venv:
	rm -rf $(VENV)

# Not part of `make test` or `make figures`: Table 1 over 3 alignment seeds, one whole run each (about
# 50 min per seed of the InfoNCA default on 2 cores; seed 0 is runs/default where that is finished) in
# runs/replicates/, recorded in regress/replicates.metrics.json.
replicates: setup
	$(BIN)/irlnb replicates $(PARAMS)

recovery: setup
	$(BIN)/irlnb recovery $(PARAMS)
