#!/usr/bin/env bash
# The README's test command: installs what the tests need when it is missing (nats-server,
# redis-server and redis-cli from Debian; OpenSSL's headers and pkg-config, which the
# independent JOSE library the encryption tests decrypt with builds against), then runs
# the whole suite. Extra arguments go to `cargo test` (e.g. a test name).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)

missing=()
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || missing+=(nats-server)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
pkg-config --exists openssl 2>/dev/null || missing+=(libssl-dev)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing ${missing[*]} (apt-get)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Debian installs nats-server in /usr/sbin, which is not on every user's PATH.
export PATH="$PATH:/usr/sbin"

exec cargo test --manifest-path "$ROOT/Cargo.toml" --workspace --locked "$@"
