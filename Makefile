# Shortcuts for the commands in README.md.
PYTHON ?= python3

.PHONY: setup test test-full e2e lint-chart bench up

setup:
	bash scripts/setup.sh

test:
	bash scripts/test.sh

test-full:
	bash scripts/test.sh --full

# Builds the broker, operator and client images, creates a kind cluster, loads the
# images, installs the Helm chart and runs tests/e2e against it, then deletes the
# cluster (BROOK_E2E_KEEP_CLUSTER=1 keeps it). Skipped, with one line saying why, where
# Docker, kind or helm is missing.
e2e:
	$(PYTHON) -m pytest tests/e2e -m '' --maxfail=1

# The CRDs, examples, chart and Dockerfiles, checked as CI checks them (seconds).
lint-chart:
	helm lint --strict helm/brook-operator
	$(PYTHON) -m pytest tests/unit/test_crds.py tests/integration/test_helm_chart.py \
		tests/integration/test_dockerfiles.py -q

bench:
	$(PYTHON) bench/produce_consume.py

up:
	brook local up
