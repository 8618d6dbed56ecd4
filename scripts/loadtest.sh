#!/usr/bin/env bash
# Runs one load scenario against each backend and compares them.
#
#   scripts/loadtest.sh [--clients N] [--publishers N] [--rooms N] [--rate R[,R...]]
#                       [--size BYTES] [--duration D] [--warmup D] [--threads N]
#                       [--procs N] [--backends "uring epoll"] [--out DIR]
#
# Every flag can also be given as an environment variable (CLIENTS, PUBLISHERS, ROOMS,
# RATE, SIZE, DURATION, WARMUP, THREADS, PROCS, BACKENDS, OUT). SERVER_CPUS and BENCH_CPUS
# (taskset lists such as "0" and "1") pin the server and the harness to separate cores.
# Results go to reports/<timestamp>/<backend>/ (report.json, latency.hgrm, logs), then
# reports/<timestamp>/summary.md and comparison.svg.
#
# Exit status: 0 when every run was clean; 1 when a server failed to start or crashed,
# the harness failed, or any delivery was lost.
set -euo pipefail

cd "$(dirname "$0")/.."

CLIENTS=${CLIENTS:-1000}
PUBLISHERS=${PUBLISHERS:-10}
ROOMS=${ROOMS:-10}
RATE=${RATE:-250,500,1000,2000}
SIZE=${SIZE:-128}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
THREADS=${THREADS:-1}
PROCS=${PROCS:-1}
BACKENDS=${BACKENDS:-"uring epoll"}
SERVER_CPUS=${SERVER_CPUS:-}
BENCH_CPUS=${BENCH_CPUS:-}
OUT=${OUT:-}

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --clients) CLIENTS=$2; shift 2 ;;
    --publishers) PUBLISHERS=$2; shift 2 ;;
    --rooms) ROOMS=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --procs) PROCS=$2; shift 2 ;;
    --backends) BACKENDS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "loadtest: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done

say() { echo "loadtest: $*" >&2; }

# --- Build ------------------------------------------------------------------------------
say "building release"
cargo build --release --quiet
BIN="${CARGO_TARGET_DIR:-target}/release/ringcast"
[ -x "$BIN" ] || { say "no binary at $BIN"; exit 1; }

# --- Machine checks ---------------------------------------------------------------------
kernel=$(uname -r)
major=${kernel%%.*}; rest=${kernel#*.}; minor=${rest%%.*}
if [ "$major" -lt 5 ] || { [ "$major" -eq 5 ] && [ "$minor" -lt 11 ]; }; then
  say "kernel $kernel is older than 5.11: the uring backend may not start"
fi
# Each simulated client is one descriptor in the harness and one in the server.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
nofile=$(ulimit -n)
per_proc=$(( (CLIENTS + PROCS - 1) / PROCS + 64 ))
if [ "$nofile" != unlimited ] && { [ "$per_proc" -gt "$nofile" ] || [ $((CLIENTS + 64)) -gt "$nofile" ]; }; then
  say "ulimit -n is $nofile: too low for $CLIENTS clients (raise it, or use --procs for the harness side)"
  exit 1
fi
# Optional pinning. Arrays rather than a shell function, so that `$!` of a background
# server is the server itself (taskset execs it), not a subshell.
server_pin=(); bench_pin=()
if [ -n "$SERVER_CPUS" ]; then server_pin=(taskset -c "$SERVER_CPUS"); fi
if [ -n "$BENCH_CPUS" ]; then bench_pin=(taskset -c "$BENCH_CPUS"); fi

stamp=$(date -u +%Y%m%dT%H%M%SZ)
OUT=${OUT:-reports/$stamp}
mkdir -p "$OUT"
say "kernel $kernel, $(nproc) cores, ulimit -n $nofile; results in $OUT"

failed=0
server_pid=
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

compared=()
for backend in $BACKENDS; do
  dir="$OUT/$backend"
  mkdir -p "$dir"
  say "=== $backend: starting the server"
  ${server_pin[@]+"${server_pin[@]}"} "$BIN" serve --listen 127.0.0.1:0 --backend "$backend" \
    --threads "$THREADS" --stats-interval 0 >"$dir/server.stdout" 2>"$dir/server.log" &
  server_pid=$!
  addr=
  for _ in $(seq 100); do  # up to 10 s for the "listening on" line
    if ! kill -0 "$server_pid" 2>/dev/null; then break; fi
    addr=$(sed -n 's/^listening on //p' "$dir/server.stdout" 2>/dev/null | head -n1)
    [ -n "$addr" ] && break
    sleep 0.1
  done
  if [ -z "$addr" ]; then
    say "$backend: the server did not start; its log:"
    tail -n 20 "$dir/server.log" >&2 || true
    cleanup; server_pid=; failed=1
    continue
  fi
  say "$backend: server pid $server_pid at $addr"

  set +e
  ${bench_pin[@]+"${bench_pin[@]}"} "$BIN" bench --addr "$addr" --server-pid "$server_pid" \
    --clients "$CLIENTS" --publishers "$PUBLISHERS" --rooms "$ROOMS" --rate "$RATE" \
    --size "$SIZE" --duration "$DURATION" --warmup "$WARMUP" --procs "$PROCS" \
    --out "$dir" 2> >(tee "$dir/bench.log" >&2) | tee "$dir/summary.txt"
  bench_status=${PIPESTATUS[0]}
  set -e
  case "$bench_status" in
    0) ;;
    2) say "$backend: deliveries were LOST (see $dir/summary.txt)"; failed=1 ;;
    *) say "$backend: the harness failed with status $bench_status"; failed=1 ;;
  esac

  if ! kill -0 "$server_pid" 2>/dev/null; then
    set +e; wait "$server_pid"; status=$?; set -e
    say "$backend: the server CRASHED during the run (exit status $status); log in $dir/server.log"
    failed=1
  else
    kill -TERM "$server_pid"
    set +e; wait "$server_pid"; status=$?; set -e
    if [ "$status" -ne 0 ]; then
      say "$backend: the server exited with status $status on SIGTERM; log in $dir/server.log"
      failed=1
    fi
  fi
  server_pid=
  [ -f "$dir/report.json" ] && compared+=("$dir")
done

if [ ${#compared[@]} -gt 0 ]; then
  {
    echo "# ringcast load test $stamp"
    echo
    echo "Scenario: $CLIENTS clients ($PUBLISHERS publishers) in $ROOMS rooms, rates $RATE msg/s," \
      "$SIZE-byte messages, $DURATION per rate after $WARMUP warm-up; server threads $THREADS," \
      "harness processes $PROCS${SERVER_CPUS:+, server on CPUs $SERVER_CPUS}${BENCH_CPUS:+, harness on CPUs $BENCH_CPUS}."
    echo
    "$BIN" compare --markdown --svg "$OUT/comparison.svg" "${compared[@]}"
    echo
    echo "Per-backend details: \`<backend>/summary.txt\`, \`report.json\`, \`latency.hgrm\`."
  } >"$OUT/summary.md" || { say "compare failed"; failed=1; }
  cat "$OUT/summary.md"
fi
say "results in $OUT"
exit "$failed"
