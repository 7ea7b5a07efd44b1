# Two commands on a fresh machine: `make demo` and `make test`. Both set up first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
MODEL  := smollm2-135m-instruct

.PHONY: setup model demo test soak bench clean browser docs docs-figures

setup: $(STAMP) model

# The versions tested are constraints.txt's (pyproject.toml has compatible ranges). torch is also
# pinned on the command line: an unpinned torch would be a multi-GB CUDA build. pip compiles
# bytecode on one core; compileall on every core does the same work in less wall time
# (measured here: 81-94 s against 106 s).
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --no-compile -c constraints.txt torch==2.13.0 -e '.[dev]'
	$(BIN)/python -m compileall -q -j 0 "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" > /dev/null || true
	touch $(STAMP)

# Idempotent: the model store answers from its cache after the first pull.
model: $(STAMP)
	$(BIN)/tunekit models pull $(MODEL)

demo: setup
	$(BIN)/tunekit run examples/support/config.yaml

# The report's browser test (tests/eval/test_report_browser.py) opens report.html in
# headless Chromium. Installed here when missing and possible: as root with apt-get (CI on
# Debian: no stdin, so non-interactive and quiet), refreshing the package lists only when
# installing from the present ones fails. Otherwise a note, and that test fails saying why.
APT := DEBIAN_FRONTEND=noninteractive apt-get -y -qq -o DPkg::Lock::Timeout=120
browser:
	@command -v chromium >/dev/null 2>&1 || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing chromium for the report's browser test"; \
	  $(APT) install --no-install-recommends chromium >/dev/null 2>&1 || \
	  { $(APT) update >/dev/null && $(APT) install --no-install-recommends chromium >/dev/null; } || \
	  echo "note: could not install chromium; the report's browser test will fail"; \
	else echo "note: chromium is missing (Debian: sudo apt-get install chromium); the report's browser test will fail"; fi

test: setup browser
	$(BIN)/python -m pytest

# Robustness beyond the suite's budget: `tunekit run` SIGKILLed 20 times across its stages
# (tests/test_kill_stages.py; CI runs 5). TUNEKIT_SOAK_SEED=N picks other moments.
soak: setup
	$(BIN)/python -m pytest -m soak -s

# Benchmarks are not tests: they measure this machine and write bench/results/.
# vs_trl.py trains TRL and tunekit side by side (3 pairs each of LoRA and full, and
# generation): hours on a 2-core CPU; `python bench/vs_trl.py --help` for shorter runs.
bench: setup
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/prepare_100k.py
	$(BIN)/python bench/vs_trl.py

# The user guide (docs/, mkdocs.yml) into site/. --strict: a broken link, anchor or nav entry fails.
docs: docs-figures
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet
	@echo "built site/index.html"

# Every measured figure in README.md and docs/ rendered from bench/results/*.json and the
# examples' expected/ results (tools/docs_figures.py), and the config and command references
# from the config models and the parser (tools/config_reference.py, tools/cli_reference.py).
# tests/test_docs.py fails when any of them is stale.
docs-figures: $(STAMP)
	$(BIN)/python tools/config_reference.py
	$(BIN)/python tools/cli_reference.py
	$(BIN)/python tools/docs_figures.py

clean:
	rm -rf runs .pytest_cache site
