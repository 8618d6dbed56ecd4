#!/usr/bin/env bash
# Runs one load scenario against each system and compares them.
#
#   scripts/loadtest.sh [--workload A|B|C|D|idle] [--peers] [--cluster N] [--repeat N]
#                       [--proto line|ws] [--tls]
#                       [--server-cpus LIST] [--bench-cpus LIST]
#                       [--clients N] [--publishers N] [--rooms N] [--rate R[,R...]]
#                       [--size BYTES] [--duration D] [--warmup D] [--slo D] [--threads N]
#                       [--procs N] [--backends "uring epoll uring-direct"] [--out DIR]
#                       [--room-sizes uniform|zipf[:S]] [--size-dist MIN-MAX]
#                       [--churners N] [--churn R] [--slow-readers N]
#                       [--server-args "FLAGS"]
#
# --workload   the workloads of docs/performance.md (64-byte messages, 10
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
# --cluster N  single node vs N nodes: for each backend, the workload against one
#              ringcast server, then against N ringcast nodes of one cluster (serve
#              --cluster) sharing their rooms through a nats-server (JetStream, a
#              temporary store, 127.0.0.1 on a free port; installed with apt-get when
#              missing), with the same clients and rate, each room's members dealt
#              round-robin over the nodes; summary.md holds one comparison (verdict,
#              table, chart comparison-<backend>.svg) per backend. Without --workload it
#              runs a B-like workload at a moderate rate: 1,000 clients in 1 room, 10
#              publishers, 50 msg/s of 64 bytes (~50,000 deliveries/s), 10 s after a 2 s
#              warm-up. Not with --peers
# --repeat N   N rounds, the systems alternating within each (uring, epoll, redis, nats,
#              uring, ...); the summary shows each figure's median with [min–max]
# --proto ws   load the ringcast backends over WebSocket (their HTTP listener's /ws)
#              instead of the line protocol (the default, `line`); Redis and NATS speak
#              their own protocols either way
# --tls        load the ringcast backends over TLS: the script makes a throwaway CA and
#              server certificate (`ringcast cert`, into <out>/tls/; no openssl), starts
#              each backend with --tls-cert/--tls-key and a TLS listener on a free port
#              (--tls-listen for the line protocol, --https with --proto ws: wss), and
#              the harness speaks TLS to it (bench --tls --tls-ca <out>/tls/ca.pem).
#              Redis and NATS (--peers) are still run without TLS: their figures are
#              plaintext ones
# --server-cpus, --bench-cpus   taskset CPU lists ("0", "1", "0-1") pinning the server and
#              the harness apart
# --server-args "FLAGS"   extra flags for every ringcast server of the run (split on
#              spaces), e.g. --server-args "--history 0" to measure what a feature costs
#              by running the same command with and without it
# --room-sizes, --size-dist, --churners, --churn, --slow-readers   the parts of a mixed
#              workload, as `ringcast bench` takes them. With slow readers the servers get
#              limits that cut a client which stops reading, and leave alone one that
#              reads: ringcast --max-outbound 64k --write-timeout 5s; Redis
#              client-output-buffer-limit pubsub 64kb 0 0 (Redis counts its reply list
#              in ~16 KB chunks: a reader with one message spilled already shows 20 KB,
#              so a soft limit near that cuts readers); NATS max_pending 32 KiB,
#              write_deadline 5s (a config file)
#
# Every flag can also be given as an environment variable (WORKLOAD, PEERS=1, CLUSTER,
# REPEAT, PROTO, TLS=1, SERVER_CPUS, BENCH_CPUS, CLIENTS, PUBLISHERS, ROOMS, RATE, SIZE, DURATION, WARMUP, SLO,
# THREADS, PROCS, BACKENDS, OUT, ROOM_SIZES, SIZE_DIST, CHURNERS, CHURN, SLOW_READERS). --out DIR (OUT) writes the results there instead of
# reports/<timestamp>/. Results go to <out>/<system>/ (with --repeat,
# <out>/round<K>/<system>/): report.json, latency.hgrm, logs; then <out>/summary.md,
# which opens with the verdict, and the chart comparison.svg (and comparison.png when
# rsvg-convert is installed). With --cluster N: <out>/<backend>/single/ and
# <out>/<backend>/N-nodes/ (nodes' logs n1.log ..., nats.log), with --repeat under
# round<K>/, and one chart per backend.
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
CLUSTER=${CLUSTER:-}
# The workload presets come first so that explicit flags override them.
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  if [ "${args[$i]}" = --workload ] && [ $((i + 1)) -lt ${#args[@]} ]; then
    WORKLOAD=${args[$((i + 1))]}
  fi
  if [ "${args[$i]}" = --cluster ] && [ $((i + 1)) -lt ${#args[@]} ]; then
    CLUSTER=${args[$((i + 1))]}
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
elif [ -n "$CLUSTER" ]; then
  # A functional comparison, not a capacity: B's shape at a quarter of its rate, so that
  # N nodes, nats-server and the harness fit unpinned on 2 cores beside each other (at
  # 100 msg/s the harness was the bottleneck there while other work ran).
  CLIENTS=${CLIENTS:-1000}; ROOMS=${ROOMS:-1}; PUBLISHERS=${PUBLISHERS:-10}
  RATE=${RATE:-50}; SIZE=${SIZE:-64}
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
BACKENDS=${BACKENDS:-"uring epoll uring-direct"}
PEERS=${PEERS:-}
REPEAT=${REPEAT:-1}
PROTO=${PROTO:-line}
TLS=${TLS:-}
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
    --cluster) CLUSTER=$2; shift 2 ;;
    --repeat) REPEAT=$2; shift 2 ;;
    --proto) PROTO=$2; shift 2 ;;
    --tls) TLS=1; shift ;;
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
    # shellcheck disable=SC2206 # the flags split on spaces on purpose
    --server-args) SERVER_ARGS+=($2); shift 2 ;;
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
if [ -n "$CLUSTER" ]; then
  case "$CLUSTER" in
    ''|*[!0-9]*|0|1) say "--cluster needs a number of nodes, 2 or more"; exit 2 ;;
  esac
  if [ -n "$PEERS" ]; then
    say "--cluster compares ringcast on one node and on N: not with --peers"; exit 2
  fi
  for system in $BACKENDS; do
    case "$system" in
      uring|epoll|uring-direct) ;;
      *) say "--cluster runs ringcast backends (uring, epoll, uring-direct), not $system"; exit 2 ;;
    esac
  done
