#!/usr/bin/env bash
# Prepares a fresh machine: Debian's espeak-ng (offline TTS) and sox (test audio), with the test
# extras also chromium (the softphone's browser test) and a font for its screenshots, and
# prometheus for its promtool (the alert rules' tests; without an init system, as in CI's
# containers, the package starts no server); then a
# virtualenv in .venv with the gateway and the given extras installed. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"

missing=()
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
command -v sox >/dev/null 2>&1 || missing+=(sox)
if [[ ",$extras," == *",test,"* ]]; then
  command -v chromium >/dev/null 2>&1 || missing+=(chromium fonts-dejavu-core)
  command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
fi
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${missing[*]} with apt-get" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "warning: ${missing[*]} not installed; run: sudo apt-get install -y ${missing[*]}" >&2
  fi
fi

python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extras:+[$extras]}"
