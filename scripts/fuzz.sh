#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for SECONDS each (default 60), one
# after the other, and fails if any of them crashes (a panic, a failed
# invariant, a sanitizer report, a timeout or running out of memory).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     targets: wire stream engine config state netlink replication
#
# Needs the nightly toolchain and cargo-fuzz:
#   rustup toolchain install nightly --profile minimal
#   cargo install cargo-fuzz --locked
#
# Seeds are fuzz/corpus/<target>/ (checked in, never written). What a run
# learns goes to fuzz/target/corpus/<target>/ (kept between runs, not
# checked in), crash reproducers to fuzz/artifacts/<target>/. Replay one:
#   cargo +nightly fuzz run <target> fuzz/artifacts/<target>/crash-...
# and PPTP_FUZZ_TRACE=1 makes the engine target print every packet.
# Prints one line per target: executions, coverage (cov: edges, ft:
# features, as libFuzzer counts them) and the verdict.
#
# Environment: FUZZ_SANITIZER (address by default; "none" builds faster
# and runs about twice as fast, for CI), FUZZ_NICE (niceness, default 10:
# fuzzing takes a whole core).
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(wire stream engine config state netlink replication)
fi
case "$secs" in
'' | *[!0-9]*)
    echo "fuzz.sh: SECONDS must be a number, got '$secs'" >&2
    exit 2
    ;;
esac

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    echo "fuzz.sh: the nightly toolchain is missing (cargo-fuzz needs it):" >&2
    echo "  rustup toolchain install nightly --profile minimal" >&2
    exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2
    exit 2
fi

sanitizer=${FUZZ_SANITIZER:-address}
niceness=${FUZZ_NICE:-10}
# Debug assertions on: the engine's own debug_asserts are invariants too.
build=(cargo +nightly fuzz build -O --debug-assertions --sanitizer "$sanitizer")
"${build[@]}" "${targets[@]:0:1}" >/dev/null
for t in "${targets[@]:1}"; do
    "${build[@]}" "$t" >/dev/null
done

triple=$(rustc +nightly -vV | sed -n 's/^host: //p')
bin=fuzz/target/$triple/release
failed=()
for t in "${targets[@]}"; do
    work=fuzz/target/corpus/$t
    art=fuzz/artifacts/$t
    log=fuzz/target/fuzz-$t.log
    mkdir -p "$work" "$art"
    status=0
    nice -n "$niceness" "$bin/$t" "$work" "fuzz/corpus/$t" \
        -max_total_time="$secs" -timeout=20 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$art/" >"$log" 2>&1 || status=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    cov=$(grep -E '^#[0-9]+' "$log" | tail -1 | grep -oE 'cov: [0-9]+ ft: [0-9]+' || true)
    if [ "$status" -eq 0 ]; then
        echo "fuzz $t: ${secs}s, ${runs:-?} runs, ${cov:-no coverage line}: ok"
    else
        echo "fuzz $t: FAILED (status $status) after ${runs:-?} runs, ${cov:-?}; log $log" >&2
        grep -E -A3 'panicked at|ERROR: (AddressSanitizer|libFuzzer)' "$log" | head -20 >&2 || true
        grep -E 'Test unit written' "$log" >&2 || true
        failed+=("$t")
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz.sh: crashes in: ${failed[*]}" >&2
    exit 1
fi
