#!/bin/sh
# Installs the Debian packages named as arguments, only those missing; apt's package lists
# are refreshed once if an install fails. `make test` runs it for the C++ client's build
# (clients/cpp/install-deps.sh) and the console's browser tests (tools/browser/install-deps.sh).
set -eu
missing=""
for package in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $package"
    fi
done
[ -z "$missing" ] && exit 0
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO=sudo
echo "installing Debian packages:$missing"
export DEBIAN_FRONTEND=noninteractive
# shellcheck disable=SC2086  # the package list is meant to split into words
$SUDO apt-get install -y -q --no-install-recommends $missing \
    || { $SUDO apt-get update -q && $SUDO apt-get install -y -q --no-install-recommends $missing; }
