# WizardVicuna Studio: the two commands users need are `make run` and `make test`.
#
#   make run     install everything into .venv (scripts/setup.sh) and start the studio on http://127.0.0.1:7860
#   make test    install everything incl. test dependencies and Chromium, then run the whole test suite on
#                PYTEST_WORKERS processes (default 2, pytest-xdist; a test module stays on one worker)
#                (extra pytest arguments: make test PYTEST_ARGS="-k templates -x"; PYTEST_WORKERS=0 for one process)
#   make bench   run every benchmark in bench/ (one of them: make bench BENCH=bench/NAME.py)
#   make clean   remove .venv and build/test caches (keeps data/ and models/)

SHELL := /bin/bash
PY := .venv/bin/python
PYTEST_ARGS ?=
PYTEST_WORKERS ?= 2
BENCH ?= $(sort $(filter-out bench/_%,$(wildcard bench/*.py)))

export GRADIO_ANALYTICS_ENABLED := False

.PHONY: run test bench clean setup setup-test

setup:
	bash scripts/setup.sh

setup-test:
	bash scripts/setup.sh --test

run: setup
	GRADIO_ANALYTICS_ENABLED=False $(PY) app.py

# pytest's exit status 5 (no test collected) is not a failure here.
test: setup-test
	GRADIO_ANALYTICS_ENABLED=False $(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadscope $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests"; exit 0; fi; exit $$rc

bench: setup
	@if [ -z "$(strip $(BENCH))" ]; then echo "make bench: no benchmarks in bench/"; exit 0; fi; \
	for b in $(BENCH); do echo "== $$b"; GRADIO_ANALYTICS_ENABLED=False $(PY) "$$b" || exit $$?; done

clean:
	rm -rf .venv build dist .pytest_cache *.egg-info
	find . -path ./.git -prune -o -path ./.venv -prune -o -name __pycache__ -type d -exec rm -rf {} +
