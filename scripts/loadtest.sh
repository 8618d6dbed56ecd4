#!/usr/bin/env bash
# Runs one load scenario against each system and compares them.
#
#   scripts/loadtest.sh [--workload A|B|C|D|idle] [--peers] [--repeat N] [--proto line|ws]
#                       [--server-cpus LIST] [--bench-cpus LIST]
#                       [--clients N] [--publishers N] [--rooms N] [--rate R[,R...]]
#                       [--size BYTES] [--duration D] [--warmup D] [--slo D] [--threads N]
#                       [--procs N] [--backends "uring epoll"] [--out DIR]
#                       [--room-sizes uniform|zipf[:S]] [--size-dist MIN-MAX]
#                       [--churners N] [--churn R] [--slow-readers N]
#
# --workload   the workloads of README's Performance section (64-byte messages, 10
#              publishers); flags given after it still override its settings:
#                A     10,000 clients in 100 rooms, 1,000 msg/s in
#                B     1,000 clients in 1 room, 200 msg/s in
#                C     1,000 clients in 1 room, a rate sweep up to capacity, --slo 20ms
#                D     a realistic mix: 10,000 clients in 500 rooms of Zipf sizes (the
#                      largest 1,400, most under 20), 100 publishers (by room size),
#                      300 msg/s of 20-400 bytes (median 60), 500 churners making 50
#                      joins/leaves/switches a second, 5 slow readers the servers must cut
#                      (limits below); 40 s warm-up (the kernel holds ~140 KB for a stalled
#                      reader before a server sees anything: ~40 s of its room's traffic,
#                      so the cut-offs fall in the measured time), 20 s measured
#                idle  10,000 clients that connect, join and send nothing: server RSS per
#                      idle connection
#              each runs the server (one thread) on CPU 0 and the harness on CPU 1 unless
#              --server-cpus/--bench-cpus say otherwise
# --peers      also run Redis pub/sub (redis-server) and nats-server, bound to 127.0.0.1
#              on a free port, persistence off, started and stopped by PID; installed
#              with apt-get when missing
# --repeat N   N rounds, the systems alternating within each (uring, epoll, redis, nats,
#              uring, ...); the summary shows each figure's median with [min–max]
# --proto ws   load the ringcast backends over WebSocket (their HTTP listener's /ws)
#              instead of the line protocol (the default, `line`); Redis and NATS speak
#              their own protocols either way
# --server-cpus, --bench-cpus   taskset CPU lists ("0", "1", "0-1") pinning the server and
#              the harness apart
# --room-sizes, --size-dist, --churners, --churn, --slow-readers   the parts of a mixed
#              workload, as `ringcast bench` takes them. With slow readers the servers get
#              limits that cut a client which stops reading, and leave alone one that
#              reads: ringcast --max-outbound 64k --write-timeout 5s; Redis
#              client-output-buffer-limit pubsub 64kb 0 0 (Redis counts its reply list
#              in ~16 KB chunks: a reader with one message spilled already shows 20 KB,
#              so a soft limit near that cuts readers); NATS max_pending 32 KiB,
#              write_deadline 5s (a config file)
#
# Every flag can also be given as an environment variable (WORKLOAD, PEERS=1, REPEAT,
# PROTO, SERVER_CPUS, BENCH_CPUS, CLIENTS, PUBLISHERS, ROOMS, RATE, SIZE, DURATION, WARMUP, SLO,
# THREADS, PROCS, BACKENDS, OUT, ROOM_SIZES, SIZE_DIST, CHURNERS, CHURN, SLOW_READERS). --out DIR (OUT) writes the results there instead of
# reports/<timestamp>/. Results go to <out>/<system>/ (with --repeat,
# <out>/round<K>/<system>/): report.json, latency.hgrm, logs; then <out>/summary.md,
# which opens with the verdict, and the chart comparison.svg (and comparison.png when
# rsvg-convert is installed).
#
# ringcast servers run with --max-msg-rate 0 --max-per-ip 0 when their --help lists
# those flags: the harness sends many lines from many connections on 127.0.0.1, which a
# public server's input limits would refuse. Before each run the script waits (up to
# 70 s) for sockets left in TIME_WAIT by a previous large run to expire when, with this
# run's clients, they would take most of the ephemeral ports.
#
# Exit status: 0 when every run was clean; 1 when a server failed to start or crashed,
# the harness failed, or any delivery was lost.
set -euo pipefail

