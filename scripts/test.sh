#!/usr/bin/env bash
# Runs the whole test suite: unit, integration and doc tests of every crate.
#
# The Redis tests start their own redis-server (a free loopback port and a temporary
# directory per test, stopped when the test ends), so this script only makes sure the
# binaries exist: redis-server, and openssl for the TLS test's certificates. On a machine
# without them it installs them from Debian's packages (root, or sudo, is needed once).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || missing+=(redis-server)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
    echo "scripts/test.sh: installing ${missing[*]} from Debian's packages"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # Debian starts a system redis-server on 6379 after installing it; the tests never use
    # it (each starts its own), so stop it where a service manager is running.
    if command -v systemctl >/dev/null 2>&1; then $sudo systemctl stop redis-server >/dev/null 2>&1 || true; fi
fi

cargo test --workspace --all-features --no-fail-fast "$@"