fi
SYSTEMS=$BACKENDS
if [ -n "$PEERS" ]; then
  for peer in redis nats; do
    case " $SYSTEMS " in *" $peer "*) ;; *) SYSTEMS="$SYSTEMS $peer" ;; esac
  done
fi
for system in $SYSTEMS; do
  case "$system" in
    uring|epoll|uring-direct|redis|nats) ;;
    *) say "unknown system $system (uring, epoll, uring-direct, redis, nats)"; exit 2 ;;
  esac
done

# --- Peers: installed when missing -------------------------------------------------------
peer_binary() { case "$1" in redis) echo redis-server ;; nats) echo nats-server ;; esac; }
missing=()
for system in $SYSTEMS; do
  bin=$(peer_binary "$system")
  if [ -n "$bin" ] && ! command -v "$bin" >/dev/null; then missing+=("$bin"); fi
done
# A cluster's nodes share their rooms through nats-server.
if [ -n "$CLUSTER" ] && ! command -v nats-server >/dev/null; then missing+=(nats-server); fi
if [ -n "$CLUSTER" ]; then drop="drop --cluster"; else drop="drop --peers"; fi
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} with apt-get (Debian packages of the same names)"
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then sudo=(sudo -n); else
      say "cannot install ${missing[*]}: not root and no sudo; install them, or $drop"
      exit 1
    fi
  fi
  export DEBIAN_FRONTEND=noninteractive
  if ! { ${sudo[@]+"${sudo[@]}"} apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 \
    || { ${sudo[@]+"${sudo[@]}"} apt-get update -q >/dev/null 2>&1 \
    && ${sudo[@]+"${sudo[@]}"} apt-get install -y -q "${missing[@]}" >/dev/null; }; }; then
    say "could not install ${missing[*]} with apt-get; install them by hand, or $drop"
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
if [ -n "$TLS" ] && ! "$BIN" serve --help | grep -q -- --tls-listen; then
  say "--tls: this ringcast's serve has no TLS listeners (--tls-listen)"; exit 1
fi

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
# --tls: a throwaway CA and a certificate for 127.0.0.1 that every ringcast backend
# serves and the harness trusts.
TLS_DIR=
if [ -n "$TLS" ]; then
  TLS_DIR="$OUT/tls"
  "$BIN" cert --dir "$TLS_DIR" --name 127.0.0.1 --name localhost --days 2 >/dev/null \
    || { say "--tls: ringcast cert could not make a certificate in $TLS_DIR"; exit 1; }
  say "TLS: the ringcast backends serve $TLS_DIR/cert.pem, the harness trusts $TLS_DIR/ca.pem" \
    "${PEERS:+(Redis and NATS run without TLS)}"
