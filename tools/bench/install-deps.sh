#!/bin/sh
# Debian's redis-server, the peer `make bench` measures beside Strata (Redis Streams with
# appendfsync always, tests/bench/redis_peer.py); `make bench` and `make bench-cluster` run this.
set -eu
exec sh "$(dirname "$0")/../install-debian-packages.sh" redis-server
