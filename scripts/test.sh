#!/usr/bin/env bash
# Install everything the test suite needs on a Debian machine, then run the whole suite.
# Usage: bash scripts/test.sh [pytest arguments]
# Needs root for apt-get and for the end-to-end tests, which give each container client a private
# /etc/hosts through `unshare -m` so that no test host name reaches the system's DNS resolver.
set -euo pipefail
cd "$(dirname "$0")/.."

# Real clients for the end-to-end tests (skopeo, podman, docker, containerd), and the tools that build
# the test image from Debian's packages (mmdebstrap, umoci). The tests also start their own PostgreSQL
# server (postgresql) and a single-node Ceph cluster with RADOS Gateway as S3 storage (radosgw,
# ceph-mon, ceph-osd).
DEBIAN_PACKAGES=(skopeo podman umoci mmdebstrap docker.io containerd postgresql curl ca-certificates
  radosgw ceph-mon ceph-osd)

missing=()
for package in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
  echo "Installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -e '.[test]'

exec .venv/bin/pytest "$@"