cd "$(dirname "$0")/.."

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
say() { echo "loadtest: $*" >&2; }

WORKLOAD=${WORKLOAD:-}
# The workload presets come first so that explicit flags override them.
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  if [ "${args[$i]}" = --workload ] && [ $((i + 1)) -lt ${#args[@]} ]; then
    WORKLOAD=${args[$((i + 1))]}
  fi
done
IDLE=
# Extra flags for the ringcast servers (a workload's limits).
SERVER_ARGS=()
case "$WORKLOAD" in
  "") ;;
  A|a) CLIENTS=10000; ROOMS=100; PUBLISHERS=10; RATE=1000; SIZE=64 ;;
  B|b) CLIENTS=1000; ROOMS=1; PUBLISHERS=10; RATE=200; SIZE=64 ;;
  C|c) CLIENTS=1000; ROOMS=1; PUBLISHERS=10; SIZE=64; SLO=20ms; THREADS=1
       RATE=500,1000,2000,3000,4000,5000,6000; DURATION=5s ;;
  D|d) CLIENTS=10000; ROOMS=500; PUBLISHERS=100; RATE=300; SIZE=60; SIZE_DIST=20-400
       ROOM_SIZES=zipf; CHURNERS=500; CHURN=50; SLOW_READERS=5; WARMUP=40s; DURATION=20s ;;
  idle) CLIENTS=10000; ROOMS=100; IDLE=1 ;;
  *) say "unknown --workload $WORKLOAD (A, B, C, D or idle)"; exit 2 ;;
esac
if [ -n "$WORKLOAD" ]; then
  # The workloads are measured with the server (one thread) and the harness on separate
  # cores, so that neither takes CPU from the other.
  SERVER_CPUS=${SERVER_CPUS:-0}; BENCH_CPUS=${BENCH_CPUS:-1}
fi

CLIENTS=${CLIENTS:-1000}
PUBLISHERS=${PUBLISHERS:-10}
ROOMS=${ROOMS:-10}
RATE=${RATE:-250,500,1000,2000}
SIZE=${SIZE:-128}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
SLO=${SLO:-10ms}
THREADS=${THREADS:-1}
PROCS=${PROCS:-1}
BACKENDS=${BACKENDS:-"uring epoll"}
PEERS=${PEERS:-}
REPEAT=${REPEAT:-1}
PROTO=${PROTO:-line}
SERVER_CPUS=${SERVER_CPUS:-}
BENCH_CPUS=${BENCH_CPUS:-}
OUT=${OUT:-}
ROOM_SIZES=${ROOM_SIZES:-uniform}
SIZE_DIST=${SIZE_DIST:-}
CHURNERS=${CHURNERS:-0}
CHURN=${CHURN:-0}
SLOW_READERS=${SLOW_READERS:-0}

while [ $# -gt 0 ]; do
  case "$1" in
    --workload) shift 2 ;;  # applied above
    --peers) PEERS=1; shift ;;
    --repeat) REPEAT=$2; shift 2 ;;
    --proto) PROTO=$2; shift 2 ;;
    --server-cpus) SERVER_CPUS=$2; shift 2 ;;
    --bench-cpus) BENCH_CPUS=$2; shift 2 ;;
    --clients) CLIENTS=$2; shift 2 ;;
    --publishers) PUBLISHERS=$2; shift 2 ;;
    --rooms) ROOMS=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --slo) SLO=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --procs) PROCS=$2; shift 2 ;;
    --backends) BACKENDS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --room-sizes) ROOM_SIZES=$2; shift 2 ;;
    --size-dist) SIZE_DIST=$2; shift 2 ;;
    --churners) CHURNERS=$2; shift 2 ;;
    --churn) CHURN=$2; shift 2 ;;
    --slow-readers) SLOW_READERS=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) say "unknown argument $1"; usage >&2; exit 2 ;;
  esac
