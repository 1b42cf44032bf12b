"""The gateway as `python -m app serve` runs it (same server, drain and uvicorn settings),
optionally with the event-loop lag probe of bench/probe.py. Settings: config.yaml + environment.

    python bench/gateway_server.py --port 5001 [--probe]
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
    parser.add_argument("--probe", action="store_true", help="measure event-loop lag")
    args = parser.parse_args()
    settings = load_settings()
    settings = settings.replace(server={"port": args.port, "workers": 1})
    factory = "bench.probe:gateway_app" if args.probe else "app.server:create_app"
    sys.exit(serve(settings, factory=factory))
