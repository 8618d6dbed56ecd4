#!/usr/bin/env bash
# The whole test suite, on a fresh Linux machine with Rust: installs what the tests run
# beside ringcast when it is missing (python3 for the asyncio client test; Debian's
# python3-websockets for the WebSocket conformance test; chromium, chromium-driver and
# python3-selenium for the browser tests, and libnss3-tools (certutil) for the https one,
# unless RINGCAST_SKIP_BROWSER=1; redis-server
# and nats-server, the peers the harness and the cluster are tested with; prometheus,
# whose server and promtool check /metrics), then runs `cargo test`.
# The Python tests run /usr/bin/python3, Debian's, whose modules these packages are
# (a python3 earlier on PATH, e.g. pyenv's, may not have them).
# apt-get's output goes to a log that is shown only if the install fails. Arguments go
# to cargo test. A test that cannot run here (RINGCAST_SKIP_PEERS=1, RINGCAST_SKIP_BROWSER=1,
# a missing tool it may skip for) notes why in the file RINGCAST_SKIP_LOG names
# (ringcast_testkit::skip): the last line of the run lists every skip, or says there was
# none. The exit status is cargo test's.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
has_module() { [ -x /usr/bin/python3 ] && /usr/bin/python3 -c "import $1" >/dev/null 2>&1; }
{ command -v python3 >/dev/null 2>&1 && [ -x /usr/bin/python3 ]; } || need+=(python3)
has_module websockets || need+=(python3-websockets)
if [ "${RINGCAST_SKIP_BROWSER:-}" != 1 ]; then
  [ -x /usr/bin/chromium ] || need+=(chromium)
  [ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
  has_module selenium || need+=(python3-selenium)
  # certutil: the https browser test's Chromium trusts a test CA through an NSS db.
  [ -x /usr/bin/certutil ] || need+=(libnss3-tools)
fi
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
    echo "test.sh: install them by hand, or skip what needs them:" \
         "RINGCAST_SKIP_PEERS=1 (the Redis/NATS harness, cluster and Prometheus tests)," \
         "RINGCAST_SKIP_BROWSER=1 (the browser test)" >&2
    rm -f "$log"
    exit 1
  fi
  rm -f "$log"
fi
skips=$(mktemp "${TMPDIR:-/tmp}/ringcast-skips.XXXXXX")
trap 'rm -f "$skips"' EXIT
status=0
RINGCAST_SKIP_LOG=$skips cargo test "$@" || status=$?
# cargo test shows a passing test's stderr only with --nocapture: the skips come from the
# file, one `SKIPPED: <test>: <why>` line each.
if [ -s "$skips" ]; then
  echo "test.sh: $(wc -l <"$skips") skipped: $(sort "$skips" |
    awk '{ sub(/^SKIPPED: /, ""); printf "%s%s", (NR > 1 ? "; " : ""), $0 }')"
else
  echo "test.sh: no test skipped"
fi
exit "$status"