fi

failed=0
server_pid=
# A cluster run's processes, and nats-server's JetStream store.
node_pids=()
nats_pid=
nats_store=
# Stops whatever still runs (nodes before the nats-server they use) and forgets it.
cleanup() {
  local pid
  for pid in ${server_pid:+"$server_pid"} ${node_pids[@]+"${node_pids[@]}"} ${nats_pid:+"$nats_pid"}; do
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    fi
  done
  if [ -n "$nats_store" ]; then rm -rf "$nats_store"; fi
  server_pid=; node_pids=(); nats_pid=; nats_store=
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

# Waits up to 10 s for 127.0.0.1:$1 to accept while process $2 lives.
wait_listening() {
  for _ in $(seq 100); do
    kill -0 "$2" 2>/dev/null || return 1
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  return 1
}

# Starts `ringcast serve --backend $1`, its stdout and log in $2.stdout and $2.log, with
# the flags $3...; sets started_pid and started_addr (the address the harness loads; empty
# if none came within 10 s).
start_ringcast() {
  local system=$1 base=$2
  shift 2
  # Every simulated client comes from 127.0.0.1 and publishers send far faster than a
  # person: the per-address cap and the input rate limit are off for the load test.
  # Over WebSocket the harness loads the HTTP listener, whose address is the second
  # line the server prints. Over TLS it loads the TLS line listener (`tls listening
  # on`) or, over WebSocket, the https one (`https listening on`); the plain ones stay
  # (the harness asks nothing of them).
  local http=off prefix='listening on ' tls=()
  if [ "$PROTO" = ws ]; then http=127.0.0.1:0; prefix='http listening on '; fi
  if [ -n "$TLS" ]; then
    tls=(--tls-cert "$TLS_DIR/cert.pem" --tls-key "$TLS_DIR/key.pem")
    if [ "$PROTO" = ws ]; then
      http=off; prefix='https listening on '; tls+=(--https 127.0.0.1:0)
    else
      prefix='tls listening on '; tls+=(--tls-listen 127.0.0.1:0)
    fi
  fi
  ${server_pin[@]+"${server_pin[@]}"} "$BIN" serve --listen 127.0.0.1:0 --backend "$system" \
    --threads "$THREADS" --stats-interval 0 --max-per-ip 0 --max-msg-rate 0 --http "$http" \
    ${tls[@]+"${tls[@]}"} ${SERVER_ARGS[@]+"${SERVER_ARGS[@]}"} "$@" >"$base.stdout" 2>"$base.log" &
  started_pid=$!
  started_addr=
  for _ in $(seq 100); do  # up to 10 s for the address line
    kill -0 "$started_pid" 2>/dev/null || break
    started_addr=$(sed -n "s/^$prefix//p" "$base.stdout" 2>/dev/null | head -n1)
    [ -n "$started_addr" ] && break
    sleep 0.1
  done
}

# Starts the server of system $1 with logs in folder $2; sets server_pid and addr.
start_server() {
  local system=$1 dir=$2 port
  addr=
  case "$system" in
    uring|epoll|uring-direct)
      start_ringcast "$system" "$dir/server"
      server_pid=$started_pid
      addr=$started_addr
      ;;
    redis)
      port=$(free_port) || return 1
      # Room for every client, the publishers' second connections and some slack.
      ${server_pin[@]+"${server_pin[@]}"} redis-server --bind 127.0.0.1 --port "$port" \
        --save '' --appendonly no --daemonize no --maxclients $((CLIENTS + PUBLISHERS + 100)) \
        ${REDIS_LIMITS[@]+"${REDIS_LIMITS[@]}"} >"$dir/server.log" 2>&1 &
      server_pid=$!
      wait_listening "$port" "$server_pid" && addr=127.0.0.1:$port
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
      wait_listening "$port" "$server_pid" && addr=127.0.0.1:$port
      ;;
  esac
  [ -n "$addr" ]
}

