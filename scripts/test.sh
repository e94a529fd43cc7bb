#!/usr/bin/env bash
# Runs the whole test suite: unit, integration and doc tests of every crate.
# Later crates that need services (redis-server) install and start them from here or from
# their own test support, never by hand.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --workspace --all-features --no-fail-fast "$@"
