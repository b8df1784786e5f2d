#!/usr/bin/env bash
# Browser end-to-end tests: Debian's Chromium driven headless by playwright-core,
# against the real server binary. Installs what it needs; no browser download.
set -euo pipefail
cd "$(dirname "$0")"
root=$(cd ../.. && pwd)
if ! command -v chromium >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
npm ci --no-audit --no-fund --loglevel=error
npm run build --silent
node --test test/
if [ -z "${TESSERA_BIN:-}" ]; then
  (cd "$root" && cargo build --bin tessera)
  TESSERA_BIN="${CARGO_TARGET_DIR:-$root/target}/debug/tessera"
fi
TESSERA_BIN="$TESSERA_BIN" node --test --test-concurrency=1 e2e/
echo "screenshots: $(pwd)/test-output/demo-before-refresh.png, demo-after-refresh.png"