# Starts a nats-server with JetStream (a temporary store, 127.0.0.1 on a free port) and
# $2 ringcast nodes of backend $1 sharing their rooms through it, n1 to nN, logs in folder
# $3; sets nats_pid, node_pids, addr and pids (the nodes' addresses and pids, in order,
# comma-separated as `ringcast bench` takes them).
start_cluster() {
  local system=$1 nodes=$2 dir=$3 port k
  addr=; pids=
  port=$(free_port) || return 1
  nats_store=$(mktemp -d "${TMPDIR:-/tmp}/ringcast-loadtest-nats.XXXXXX")
  ${server_pin[@]+"${server_pin[@]}"} nats-server -a 127.0.0.1 -p "$port" -js -sd "$nats_store" \
    >"$dir/nats.log" 2>&1 &
  nats_pid=$!
  wait_listening "$port" "$nats_pid" || return 1
  for k in $(seq "$nodes"); do
    start_ringcast "$system" "$dir/n$k" --cluster "nats://127.0.0.1:$port" --node "n$k"
    node_pids+=("$started_pid")
    [ -n "$started_addr" ] || return 1
    addr=${addr:+$addr,}$started_addr
    pids=${pids:+$pids,}$started_pid
  done
}

# Stops process $1 (named $2 in messages, its log $3) with SIGTERM; a process that died
# during the run, or exits uncleanly, fails the load test.
stop_checked() {
  local pid=$1 what=$2 log=$3 status
  if ! kill -0 "$pid" 2>/dev/null; then
    set +e; wait "$pid"; status=$?; set -e
    say "$what CRASHED during the run (exit status $status); log in $log"
    failed=1
    return
  fi
  kill -TERM "$pid"
  set +e; wait "$pid"; status=$?; set -e
  # nats-server exits with status 1 after a clean shutdown on SIGTERM.
  case "$what" in
    *nats*) if [ "$status" -eq 1 ] && grep -q "Server Exiting" "$log"; then status=0; fi ;;
  esac
  if [ "$status" -ne 0 ]; then
    say "$what exited with status $status on SIGTERM; log in $log"
    failed=1
  fi
}

# `ringcast bench --proto $2` against the address(es) $3 with server pid(s) $4 into
# folder $5; $1 names the run in messages.
run_bench() {
  local what=$1 proto=$2 target=$3 target_pids=$4 dir=$5 bench_status
  local mode=(--rate "$RATE" --duration "$DURATION" --warmup "$WARMUP" --slo "$SLO")
  if [ -n "$IDLE" ]; then mode=(--idle); fi
  # Only the ringcast backends are run with TLS.
  local tls=()
  case "$proto" in
    ringcast|ws) if [ -n "$TLS" ]; then tls=(--tls --tls-ca "$TLS_DIR/ca.pem"); fi ;;
  esac
  set +e
  ${bench_pin[@]+"${bench_pin[@]}"} "$BIN" bench --proto "$proto" --addr "$target" \
    --server-pid "$target_pids" --clients "$CLIENTS" --publishers "$PUBLISHERS" \
    --rooms "$ROOMS" --size "$SIZE" --procs "$PROCS" "${mode[@]}" "${MIX[@]}" \
    ${tls[@]+"${tls[@]}"} --out "$dir" 2> >(tee "$dir/bench.log" >&2) | tee "$dir/summary.txt"
  bench_status=${PIPESTATUS[0]}
  set -e
  case "$bench_status" in
    0) ;;
    2) say "$what: deliveries were LOST (see $dir/summary.txt)"; failed=1 ;;
    *) say "$what: the harness failed with status $bench_status"; failed=1 ;;
  esac
}

# One run of system $1 into folder $2.
run_system() {
  local system=$1 dir=$2 proto=ringcast
  if [ "$PROTO" = ws ]; then proto=ws; fi
  case "$system" in redis|nats) proto=$system ;; esac
  mkdir -p "$dir"
  wait_time_wait
  say "=== $system: starting the server"
  local tries=1
  # A peer's port can still be taken between the check and its bind: try another one.
  until start_server "$system" "$dir" || [ "$tries" -ge 3 ] || [ "$proto" = ringcast ] || [ "$proto" = ws ]; do
    cleanup; tries=$((tries + 1))
    say "$system: did not start (port taken?), trying again"
  done
  if [ -z "$addr" ]; then
    say "$system: the server did not start; its log:"
    tail -n 20 "$dir/server.log" >&2 || true
    cleanup; failed=1
    return
  fi
  say "$system: server pid $server_pid at $addr"
  run_bench "$system" "$proto" "$addr" "$server_pid" "$dir"
  stop_checked "$server_pid" "$system: the server" "$dir/server.log"
  server_pid=
  if [ -f "$dir/report.json" ]; then compared+=("$dir"); fi
}

