#!/usr/bin/env bash
# Soak test of ringcast: runs the server under healthy load, churn and faults for each
# backend and fails on lost/reordered messages, growing RSS or fds, or a dead server.
#
#   scripts/soak.sh            10 minutes per backend (uring, then epoll)
#   scripts/soak.sh --short    40 seconds per backend, for CI
#   scripts/soak.sh --short --backends epoll --duration 20s --report reports/x.json
#
# Any other option goes to the soak driver, `ringcast-soak` (see `ringcast-soak --help`,
# built from testkit/). Both binaries are built in release mode; RINGCAST_BIN points the
# soak at another server binary. The report is written to reports/soak[-short].json
# unless --report is given. Loopback only; the soak kills its server on exit (it also dies
# with the soak, through PR_SET_PDEATHSIG).
set -euo pipefail

cd "$(dirname "$0")/.."

args=("$@")
report=reports/soak.json
for arg in "${args[@]}"; do
    case "$arg" in
        -h|--help) ;;
        --short) report=reports/soak-short.json ;;
        --report|--report=*) report="" ;;
    esac
done
if [[ -n "$report" ]]; then
    args+=(--report "$report")
fi

echo "soak: building release" >&2
cargo build --release --bin ringcast --bin ringcast-soak
target_dir="${CARGO_TARGET_DIR:-target}/release"
exec "$target_dir/ringcast-soak" --server-bin "${RINGCAST_BIN:-$target_dir/ringcast}" "${args[@]}"
