#!/usr/bin/env bash
# Soak test of ringcast: runs the server under healthy load, churn and faults for each
# backend and fails on lost/reordered messages, growing RSS or fds, or a dead server.
#
#   scripts/soak.sh                     10 minutes per backend (uring, epoll, then uring-direct)
#   scripts/soak.sh --short             40 seconds per backend, for CI
#   scripts/soak.sh --cluster           3 nodes joined through a nats-server, 10 minutes
#                                       per backend, with NATS killed and stopped under
#                                       them and names raced across them
#   scripts/soak.sh --cluster --short   the same for 40 seconds per backend
#   scripts/soak.sh --short --backends epoll --duration 20s --report reports/x.json
#
# Any other option goes to the soak driver, `ringcast-soak` (see `ringcast-soak --help`,
# built from testkit/). Both binaries are built in release mode; RINGCAST_BIN points the
# soak at another server binary. The report is written to reports/soak[-cluster][-short].json
# unless --report is given. --cluster needs nats-server on the PATH (Debian package
# nats-server); the soak starts it with JetStream on a loopback port and a temporary store.
# Loopback only; the soak kills its servers on exit (they also die with the soak, through
# PR_SET_PDEATHSIG; nats-server is killed when the soak ends, and Ctrl-C reaches it too).
set -euo pipefail

cd "$(dirname "$0")/.."

args=("$@")
cluster=""
short=""
report_given=""
for arg in "${args[@]}"; do
    case "$arg" in
        --cluster) cluster="-cluster" ;;
        --short) short="-short" ;;
        --report|--report=*) report_given=1 ;;
    esac
done
if [[ -z "$report_given" ]]; then
    args+=(--report "reports/soak${cluster}${short}.json")
fi
if [[ -n "$cluster" ]] && ! command -v nats-server >/dev/null; then
    echo "soak: --cluster needs nats-server: apt-get install -y nats-server" >&2
    exit 1
fi

echo "soak: building release" >&2
cargo build --release --bin ringcast --bin ringcast-soak
target_dir="${CARGO_TARGET_DIR:-target}/release"
exec "$target_dir/ringcast-soak" --server-bin "${RINGCAST_BIN:-$target_dir/ringcast}" "${args[@]}"