# CPU time of process $1 so far, in clock ticks (utime + stime).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# One run of backend $1 on a cluster of $CLUSTER nodes into folder $2.
run_cluster() {
  local system=$1 dir=$2 proto=ringcast k tries=1
  if [ "$PROTO" = ws ]; then proto=ws; fi
  mkdir -p "$dir"
  wait_time_wait
  say "=== $system on $CLUSTER nodes: starting nats-server and the nodes"
  # nats-server's port can still be taken between the check and its bind.
  until start_cluster "$system" "$CLUSTER" "$dir"; do
    cleanup
    if [ "$tries" -ge 3 ]; then
      say "$system: the cluster did not start; its logs:"
      tail -n 20 "$dir/nats.log" "$dir"/n[0-9]*.log >&2 2>/dev/null || true
      failed=1
      return
    fi
    tries=$((tries + 1))
    say "$system: the cluster did not start (port taken?), trying again"
  done
  say "$system: nats-server pid $nats_pid; nodes at $addr (pids $pids)"
  # nats-server carries the traffic between the nodes; the report's server figures are
  # the nodes', so its CPU is measured here and noted beside them.
  local ticks_before start
  ticks_before=$(cpu_ticks "$nats_pid")
  start=$(date +%s.%N)
  run_bench "$system on $CLUSTER nodes" "$proto" "$addr" "$pids" "$dir"
  if kill -0 "$nats_pid" 2>/dev/null; then
    awk -v t0="$ticks_before" -v t1="$(cpu_ticks "$nats_pid")" -v hz="$(getconf CLK_TCK)" \
      -v s0="$start" -v s1="$(date +%s.%N)" -v n="$CLUSTER" 'BEGIN {
        cpu = (t1 - t0) / hz; wall = s1 - s0
        printf "nats-server, between the %d nodes, used %.2f s of CPU over the %.1f s of the bench run (connecting, warm-up and steps; %.0f%% of a core), which the table'"'"'s server figures leave out.\n", n, cpu, wall, 100 * cpu / wall
      }' >"$dir/nats-cpu.txt"
  fi
  for k in $(seq "$CLUSTER"); do
    stop_checked "${node_pids[$((k - 1))]}" "$system: node n$k" "$dir/n$k.log"
  done
  node_pids=()
  stop_checked "$nats_pid" "$system: nats-server" "$dir/nats.log"
  nats_pid=
  rm -rf "$nats_store"; nats_store=
  if [ -f "$dir/report.json" ]; then compared+=("$dir"); fi
}

compared=()
for round in $(seq "$REPEAT"); do
  if [ "$REPEAT" -gt 1 ]; then say "--- round $round of $REPEAT"; fi
  for system in $SYSTEMS; do
    base="$OUT/$system"
    if [ "$REPEAT" -gt 1 ]; then base="$OUT/round$round/$system"; fi
    if [ -n "$CLUSTER" ]; then
      # The same clients and rate on one server, then on the cluster.
      run_system "$system" "$base/single"
      run_cluster "$system" "$base/$CLUSTER-nodes"
    else
      run_system "$system" "$base"
    fi
  done
done

# How the run was made, for the end of summary.md.
run_notes() {
  pinning="${SERVER_CPUS:+, server on CPUs $SERVER_CPUS}${BENCH_CPUS:+, harness on CPUs $BENCH_CPUS}"
  rounds=
  if [ "$REPEAT" -gt 1 ]; then rounds=" $REPEAT rounds, systems alternating within each round."; fi
  # compare's notes name the clients, rooms and sizes; this adds how the run was made.
  if [ -n "$IDLE" ]; then
    echo "Run${WORKLOAD:+ (workload $WORKLOAD)}: clients connected and joined, sending" \
      "nothing; server threads $THREADS$pinning.$rounds"
  else
    transport=
    if [ "$PROTO" = ws ]; then transport=" ringcast loaded over WebSocket;"; fi
    if [ -n "$TLS" ]; then
      transport="$transport ringcast loaded over TLS (its own throwaway CA; ${PEERS:+Redis and NATS without TLS; }rustls on both sides);"
    fi
    echo "Run${WORKLOAD:+ (workload $WORKLOAD)}:$transport rates $RATE msg/s, $DURATION per rate after" \
      "$WARMUP warm-up, SLO $SLO; server threads $THREADS, harness processes $PROCS$pinning.$rounds"
  fi
  echo
  echo "Command: \`scripts/loadtest.sh${WORKLOAD:+ --workload $WORKLOAD}${PEERS:+ --peers}${CLUSTER:+ --cluster $CLUSTER} --repeat $REPEAT --proto $PROTO${TLS:+ --tls}" \
    "--clients $CLIENTS --publishers $PUBLISHERS --rooms $ROOMS --rate $RATE --size $SIZE" \
    "--duration $DURATION --warmup $WARMUP --slo $SLO --threads $THREADS --procs $PROCS" \
    "--backends \"$BACKENDS\"${SERVER_CPUS:+ --server-cpus $SERVER_CPUS}${BENCH_CPUS:+ --bench-cpus $BENCH_CPUS}" \
    "--room-sizes $ROOM_SIZES${SIZE_DIST:+ --size-dist $SIZE_DIST} --churners $CHURNERS --churn $CHURN --slow-readers $SLOW_READERS\`"
  echo
}

