"""The gateway as `python -m app serve` runs it (same server, drain and uvicorn settings), with
the event-loop lag probe of bench/probe.py added. Settings come from config.yaml + environment.

    python bench/gateway_server.py --port 5001
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.config import load_settings  # noqa: E402
from app.server import serve  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    settings = load_settings()
    settings = settings.replace(server={"port": args.port, "workers": 1})
    sys.exit(serve(settings, factory="bench.probe:gateway_app"))
