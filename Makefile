# Shortcuts for the commands in README.md.
PYTHON ?= python3

.PHONY: setup test test-full e2e bench up

setup:
	bash scripts/setup.sh

test:
	bash scripts/test.sh

test-full:
	bash scripts/test.sh --full

# Skipped, with one line saying why, where Docker or kind is missing (exit 5: no tests yet).
e2e:
	$(PYTHON) -m pytest tests/e2e -m '' || [ $$? -eq 5 ]

bench:
	$(PYTHON) bench/produce_consume.py

up:
	brook local up
