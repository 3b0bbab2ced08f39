#!/usr/bin/env bash
# The README's test command: installs what the tests need when it is missing (nats-server,
# redis-server and redis-cli from Debian; OpenSSL's headers and pkg-config, which the
# independent JOSE library the encryption tests decrypt with builds against; for the
# browser test, Debian's chromium and Playwright for Python from PyPI in target/browser-venv,
# pinned in tests/browser/requirements.txt), then runs the whole suite. Extra arguments go
# to `cargo test` (e.g. a test name). BROWSER_TEST_SKIP=1 neither installs the browser
# nor runs its test.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)

browser=true
[ "${BROWSER_TEST_SKIP:-}" = 1 ] && browser=false

missing=()
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || missing+=(nats-server)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
pkg-config --exists openssl 2>/dev/null || missing+=(libssl-dev)
if $browser; then
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  python3 -c 'import ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing ${missing[*]} (apt-get)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Debian installs nats-server in /usr/sbin, which is not on every user's PATH.
export PATH="$PATH:/usr/sbin"

# Playwright drives the machine's chromium: its own browser downloads are never used.
if $browser; then
  venv="$ROOT/target/browser-venv"
  requirements="$ROOT/tests/browser/requirements.txt"
  if ! cmp -s "$requirements" "$venv/requirements.txt" \
    || ! "$venv/bin/python" -c 'import playwright.sync_api' >/dev/null 2>&1; then
    echo "installing Playwright for Python into $venv (PyPI)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
    cp "$requirements" "$venv/requirements.txt"
  fi
fi

exec cargo test --manifest-path "$ROOT/Cargo.toml" --workspace --locked "$@"
