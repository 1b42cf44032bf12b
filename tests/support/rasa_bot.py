"""A Rasa-compatible REST channel bot (`POST /webhooks/rest/webhook`) for the tests.

It answers with scripted replies, records every request, and can misbehave on demand
(slow, HTTP 500, invalid JSON) so the gateway's error paths meet a real HTTP server.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

Reply = list[dict[str, Any]]


@dataclass
class RasaBot:
    """Replies: a function of the incoming message, or the default echo of the text."""

    reply: Callable[[str], Reply] = lambda text: [{"recipient_id": "x", "text": f"Ha dicho: {text}"}]
    mode: str = "ok"  # ok | slow | error | garbage | not_a_list | bad_gzip
    delay_seconds: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    received_at: list[float] = field(default_factory=list)  # time.monotonic() of each request
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/webhooks/rest/webhook", self._webhook, methods=["POST"]),
            Route("/", self._root, methods=["GET"]),
        ])

    def messages(self) -> list[str]:
        with self._lock:
            return [r["message"] for r in self.requests]

    def received(self, sender: str) -> list[tuple[float, str]]:
        """(time.monotonic() it arrived, message) of each request of `sender`."""
        with self._lock:
            return [(t, r["message"]) for t, r in zip(self.received_at, self.requests)
                    if r["sender"] == sender]

    async def _root(self, request: Request) -> Response:
        return Response("Hello from Rasa: 3.6.0")

    async def _webhook(self, request: Request) -> Response:
        body = await request.json()
        with self._lock:
            self.requests.append(body)
            self.received_at.append(time.monotonic())
        if self.delay_seconds or self.mode == "slow":
            await asyncio.sleep(self.delay_seconds or 30)
        if self.mode == "error":
            return JSONResponse({"error": "boom"}, status_code=500)
        if self.mode == "garbage":
            return Response("<html>not json", media_type="application/json")
        if self.mode == "bad_gzip":  # a body its Content-Encoding cannot decode
            return Response(b"[]", media_type="application/json",
                            headers={"content-encoding": "gzip"})
        if self.mode == "not_a_list":
            return Response(json.dumps({"text": "hola"}), media_type="application/json")
        return JSONResponse(self.reply(body.get("message", "")))
