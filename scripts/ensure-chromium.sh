#!/usr/bin/env bash
# Make sure Debian's chromium is installed: the console's browser tests drive it
# headless through Playwright (tests/e2e/test_console_browser.py).
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "ensure-chromium: installing Debian's chromium (for the console's browser tests)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null \
        || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }
    exit 0
fi
echo "ensure-chromium: chromium is missing; install it (sudo apt-get install chromium)," \
     "or the browser tests are skipped" >&2
