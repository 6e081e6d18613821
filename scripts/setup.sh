#!/usr/bin/env bash
# Install what Brook needs on a Debian machine with Python 3.11+, run as root.
# Safe to run again: kcat is installed only when missing, and the editable install
# points the brook, brook-broker commands and the tests at this checkout.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}

apt_install() {
    if [ -z "${apt_updated:-}" ]; then
        apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if ! command -v "$python" >/dev/null; then
    echo "setup: $python not found; Brook needs Python 3.11 or newer" >&2
    exit 1
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "setup: Brook needs Python 3.11 or newer, $python is $("$python" -V 2>&1)" >&2
    exit 1
fi

# kcat: a Kafka client the integration tests and the benchmark drive the broker with.
if ! command -v kcat >/dev/null; then
    apt_install kcat
fi

if ! "$python" -m pip --version >/dev/null 2>&1; then
    apt_install python3-pip
fi

# Debian's own Python refuses pip installs outside a virtual environment (PEP 668);
# this machine is set up for Brook, so install next to it as the README expects.
pip_flags=(--quiet --disable-pip-version-check)
if "$python" - <<'PY'
import sys, sysconfig, pathlib
in_venv = sys.prefix != sys.base_prefix
managed = pathlib.Path(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED").exists()
sys.exit(0 if managed and not in_venv else 1)
PY
then
    pip_flags+=(--break-system-packages)
fi

PIP_ROOT_USER_ACTION=ignore "$python" -m pip install "${pip_flags[@]}" -e '.[test]'
# With pyenv, new console scripts (brook, brook-broker) need their shims made.
if command -v pyenv >/dev/null; then
    pyenv rehash
fi
echo "setup: done: $("$python" -V 2>&1), kcat $(kcat -V 2>&1 | awk '/^Version/ {print $2}')" >&2
