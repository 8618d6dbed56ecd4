#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a fixed time each, one after another, and
# prints one line per target (executions, coverage, corpus, peak RSS, crashes).
#
#   scripts/fuzz.sh                 600 s per target (the runs README records)
#   scripts/fuzz.sh 60              60 s per target
#   scripts/fuzz.sh 600 ws decode   only the named targets
#
# Needs a nightly toolchain and cargo-fuzz (`rustup toolchain install nightly`,
# `cargo install cargo-fuzz`); it says so and exits 2 if either is missing. The committed
# seed corpus (fuzz/corpus/TARGET) is read, never written: what a run finds goes to a
# scratch directory (FUZZ_WORK, default a temporary one), and a crash leaves its input in
# fuzz/artifacts/TARGET/ and makes the script exit 1. Logs: $FUZZ_WORK/TARGET.log.
set -euo pipefail

cd "$(dirname "$0")/../fuzz"

seconds="${1:-600}"
shift || true
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    targets=(decode command http_head ws token publish)
fi

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "fuzz: needs a nightly toolchain: rustup toolchain install nightly" >&2
    exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz: needs cargo-fuzz: cargo install cargo-fuzz" >&2
    exit 2
fi

work="${FUZZ_WORK:-$(mktemp -d)}"
mkdir -p "$work"
echo "fuzz: ${seconds}s per target, work dir $work, commit $(git rev-parse --short HEAD)"
cargo +nightly fuzz build --release

failed=0
for target in "${targets[@]}"; do
    mkdir -p "$work/$target"
    log="$work/$target.log"
    started=$(date +%s)
    if cargo +nightly fuzz run --release "$target" "$work/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
        outcome="no crash"
    else
        outcome="CRASH (see $log and fuzz/artifacts/$target/)"
        failed=1
    fi
    took=$(($(date +%s) - started))
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    rss=$(grep -o 'stat::peak_rss_mb: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    last=$(grep -E '^#[0-9]+' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' <<<"$last" | grep -o '[0-9]*' || echo "?")
    ft=$(grep -o 'ft: [0-9]*' <<<"$last" | grep -o '[0-9]*' || echo "?")
    units=$(grep -o 'corp: [0-9]*' <<<"$last" | grep -o '[0-9]*' || echo "?")
    echo "$target: ${took}s, $execs executions, cov $cov, features $ft, corpus $units, peak RSS ${rss} MB: $outcome"
done
exit "$failed"
