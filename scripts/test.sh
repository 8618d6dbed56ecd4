#!/usr/bin/env bash
# The whole test suite, on a fresh Linux machine with Rust: installs what the tests run
# beside ringcast when it is missing (python3 for the asyncio client test; redis-server
# and nats-server, the peers the harness is compared with; prometheus, whose server and
# promtool check /metrics), then runs `cargo test`.
# apt-get's output goes to a log that is shown only if the install fails. Arguments go
# to cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v nats-server >/dev/null 2>&1 || need+=(nats-server)
{ command -v prometheus && command -v promtool; } >/dev/null 2>&1 || need+=(prometheus)
if [ ${#need[@]} -gt 0 ]; then
  echo "test.sh: installing ${need[*]} (Debian packages)" >&2
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  log=$(mktemp "${TMPDIR:-/tmp}/ringcast-apt.XXXXXX")
  if ! command -v apt-get >/dev/null 2>&1 ||
    ! { DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get update -q &&
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "${need[@]}"; } \
      >"$log" 2>&1; then
    echo "test.sh: could not install ${need[*]}; apt-get said:" >&2
    tail -n 30 "$log" >&2 || true
    echo "test.sh: install them by hand, or run RINGCAST_SKIP_PEERS=1 cargo test to skip" \
         "the tests that need them (Redis/NATS harness tests, Prometheus)" >&2
    rm -f "$log"
    exit 1
  fi
  rm -f "$log"
fi
exec cargo test "$@"