done

case "$REPEAT" in
  ''|*[!0-9]*|0) say "--repeat needs a whole number of rounds, 1 or more"; exit 2 ;;
esac
case "$PROTO" in
  line|ws) ;;
  *) say "unknown --proto $PROTO (line or ws)"; exit 2 ;;
esac
SYSTEMS=$BACKENDS
if [ -n "$PEERS" ]; then
  for peer in redis nats; do
    case " $SYSTEMS " in *" $peer "*) ;; *) SYSTEMS="$SYSTEMS $peer" ;; esac
  done
fi
for system in $SYSTEMS; do
  case "$system" in
    uring|epoll|redis|nats) ;;
    *) say "unknown system $system (uring, epoll, redis, nats)"; exit 2 ;;
  esac
done

# --- Peers: installed when missing -------------------------------------------------------
peer_binary() { case "$1" in redis) echo redis-server ;; nats) echo nats-server ;; esac; }
missing=()
for system in $SYSTEMS; do
  bin=$(peer_binary "$system")
  if [ -n "$bin" ] && ! command -v "$bin" >/dev/null; then missing+=("$bin"); fi
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} with apt-get (Debian packages of the same names)"
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then sudo=(sudo -n); else
      say "cannot install ${missing[*]}: not root and no sudo; install them, or drop --peers"
      exit 1
    fi
  fi
  export DEBIAN_FRONTEND=noninteractive
  if ! { ${sudo[@]+"${sudo[@]}"} apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 \
    || { ${sudo[@]+"${sudo[@]}"} apt-get update -q >/dev/null 2>&1 \
    && ${sudo[@]+"${sudo[@]}"} apt-get install -y -q "${missing[@]}" >/dev/null; }; }; then
    say "could not install ${missing[*]} with apt-get; install them by hand, or drop --peers"
    exit 1
  fi
  for bin in "${missing[@]}"; do
    command -v "$bin" >/dev/null || { say "$bin still missing after apt-get"; exit 1; }
  done
fi

# --- Build ------------------------------------------------------------------------------
say "building release (cargo's own progress below)"
cargo build --release --bin ringcast
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
per_proc=$(( (CLIENTS + PROCS - 1) / PROCS + PUBLISHERS + 64 ))
if [ "$nofile" != unlimited ] && { [ "$per_proc" -gt "$nofile" ] || [ $((CLIENTS + PUBLISHERS + 64)) -gt "$nofile" ]; }; then
  say "ulimit -n is $nofile: too low for $CLIENTS clients (raise it, or use --procs for the harness side)"
  exit 1
fi
# Optional pinning. Arrays rather than a shell function, so that `$!` of a background
# server is the server itself (taskset execs it), not a subshell.
server_pin=(); bench_pin=()
if [ -n "$SERVER_CPUS$BENCH_CPUS" ] && ! command -v taskset >/dev/null; then
  say "pinning needs taskset (Debian package util-linux)"; exit 1
fi
if [ -n "$SERVER_CPUS" ]; then server_pin=(taskset -c "$SERVER_CPUS"); fi
if [ -n "$BENCH_CPUS" ]; then bench_pin=(taskset -c "$BENCH_CPUS"); fi

