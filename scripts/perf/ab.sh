#!/usr/bin/env bash
# Alternating rounds of server variants under one workload, pinned apart (server on CPU 0,
# harness on CPU 1): the loop behind docs/perf-log.md entries 23-25.
#
#   scripts/perf/ab.sh OUT ROUNDS "BENCH ARGS" "NAME:SERVE ARGS" ["NAME:SERVE ARGS" ...]
#
# e.g. scripts/perf/ab.sh reports/metrics-B100 5 \
#        "--clients 1000 --rooms 1 --rate 100 --publishers 10 --size 64 --warmup 2s --duration 10s" \
#        "on:--metrics on" "off:--metrics off"
# then: target/release/ringcast compare --group --force OUT/round*/on OUT/round*/off
# Needs a release build (cargo build --release) and taskset.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=$1; rounds=$2; load=$3; shift 3
B=target/release/ringcast
ulimit -n "$(ulimit -Hn)"
mkdir -p "$out"
for round in $(seq "$rounds"); do
  for variant in "$@"; do
    name=${variant%%:*}; sargs=${variant#*:}
    dir="$out/round$round/$name"; mkdir -p "$dir"
    # shellcheck disable=SC2086 # the variant's and the workload's flags split on purpose
    taskset -c 0 $B serve --listen 127.0.0.1:0 --http 127.0.0.1:0 --threads 1 \
      --stats-interval 0 --max-per-ip 0 --max-msg-rate 0 $sargs >"$dir/server.stdout" 2>"$dir/server.log" &
    pid=$!
    addr=
    for _ in $(seq 100); do addr=$(sed -n 's/^listening on //p' "$dir/server.stdout" | head -1); [ -n "$addr" ] && break; sleep 0.1; done
    [ -n "$addr" ] || { echo "server $name did not start: $dir/server.log" >&2; kill "$pid"; exit 1; }
    # shellcheck disable=SC2086
    taskset -c 1 $B bench --addr "$addr" --server-pid $pid $load --quiet --out "$dir" >"$dir/summary.txt" 2>"$dir/bench.log" \
      || echo "bench $name round $round: status $? (see $dir/bench.log)"
    kill -TERM $pid; wait $pid || true
    # Many clients leave many sockets in TIME_WAIT: let the ports go before the next run.
    case "$load" in *"--clients 10000"*) sleep 30 ;; *) sleep 2 ;; esac
  done
done
