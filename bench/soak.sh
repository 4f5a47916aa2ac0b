#!/bin/sh
# The fault soak: the real proxy binary in front of the built-in emulator, on 127.0.0.1 only,
# under mixed traffic and scheduled faults; it stops by itself after SECONDS, prints a report
# and one JSON line, and exits non-zero when an invariant fails. See docs/testing.md,
# "Fault soak". Not part of CI's default run.
#
# Usage: bench/soak.sh [BINARY] [SECONDS]
#   BINARY   the creatio-proxy binary to soak; default: build target/release/creatio-proxy
#   SECONDS  how long to drive traffic, warm-up included; default 180
# More options (clients, pacing, --keep): bench/soak.sh BINARY SECONDS --help
set -eu
binary=${1:-}
# A binary given relative to where the script was started from.
case "$binary" in
    "" | /*) ;;
    *) binary="$(cd "$(dirname "$binary")" && pwd)/$(basename "$binary")" ;;
esac
cd "$(dirname "$0")/.."
seconds=${2:-180}
[ $# -gt 0 ] && shift
[ $# -gt 0 ] && shift
if [ -z "$binary" ]; then
    cargo build --release
    binary=target/release/creatio-proxy
fi
exec cargo run --release --example soak -- --binary "$binary" --seconds "$seconds" "$@"