# Sockets in TIME_WAIT (state 06 in /proc/net/tcp): a run of many clients leaves one per
# client for about a minute after it ends, and they hold ephemeral ports.
time_wait() {
  awk 'FNR > 1 && $4 == "06"' /proc/net/tcp /proc/net/tcp6 2>/dev/null | wc -l
}
# Waits (up to 70 s) while the sockets in TIME_WAIT and this run's connections together
# would take more than three quarters of the ephemeral ports: the next run's connects
# would then fail with "Cannot assign requested address".
ports=$(awk '{print $2 - $1 + 1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 28232)
wait_time_wait() {
  local n waited=0 limit
  limit=$(( ports * 3 / 4 - CLIENTS - PUBLISHERS ))
  [ "$limit" -gt 0 ] || limit=0
  n=$(time_wait)
  [ "$n" -gt "$limit" ] || return 0
  say "waiting for $n sockets in TIME_WAIT (left by a previous run) to expire, up to 70 s:" \
    "with $CLIENTS more clients they would take most of the $ports ephemeral ports"
  while [ "$n" -gt "$limit" ] && [ "$waited" -lt 70 ]; do
    sleep 2; waited=$((waited + 2)); n=$(time_wait)
  done
  say "$n sockets in TIME_WAIT after ${waited} s"
}

# A client that stops reading must be cut within the run; one that reads must not be.
REDIS_LIMITS=()
if [ "$SLOW_READERS" != 0 ]; then
  SERVER_ARGS+=(--max-outbound 64k --write-timeout 5s)
  REDIS_LIMITS=(--client-output-buffer-limit "pubsub 64kb 0 0")
fi
# The mix's parts for `ringcast bench`.
MIX=(--room-sizes "$ROOM_SIZES" --churners "$CHURNERS" --churn "$CHURN" --slow-readers "$SLOW_READERS")
if [ -n "$SIZE_DIST" ]; then MIX+=(--size-dist "$SIZE_DIST"); fi

stamp=$(date -u +%Y%m%dT%H%M%SZ)
OUT=${OUT:-reports/$stamp}
mkdir -p "$OUT"
if [ "$REPEAT" -eq 1 ]; then rounds_text="1 round"; else rounds_text="$REPEAT rounds"; fi
say "kernel $kernel, $(nproc) cores, ulimit -n $nofile; systems: $SYSTEMS; $rounds_text; results in $OUT"

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

# A port for a peer server: below the ephemeral range (a run of 10,000 clients leaves
# thousands of ephemeral ports in TIME_WAIT), and used by no socket at all.
free_port() {
  local port low hex
  low=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
  [ "$low" -gt 12000 ] || low=65000
  for _ in $(seq 200); do
    port=$(( 10000 + RANDOM % (low - 10000) ))
    hex=$(printf '%04X' "$port")
    if ! grep -qi ":$hex " /proc/net/tcp /proc/net/tcp6 2>/dev/null; then
      echo "$port"; return 0
    fi
  done
  return 1
}

# Waits up to 10 s for 127.0.0.1:$1 to accept while $server_pid lives.
wait_listening() {
  for _ in $(seq 100); do
    kill -0 "$server_pid" 2>/dev/null || return 1
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  return 1
}

# Starts the server of system $1 with logs in folder $2; sets server_pid and addr.
start_server() {
  local system=$1 dir=$2 port
  addr=
  case "$system" in
    uring|epoll)
      # Every simulated client comes from 127.0.0.1 and publishers send far faster than a
      # person: the per-address cap and the input rate limit are off for the load test.
      # Over WebSocket the harness loads the HTTP listener, whose address is the second
      # line the server prints.
      local http=off
      if [ "$PROTO" = ws ]; then http=127.0.0.1:0; fi
      ${server_pin[@]+"${server_pin[@]}"} "$BIN" serve --listen 127.0.0.1:0 --backend "$system" \
        --threads "$THREADS" --stats-interval 0 --max-per-ip 0 --max-msg-rate 0 --http "$http" \
        ${SERVER_ARGS[@]+"${SERVER_ARGS[@]}"} >"$dir/server.stdout" 2>"$dir/server.log" &
      server_pid=$!
      local prefix='listening on '
      if [ "$PROTO" = ws ]; then prefix='http listening on '; fi
      for _ in $(seq 100); do  # up to 10 s for the address line
        kill -0 "$server_pid" 2>/dev/null || break
        addr=$(sed -n "s/^$prefix//p" "$dir/server.stdout" 2>/dev/null | head -n1)
        [ -n "$addr" ] && break
        sleep 0.1
      done
      ;;
    redis)
      port=$(free_port) || return 1
      # Room for every client, the publishers' second connections and some slack.
      ${server_pin[@]+"${server_pin[@]}"} redis-server --bind 127.0.0.1 --port "$port" \
        --save '' --appendonly no --daemonize no --maxclients $((CLIENTS + PUBLISHERS + 100)) \
        ${REDIS_LIMITS[@]+"${REDIS_LIMITS[@]}"} >"$dir/server.log" 2>&1 &
      server_pid=$!
      wait_listening "$port" && addr=127.0.0.1:$port
      ;;
    nats)
      port=$(free_port) || return 1
      local nats_conf=()
      if [ "$SLOW_READERS" != 0 ]; then
        # No command-line flags for these; max_payload may not exceed max_pending.
        printf 'max_payload: 32768\nmax_pending: 32768\nwrite_deadline: "5s"\n' >"$dir/nats.conf"
        nats_conf=(-c "$dir/nats.conf")
      fi
      ${server_pin[@]+"${server_pin[@]}"} nats-server -a 127.0.0.1 -p "$port" \
        ${nats_conf[@]+"${nats_conf[@]}"} >"$dir/server.log" 2>&1 &
      server_pid=$!
      wait_listening "$port" && addr=127.0.0.1:$port
      ;;
  esac
  [ -n "$addr" ]
}

