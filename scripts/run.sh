#!/usr/bin/env bash
# Installs what the gateway needs and starts it on port 5001 (or $PORT) with the offline engines.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh google
exec .venv/bin/python -m app serve "$@"
