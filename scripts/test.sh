#!/usr/bin/env bash
# Installs what the tests need and runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh test
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
