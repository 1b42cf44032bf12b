"""The baseline the gateway is measured against: a starlette/uvicorn websocket that only parses
Twilio's frames (JSON, base64, mu-law decode) and does nothing else.

It answers the voice webhook with a <Connect><Stream> like the gateway's, so the load generator
drives both servers the same way, and runs under the same uvicorn settings (uvloop, httptools,
websockets-sansio, proxy headers).

    python bench/bare_server.py --port 5002
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from audio import mulaw  # noqa: E402

# The gateway's paths, written out: this baseline imports nothing of app/ (a bigger process is
# slower at the same work, bench/README.md).
STREAM_PATH = "/webhook/twilio/stream"


async def voice(request: Request) -> Response:
    url = f"ws://{request.url.netloc}{STREAM_PATH}"
    twiml = f'<Response><Connect><Stream url="{url}" /></Connect></Response>'
    return Response(twiml, media_type="application/xml")


async def stream(websocket: WebSocket) -> None:
    await websocket.accept()
    while True:
        message = await websocket.receive()
        text = message.get("text")
        if text is None:
            return
        event = json.loads(text)
        kind = event["event"]
        if kind == "media":
            mulaw.decode(base64.b64decode(event["media"]["payload"]))
        elif kind == "stop":
            await websocket.close()
            return


async def health(request: Request) -> Response:
    return Response('{"status":"ok"}', media_type="application/json")


def create_app() -> Starlette:
    return Starlette(routes=[
        Route("/webhook/twilio/voice", voice, methods=["POST"]),
        Route("/health", health),
        WebSocketRoute(STREAM_PATH, stream),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5002)
    args = parser.parse_args()
    uvicorn.run("bench.bare_server:create_app", factory=True, host=args.host, port=args.port,
                log_config=None, proxy_headers=True, forwarded_allow_ips="*")


if __name__ == "__main__":
    main()
