#!/usr/bin/env bash
# Make sure SPIN and a C compiler are installed: `make model` checks the
# Promela models of the park protocol (model/) with them.
set -euo pipefail

missing=()
command -v spin >/dev/null 2>&1 || missing+=(spin)
command -v gcc >/dev/null 2>&1 || missing+=(gcc)
if [[ ${#missing[@]} -eq 0 ]]; then
    exit 0
fi
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "ensure-spin: installing Debian's ${missing[*]} (for make model)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null \
        || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null; }
    exit 0
fi
echo "ensure-spin: ${missing[*]} missing; install it: sudo apt-get install -y ${missing[*]}" >&2
exit 1