# Converts chart $1 to PNG when rsvg-convert is installed; says where it is.
show_chart() {
  local chart=$1
  if [ -f "$chart" ] && command -v rsvg-convert >/dev/null; then
    rsvg-convert "$chart" -o "${chart%.svg}.png" 2>/dev/null && chart="$chart (and ${chart%.svg}.png)"
  fi
  say "chart:   $chart"
}

if [ ${#compared[@]} -gt 0 ] && [ -n "$CLUSTER" ]; then
  # One comparison per backend: its single node against its cluster.
  {
    echo "# ringcast load test $stamp: single node vs $CLUSTER nodes"
    echo
    echo "Each backend ran the same clients and rate against one ringcast server (\`single\`)," \
      "then against $CLUSTER ringcast nodes of one cluster (\`$CLUSTER-nodes\`, \`serve --cluster\`)" \
      "sharing their rooms through one nats-server (JetStream, loopback); the harness dealt each" \
      "room's members (publishers too) round-robin over the nodes, so every line crosses nodes."
    echo
    for system in $SYSTEMS; do
      pair=()
      for dir in "${compared[@]}"; do
        case "$dir" in */"$system"/single|*/"$system"/"$CLUSTER"-nodes) pair+=("$dir") ;; esac
      done
      [ ${#pair[@]} -gt 0 ] || continue
      echo "## $system: single node vs $CLUSTER nodes"
      echo
      "$BIN" compare --group --markdown --svg "$OUT/comparison-$system.svg" "${pair[@]}" \
        || { say "compare failed for $system"; failed=1; }
      echo
      for dir in "${pair[@]}"; do
        if [ -f "$dir/nats-cpu.txt" ]; then
          echo "${dir#"$OUT"/}: $(cat "$dir/nats-cpu.txt")"
          echo
        fi
      done
      echo "Chart: [comparison-$system.svg](comparison-$system.svg)."
      echo
    done
    run_notes
    if [ "$REPEAT" -gt 1 ]; then where="round<K>/<backend>"; else where="<backend>"; fi
    echo "Per-run details in \`$where/single/\` and \`$where/$CLUSTER-nodes/\`: \`summary.txt\` (for the" \
      "cluster, each node's deliveries, CPU and RSS, and its chat batches to and from the others)," \
      "\`report.json\`, \`latency.hgrm\`, \`server.log\` or \`n1.log\`... and \`nats.log\`."
  } >"$OUT/summary.md" || { say "compare failed"; failed=1; }
  cat "$OUT/summary.md"
  say "summary: $OUT/summary.md"
  for system in $SYSTEMS; do show_chart "$OUT/comparison-$system.svg"; done
elif [ ${#compared[@]} -gt 0 ]; then
  {
    echo "# ringcast load test $stamp"
    echo
    "$BIN" compare --group --markdown --svg "$OUT/comparison.svg" "${compared[@]}" \
      || { say "compare failed"; failed=1; }
    echo
    run_notes
    if [ "$REPEAT" -gt 1 ]; then where="round<K>/<system>"; else where="<system>"; fi
    echo "Per-run details in \`$where/\`: \`summary.txt\`, \`report.json\`, \`latency.hgrm\`, \`server.log\`." \
      "The chart ([comparison.svg](comparison.svg)) plots every rate of the sweep; its percentile curves are each system's run with the median p99."
  } >"$OUT/summary.md" || { say "compare failed"; failed=1; }
  cat "$OUT/summary.md"
  say "summary: $OUT/summary.md"
  show_chart "$OUT/comparison.svg"
fi
say "results in $OUT"
exit "$failed"
