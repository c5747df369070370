#!/bin/sh
# Debian's headless Chromium and its WebDriver for the console's browser tests (issue 16);
# `make test` runs this. Installs only what is missing; apt's package lists are refreshed
# once if an install fails.
set -eu
PACKAGES="chromium chromium-driver"
missing=""
for package in $PACKAGES; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $package"
    fi
done
[ -z "$missing" ] && exit 0
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO=sudo
echo "tools/browser: installing$missing"
export DEBIAN_FRONTEND=noninteractive
# shellcheck disable=SC2086  # the package list is meant to split into words
$SUDO apt-get install -y -q --no-install-recommends $missing \
    || { $SUDO apt-get update -q && $SUDO apt-get install -y -q --no-install-recommends $missing; }
