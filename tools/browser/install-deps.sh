#!/bin/sh
# Debian's headless Chromium and its WebDriver for the console's browser tests (issue 16);
# `make test` runs this.
set -eu
exec sh "$(dirname "$0")/../install-debian-packages.sh" chromium chromium-driver
