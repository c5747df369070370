#!/bin/sh
# The Debian packages the C++ client builds with (issue 14 item 4); `make test` runs this.
# Installs only what is missing; apt's package lists are refreshed once if an install fails.
set -eu
PACKAGES="cmake g++ make pkg-config libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler liblz4-dev libzstd-dev"
missing=""
for package in $PACKAGES; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $package"
    fi
done
[ -z "$missing" ] && exit 0
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO=sudo
echo "clients/cpp: installing$missing"
export DEBIAN_FRONTEND=noninteractive
# shellcheck disable=SC2086  # the package list is meant to split into words
$SUDO apt-get install -y -q --no-install-recommends $missing \
    || { $SUDO apt-get update -q && $SUDO apt-get install -y -q --no-install-recommends $missing; }
