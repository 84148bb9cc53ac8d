#!/usr/bin/env bash
# Prepare this machine to run the compose stack without any image registry (docs/deployment.md,
# "Without an image registry"):
#   1. Docker Engine (Debian 12's docker.io), debootstrap and Chromium (for the UI test), if missing;
#   2. Docker Compose v2 from Debian 13 (pinned low: nothing else is taken from trixie), if missing;
#   3. dockerd, if not running;
#   4. the base image local/python-base:bookworm (debootstrap + the host's CA bundle), if missing;
#   5. the stand-in images selected by offline.env (PostgreSQL, Caddy, SeaweedFS S3 for MinIO, Prometheus, Redis for
#      the `ha` profile); layer cache.
# Idempotent: a second run only checks and takes seconds. Needs root and apt-get.
# What it leaves on the machine, and how to undo it:
#   - packages docker.io, debootstrap, chromium, docker-compose:  apt-get remove <package>
#   - /etc/apt/sources.list.d/trixie.list and /etc/apt/preferences.d/trixie (the low pin): delete both,
#     then apt-get update
#   - a dockerd started in the background (log /var/log/dockerd.log):  pkill dockerd
#   - the images local/python-base:bookworm and the stand-ins:  docker rmi <image>
# Then the runbook of docs/deployment.md, with
#   export COMPOSE_ENV_FILES=.env,.development.env,backend/tests/stack/offline.env
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
BASE_IMAGE=local/python-base:bookworm
DEBIAN_MIRROR=http://deb.debian.org/debian

step() { printf '[build_offline %(%H:%M:%S)T] %s\n' -1 "$*"; }
timed() { local start=$SECONDS; "$@"; step "$1: $((SECONDS - start))s"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "build_offline.sh: must run as root (installs packages, starts dockerd)" >&2
    exit 2
fi
command -v apt-get >/dev/null || { echo "build_offline.sh: needs apt-get (Debian)" >&2; exit 2; }

missing_packages() {
    local package
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || echo "$package"
    done
}

install_packages() {
    local missing
    missing=$(missing_packages docker.io debootstrap chromium)
    if [ -n "$missing" ]; then
        step "installing $(echo $missing)"
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing
    fi
}

install_compose_v2() {
    docker compose version >/dev/null 2>&1 && return
    step "installing Docker Compose v2 from trixie (pinned low)"
    echo "deb $DEBIAN_MIRROR trixie main" > /etc/apt/sources.list.d/trixie.list
    printf 'Package: *\nPin: release n=trixie\nPin-Priority: 50\n' > /etc/apt/preferences.d/trixie
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends -t trixie docker-compose
}

start_dockerd() {
    docker info >/dev/null 2>&1 && return
    step "starting dockerd (log: /var/log/dockerd.log)"
    setsid nohup dockerd >/var/log/dockerd.log 2>&1 < /dev/null &
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && return
        sleep 1
    done
    echo "build_offline.sh: dockerd did not answer within 60 s; see /var/log/dockerd.log" >&2
    exit 1
}

build_base_image() {
    docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 && return
    step "building $BASE_IMAGE with debootstrap"
    local rootfs
    rootfs=$(mktemp -d /var/tmp/archiver-rootfs.XXXXXX)
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,curl \
        bookworm "$rootfs" "$DEBIAN_MIRROR" >/dev/null
    # Without the host's CA bundle, HTTPS to PyPI from inside containers fails verification here.
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
    tar -C "$rootfs" -c . | docker import - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
}

build_standins() {
    # Image names come from offline.env, so the compose file and this script agree.
    local variable name image
    for variable in POSTGRES_IMAGE:postgres PROXY_IMAGE:proxy MINIO_IMAGE:s3 PROMETHEUS_IMAGE:prometheus REDIS_IMAGE:redis; do
        name=${variable#*:}
        image=$(sed -n "s/^${variable%%:*}=//p" "$here/offline.env")
        step "stand-in $image"
        local output
        if ! output=$(docker build --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$image" "$here/images/$name" 2>&1); then
            echo "$output" >&2
            echo "build_offline.sh: building $image failed (output above)" >&2
            exit 1
        fi
    done
}

timed install_packages
timed install_compose_v2
timed start_dockerd
timed build_base_image
timed build_standins
step "ready: $(docker compose version), engine $(docker version -f '{{.Server.Version}}')"
