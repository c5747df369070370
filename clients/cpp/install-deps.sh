#!/bin/sh
# The Debian packages the C++ client builds with (issue 14 item 4); `make test` runs this.
set -eu
exec sh "$(dirname "$0")/../../tools/install-debian-packages.sh" \
    cmake g++ make pkg-config libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev \
    protobuf-compiler liblz4-dev libzstd-dev ccache
