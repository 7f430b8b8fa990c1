#!/usr/bin/env bash
# Render a facedb HTML contact sheet in headless Chromium and save a PNG screenshot, to check
# that the self-contained page shows its pictures without any network.
#   scripts/html_screenshot.sh SHEET.html OUT.png
# Needs Debian's chromium (apt-get install chromium); the test suite does not depend on it.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 SHEET.html OUT.png" >&2; exit 2; }
command -v chromium >/dev/null || { echo "chromium not found; install it with: apt-get install chromium" >&2; exit 2; }
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --window-size=1100,1400 --hide-scrollbars \
  --screenshot="$(realpath -m "$2")" "file://$(realpath "$1")" 2>/dev/null
echo "screenshot: $2"
