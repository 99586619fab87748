#!/usr/bin/env bash
# The project's test command (README "Tests"): formatting, lints, unit and
# property tests, and, as root, the network-namespace end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
# The engine benchmark runs each case once as a smoke test (criterion --test).
cargo bench --locked --bench alg -- --test
# Namespace tests share the machine's netfilter queues: run test binaries
# one at a time and their cases serially.
cargo test --locked --lib --bins --tests --no-fail-fast -- --test-threads=1