# One run of system $1 into folder $2.
run_system() {
  local system=$1 dir=$2 proto=ringcast status bench_status
  if [ "$PROTO" = ws ]; then proto=ws; fi
  case "$system" in redis|nats) proto=$system ;; esac
  mkdir -p "$dir"
  wait_time_wait
  say "=== $system: starting the server"
  local tries=1
  # A peer's port can still be taken between the check and its bind: try another one.
  until start_server "$system" "$dir" || [ "$tries" -ge 3 ] || [ "$proto" = ringcast ] || [ "$proto" = ws ]; do
    cleanup; server_pid=; tries=$((tries + 1))
    say "$system: did not start (port taken?), trying again"
  done
  if [ -z "$addr" ]; then
    say "$system: the server did not start; its log:"
    tail -n 20 "$dir/server.log" >&2 || true
    cleanup; server_pid=; failed=1
    return
  fi
  say "$system: server pid $server_pid at $addr"

  local mode=(--rate "$RATE" --duration "$DURATION" --warmup "$WARMUP" --slo "$SLO")
  if [ -n "$IDLE" ]; then mode=(--idle); fi
  set +e
  ${bench_pin[@]+"${bench_pin[@]}"} "$BIN" bench --proto "$proto" --addr "$addr" \
    --server-pid "$server_pid" --clients "$CLIENTS" --publishers "$PUBLISHERS" \
    --rooms "$ROOMS" --size "$SIZE" --procs "$PROCS" "${mode[@]}" "${MIX[@]}" \
    --out "$dir" 2> >(tee "$dir/bench.log" >&2) | tee "$dir/summary.txt"
  bench_status=${PIPESTATUS[0]}
  set -e
  case "$bench_status" in
    0) ;;
    2) say "$system: deliveries were LOST (see $dir/summary.txt)"; failed=1 ;;
    *) say "$system: the harness failed with status $bench_status"; failed=1 ;;
  esac

  if ! kill -0 "$server_pid" 2>/dev/null; then
    set +e; wait "$server_pid"; status=$?; set -e
    say "$system: the server CRASHED during the run (exit status $status); log in $dir/server.log"
    failed=1
  else
    kill -TERM "$server_pid"
    set +e; wait "$server_pid"; status=$?; set -e
    # nats-server exits with status 1 after a clean shutdown on SIGTERM.
    if [ "$system" = nats ] && [ "$status" -eq 1 ] && grep -q "Server Exiting" "$dir/server.log"; then
      status=0
    fi
    if [ "$status" -ne 0 ]; then
      say "$system: the server exited with status $status on SIGTERM; log in $dir/server.log"
      failed=1
    fi
  fi
  server_pid=
  if [ -f "$dir/report.json" ]; then compared+=("$dir"); fi
}

