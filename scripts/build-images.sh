#!/usr/bin/env bash
# Build Brook's images from this checkout, the Dockerfiles unchanged:
#   brook-broker:TAG and brook-operator:TAG, and with --e2e-client brook-e2e-client:TAG.
# The engine is Docker (BuildKit) when its engine answers, else root podman with
# scripts/podman/containers.conf; BROOK_CONTAINER_ENGINE=docker|podman chooses.
# The base image python:3.11-slim is used when present, else pulled, else (no registry)
# made from Debian's packages: bookworm's Python 3.11 in a venv at /usr/local, as the
# official image has it. Its root filesystem is cached in BROOK_IMAGE_CACHE and the
# image stays in the engine's store, so later runs build nothing of it.
# Quiet: one line per step on stderr; a failed step's log is kept and its tail shown.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    echo "usage: $0 [--tag TAG] [--e2e-client]" >&2
    exit 2
}

tag=dev
e2e_client=
while [ $# -gt 0 ]; do
    case $1 in
        --tag) [ $# -ge 2 ] || usage; tag=$2; shift 2 ;;
        --e2e-client) e2e_client=1; shift ;;
        *) usage ;;
    esac
done

base=docker.io/library/python:3.11-slim
cache=${BROOK_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/brook-images}
mkdir -p "$cache/logs"

say() {
    echo "build-images: $*" >&2
}

fail() {
    say "$*"
    exit 1
}

# step NAME WHAT COMMAND...: run COMMAND with its output in $cache/logs/NAME.log, and
# say how long it took; on failure show the log's tail and stop.
step() {
    local name=$1 what=$2 started=$SECONDS
    shift 2
    local log=$cache/logs/$name.log
    if ! "$@" >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        fail "$what: failed after $((SECONDS - started)) s (whole log: $log)"
    fi
    step_seconds=$((SECONDS - started))
    say "$what: ${step_seconds} s"
}

docker_answers() {
    command -v docker >/dev/null && timeout 30 docker info >/dev/null 2>&1
}

engine=${BROOK_CONTAINER_ENGINE:-}
case $engine in
    docker) docker_answers || fail "BROOK_CONTAINER_ENGINE=docker: no Docker engine answers" ;;
    podman) command -v podman >/dev/null || fail "BROOK_CONTAINER_ENGINE=podman: no podman" ;;
    "")
        if docker_answers; then
            engine=docker
        elif command -v podman >/dev/null; then
            engine=podman
        else
            fail "no container engine: start Docker, or install podman (scripts/setup.sh does)"
        fi
        ;;
    *) fail "BROOK_CONTAINER_ENGINE must be docker or podman, not $engine" ;;
esac

build_flags=()
if [ "$engine" = docker ]; then
    export DOCKER_BUILDKIT=1
else
    export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/scripts/podman/containers.conf}
    # The host's network (no bridge networking is needed, or set up on every machine),
    # and never a registry for the base image.
    build_flags+=(--network host --pull=never)
    # The build's RUN steps see the host's CA bundle in place of the image's own (pip
    # 24.2+ trusts the system's), so pip works behind a TLS-intercepting proxy the host
    # trusts. Mounted over a file the image has, so the image keeps no trace of it.
    host_ca=/etc/ssl/certs/ca-certificates.crt
    if [ -f "$host_ca" ]; then
        build_flags+=(--volume "$host_ca:$host_ca:ro")
    fi
fi
say "engine: $engine"

has_image() {
    "$engine" image inspect "$1" >/dev/null 2>&1
}

# The base image made from Debian's packages: bookworm's python3 (3.11) in a minimal
# root filesystem, then a venv at /usr/local with current pip, setuptools and wheel (the
# brook wheels' dependencies include sdists that Debian's pip cannot build).
make_debian_base() {
    local rootfs_tar=$cache/debian-bookworm-python3.tar.gz
    if [ ! -f "$rootfs_tar" ]; then
        command -v debootstrap >/dev/null \
            || fail "no registry answers and debootstrap is missing to make $base"
        local rootfs
        rootfs=$(mktemp -d)
        trap 'rm -rf --one-file-system "$rootfs"' EXIT
        step debootstrap "debootstrap a Debian root filesystem" \
            debootstrap --variant=minbase \
            --include=python3,python3-venv,python3-pip,ca-certificates bookworm "$rootfs"
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
        step rootfs-tar "cache it in $rootfs_tar" \
            bash -c 'tar -C "$1" -czf "$2.partial" . && mv "$2.partial" "$2"' \
            _ "$rootfs" "$rootfs_tar"
        rm -rf --one-file-system "$rootfs"
        trap - EXIT
    fi
    step base-import "import it as an image" \
        "$engine" import "$rootfs_tar" localhost/brook-debian-python3:bookworm
    local context=$cache/base-context
    mkdir -p "$context"
    cat >"$context/Dockerfile" <<'EOF'
FROM localhost/brook-debian-python3:bookworm
ENV LANG=C.UTF-8 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python3 -m venv /usr/local \
    && pip install --cert /etc/ssl/certs/ca-certificates.crt --upgrade pip setuptools wheel
CMD ["python3"]
EOF
    step base-build "make $base from it" \
        "$engine" build "${build_flags[@]}" -t "$base" "$context"
}

started=$SECONDS
if has_image "$base"; then
    say "base image $base: present"
elif timeout 120 "$engine" pull "$base" >"$cache/logs/base-pull.log" 2>&1; then
    say "base image $base pulled: $((SECONDS - started)) s"
else
    say "base image $base: no registry answered in $((SECONDS - started)) s;" \
        "making it from Debian's packages"
    make_debian_base
    say "base image $base made: $((SECONDS - started)) s"
fi

builds=(
    "brook-broker broker_image/Dockerfile ."
    "brook-operator operator/Dockerfile ."
)
if [ -n "$e2e_client" ]; then
    builds+=("brook-e2e-client tests/e2e/client/Dockerfile tests/e2e/client")
fi

summary=()
for build in "${builds[@]}"; do
    read -r name dockerfile context <<<"$build"
    step "$name-$tag" "build $name:$tag" \
        "$engine" build "${build_flags[@]}" -f "$dockerfile" -t "$name:$tag" "$context"
    bytes=$("$engine" image inspect --format '{{.Size}}' "$name:$tag")
    summary+=("$(printf '%-24s %5d MB %5d s' "$name:$tag" $((bytes / 1000000)) "$step_seconds")")
done
printf '%s\n' "${summary[@]}" >&2
