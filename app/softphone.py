"""The softphone: a browser page that calls the bot through the real pipeline (development only).

`GET /softphone?token=…` serves a static page (app/static/) that captures the microphone and
speaks Twilio's Media Streams protocol over `WS /softphone/stream`. That websocket runs the same
loop as Twilio's (app/media.py): same CallSession, engines, Rasa client, barge-in, marks, clear.
Four things differ, all here:

- Who may connect: the page offers the token as the websocket subprotocol `token.<token>` next
  to `softphone` (a header, so the token is in no websocket URL and no access log), compared in
  constant time. The page's own URL carries it as `?token=`; app/logs.py masks it in log lines.
- Its calls' CallSids: `softphone-…` (the page makes them so, and the server prefixes any other),
  so a softphone `start` can never name, and replace, a phone call's session.
- Endings: there is no phone leg to move. A transfer, a hang-up or the move to the Gather path
  is told to the page as a `call_ended` message; the page then stops the stream as Twilio would.
- The timeline: the session's CallEvents become `timeline` messages. Card numbers in them are
  masked as in any log line (`mask_card_numbers`), so a full PAN never reaches the page either
  (the log's `caller said` lines show no digit at all: `redact_digits`).

Only this endpoint sends those two non-Twilio messages. Off by default (server.softphone).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
from pathlib import Path
from typing import Any

from starlette.requests import HTTPConnection, Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from app.config import Settings
from app.gateway import Gateway
from app.logs import mask_card_numbers
from app.media import Admission, CallLink, MediaStreamEndpoint, SendText
from streaming.ports import CallEvent, CallInfo
from streaming.tasks import cancel_and_wait

logger = logging.getLogger("app.softphone")

PAGE_PATH = "/softphone"
SOFTPHONE_STREAM_PATH = "/softphone/stream"
ASSETS_PATH = "/softphone/static"
STATIC = Path(__file__).resolve().parent / "static"
SUBPROTOCOL = "softphone"
TOKEN_SUBPROTOCOL = "token."  # followed by server.softphone.token
CALL_SID_PREFIX = "softphone-"  # Twilio's CallSids are CA + 32 hex digits
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",  # the page's URL holds the token
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:",
    "X-Content-Type-Options": "nosniff",
}


def token_matches(offered: str, settings: Settings) -> bool:
    expected = settings.server.softphone.token
    return bool(expected) and hmac.compare_digest(offered.encode(), expected.encode())


async def page(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    if not token_matches(request.query_params.get("token", ""), gateway.settings):
        logger.warning("softphone page refused: missing or wrong token",
                       extra={"event": "softphone_refused", "route": PAGE_PATH})
        return PlainTextResponse(
            "Open this page as /softphone?token=<server.softphone.token>.", status_code=403)
    return FileResponse(STATIC / "softphone.html", headers=PAGE_HEADERS)


class SoftphoneStreamEndpoint(MediaStreamEndpoint):
    """The media-stream loop with the softphone's token and a BrowserCall for each call."""

    def admit(self, conn: HTTPConnection, gateway: Gateway) -> Admission:
        offered: list[str] = conn.scope.get("subprotocols") or []
        # Accept with `softphone` even to refuse: a browser that offered subprotocols fails the
        # handshake when none is chosen, and the page could not show the close reason.
        chosen = SUBPROTOCOL if SUBPROTOCOL in offered else None
        token = next((p[len(TOKEN_SUBPROTOCOL):] for p in offered
                      if p.startswith(TOKEN_SUBPROTOCOL)), "")
        if token_matches(token, gateway.settings):
            return Admission(subprotocol=chosen)
        logger.warning("softphone websocket refused: missing or wrong token",
                       extra={"event": "softphone_refused", "route": SOFTPHONE_STREAM_PATH})
        return Admission(refusal="missing or wrong softphone token", subprotocol=chosen)

    def vet(self, gateway: Gateway, call: CallInfo) -> CallInfo:
        """Every softphone call in its own namespace of CallSids (the token admitted the page)."""
        if call.call_sid.startswith(CALL_SID_PREFIX):
            return call
        return dataclasses.replace(call, call_sid=CALL_SID_PREFIX + call.call_sid)

    def link(self, conn: HTTPConnection, gateway: Gateway, call: CallInfo,
             send: SendText) -> CallLink:
        browser = BrowserCall(call, send, gateway.settings.twilio.fallback_phone_number)
        return CallLink(control=browser, events=browser, aclose=browser.aclose)


class BrowserCall:
    """The page's end of one call: its CallControl (no phone leg) and its CallEvents.

    Messages go out through a queue and a writer task of their own, in order, so `emit` never
    waits; they are a handful per turn, beside the audio the session's sender writes.
    """

    def __init__(self, call: CallInfo, send: SendText, fallback_number: str) -> None:
        self._stream_sid = call.stream_sid
        self._send = send
        self._fallback_number = fallback_number
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._writer = asyncio.create_task(self._write(), name=f"softphone:{call.call_sid}")

    def emit(self, event: CallEvent) -> None:
        self._put("timeline", {"kind": event.kind, **dataclasses.asdict(event)})

    async def transfer(self, call_sid: str, number: str | None = None) -> None:
        self._put("call_ended", {"action": "transfer",
                                 "number": number or self._fallback_number})

    async def hang_up(self, call_sid: str) -> None:
        self._put("call_ended", {"action": "hang_up"})

    async def redirect_to_gather(self, call_sid: str) -> None:
        self._put("call_ended", {"action": "redirect_to_gather"})

    async def aclose(self) -> None:
        await cancel_and_wait(self._writer)

    def _put(self, event: str, body: dict[str, Any]) -> None:
        text = json.dumps({"event": event, "streamSid": self._stream_sid, event: body},
                          ensure_ascii=False, separators=(",", ":"), default=str)
        self._queue.put_nowait(mask_card_numbers(text))

    async def _write(self) -> None:
        while True:
            text = await self._queue.get()
            try:
                await self._send(text)
            except Exception:  # the socket is gone: the receive loop ends the call
                return


def routes(settings: Settings) -> list[BaseRoute]:
    """Nothing at all unless server.softphone.enabled."""
    if not settings.server.softphone.enabled:
        return []
    return [
        Route(PAGE_PATH, page, methods=["GET"]),
        Mount(ASSETS_PATH, app=StaticFiles(directory=STATIC / "softphone")),
        WebSocketRoute(SOFTPHONE_STREAM_PATH, SoftphoneStreamEndpoint()),
    ]