compared=()
for round in $(seq "$REPEAT"); do
  if [ "$REPEAT" -gt 1 ]; then say "--- round $round of $REPEAT"; fi
  for system in $SYSTEMS; do
    if [ "$REPEAT" -gt 1 ]; then
      run_system "$system" "$OUT/round$round/$system"
    else
      run_system "$system" "$OUT/$system"
    fi
  done
done

if [ ${#compared[@]} -gt 0 ]; then
  pinning="${SERVER_CPUS:+, server on CPUs $SERVER_CPUS}${BENCH_CPUS:+, harness on CPUs $BENCH_CPUS}"
  rounds=
  if [ "$REPEAT" -gt 1 ]; then rounds=" $REPEAT rounds, systems alternating within each round."; fi
  {
    echo "# ringcast load test $stamp"
    echo
    "$BIN" compare --group --markdown --svg "$OUT/comparison.svg" "${compared[@]}"
    echo
    # compare's notes name the clients, rooms and sizes; this adds how the run was made.
    if [ -n "$IDLE" ]; then
      echo "Run${WORKLOAD:+ (workload $WORKLOAD)}: clients connected and joined, sending" \
        "nothing; server threads $THREADS$pinning.$rounds"
    else
      transport=
      if [ "$PROTO" = ws ]; then transport=" ringcast loaded over WebSocket;"; fi
      echo "Run${WORKLOAD:+ (workload $WORKLOAD)}:$transport rates $RATE msg/s, $DURATION per rate after" \
        "$WARMUP warm-up, SLO $SLO; server threads $THREADS, harness processes $PROCS$pinning.$rounds"
    fi
    echo
    echo "Command: \`scripts/loadtest.sh${WORKLOAD:+ --workload $WORKLOAD}${PEERS:+ --peers} --repeat $REPEAT --proto $PROTO" \
      "--clients $CLIENTS --publishers $PUBLISHERS --rooms $ROOMS --rate $RATE --size $SIZE" \
      "--duration $DURATION --warmup $WARMUP --slo $SLO --threads $THREADS --procs $PROCS" \
      "--backends \"$BACKENDS\"${SERVER_CPUS:+ --server-cpus $SERVER_CPUS}${BENCH_CPUS:+ --bench-cpus $BENCH_CPUS}" \
      "--room-sizes $ROOM_SIZES${SIZE_DIST:+ --size-dist $SIZE_DIST} --churners $CHURNERS --churn $CHURN --slow-readers $SLOW_READERS\`"
    echo
    if [ "$REPEAT" -gt 1 ]; then where="round<K>/<system>"; else where="<system>"; fi
    echo "Per-run details in \`$where/\`: \`summary.txt\`, \`report.json\`, \`latency.hgrm\`, \`server.log\`." \
      "The chart ([comparison.svg](comparison.svg)) plots every rate of the sweep; its percentile curves are each system's run with the median p99."
  } >"$OUT/summary.md" || { say "compare failed"; failed=1; }
  cat "$OUT/summary.md"
  chart="$OUT/comparison.svg"
  if [ -f "$chart" ] && command -v rsvg-convert >/dev/null; then
    rsvg-convert "$chart" -o "$OUT/comparison.png" 2>/dev/null && chart="$chart (and $OUT/comparison.png)"
  fi
  say "summary: $OUT/summary.md"
  say "chart:   $chart"
fi
say "results in $OUT"
exit "$failed"
