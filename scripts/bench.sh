#!/usr/bin/env bash
# Runs every benchmark: the Redis scenarios against a redis-server the bench binary starts by
# itself (installed from Debian's packages if missing), the memory scenarios, and the
# criterion benches of the memory driver. Not part of the test suite: timings need a quiet
# machine. Pass --json to get one JSON object per scenario from the bench binary.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1 && [ ! -x /usr/bin/redis-server ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends redis-server >/dev/null
fi

cargo run --release -p runa-lock-bench -- --spawn-redis "$@"
if [ "${1:-}" != "--json" ]; then
    cargo bench -p runa-lock --bench memory
fi
