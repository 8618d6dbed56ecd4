#!/usr/bin/env bash
# Read latency against socket latency with the harness's core busy (docs/perf-log.md
# entry 25): one uring server on CPU 0 kept up for all runs of a workload, the harness on
# CPU 1, and for the "spin" runs a shell busy-loop pinned beside it.
#
#   scripts/perf/socket-latency.sh OUT
#
# Needs a release build (cargo build --release) and taskset. About 15 minutes.
set -euo pipefail
cd "$(dirname "$0")/../.."
O=$1
B=target/release/ringcast
mkdir -p "$O"
ulimit -n "$(ulimit -Hn)"
pid=; addr=; spid=
one() { # NAME BENCH ARGS...
  local name=$1; shift
  local dir=$O/$name; mkdir -p "$dir"
  taskset -c 1 $B bench --addr "$addr" --server-pid "$pid" "$@" --publishers 10 --size 64 \
    --warmup 2s --duration 10s --quiet --out "$dir" >"$dir/summary.txt" 2>"$dir/bench.log" \
    || echo "bench $name: status $? (see $dir/bench.log)"
}
spin_on() { taskset -c 1 sh -c 'while :; do :; done' & spid=$!; }
spin_off() { kill "$spid"; wait "$spid" 2>/dev/null || true; }
start() {
  taskset -c 0 $B serve --listen 127.0.0.1:0 --http off --threads 1 --stats-interval 0 \
    --max-per-ip 0 --max-msg-rate 0 >"$O/server-$1.stdout" 2>"$O/server-$1.log" &
  pid=$!
  addr=
  for _ in $(seq 100); do addr=$(sed -n 's/^listening on //p' "$O/server-$1.stdout" | head -1); [ -n "$addr" ] && break; sleep 0.1; done
  [ -n "$addr" ] || { echo "server did not start: $O/server-$1.log" >&2; exit 1; }
}
stop() { kill -TERM "$pid"; wait "$pid" || true; }
start B
for r in 1 2 3; do
  # Two plain runs per round: two sets of three for the run-to-run comparison.
  for rate in 50 100 200; do
    one "B$rate-plain-a$r" --clients 1000 --rooms 1 --rate $rate
    one "B$rate-plain-b$r" --clients 1000 --rooms 1 --rate $rate
    spin_on; one "B$rate-spin$r" --clients 1000 --rooms 1 --rate $rate; spin_off
  done
done
stop
start A
for r in 1 2 3; do
  one "A-plain$r" --clients 10000 --rooms 100 --rate 1000; sleep 30
  spin_on; one "A-spin$r" --clients 10000 --rooms 100 --rate 1000; spin_off; sleep 30
done
stop
echo "results in $O/<run>/report.json (latency, socket_latency, send_lag, harness_peak_util)"
