#!/usr/bin/env bash
# Server syscalls per delivery, each backend (BACKENDS="uring epoll uring-direct"), workload B at 100 and 200 msg/s, pinned
# apart: `perf stat -e raw_syscalls:sys_enter` on the server for 4 s of the measured step.
#
#   scripts/perf/syscalls.sh OUT
#
# Needs a release build, taskset and perf (Debian package linux-perf), and the right to
# read tracepoints (root, or kernel.perf_event_paranoid ≤ -1).
set -euo pipefail
cd "$(dirname "$0")/../.."
O=$1
B=${CARGO_TARGET_DIR:-target}/release/ringcast
mkdir -p "$O"
for rate in 100 200; do for backend in ${BACKENDS:-uring epoll uring-direct}; do for r in 1 2; do
  d=$O/$backend-$rate-$r; mkdir -p "$d"
  taskset -c 0 $B serve --listen 127.0.0.1:0 --http off --backend $backend --threads 1 \
    --stats-interval 0 --max-per-ip 0 --max-msg-rate 0 >"$d/stdout" 2>"$d/log" &
  pid=$!
  addr=
  for _ in $(seq 100); do addr=$(sed -n 's/^listening on //p' "$d/stdout" | head -1); [ -n "$addr" ] && break; sleep 0.1; done
  [ -n "$addr" ] || { echo "server did not start: $d/log" >&2; exit 1; }
  taskset -c 1 $B bench --addr "$addr" --server-pid $pid --clients 1000 --rooms 1 --rate $rate \
    --publishers 10 --size 64 --warmup 2s --duration 10s --quiet --out "$d/bench" >"$d/summary.txt" 2>&1 &
  bench=$!
  sleep 7 # connecting (~1 s) and the 2 s warm-up: the next 4 s fall in the measured step
  perf stat -e raw_syscalls:sys_enter -p $pid -x, -o "$d/perf.csv" -- sleep 4
  wait $bench || echo "bench $backend $rate $r: status $?"
  kill -TERM $pid; wait $pid || true
  n=$(grep raw_syscalls "$d/perf.csv" | cut -d, -f1)
  echo "$backend at $rate msg/s, run $r: $n syscalls in 4 s, $(awk -v n="$n" -v r=$rate 'BEGIN { printf "%.3f", n / (r * 999 * 4) }') per delivery"
done; done; done
