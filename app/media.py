"""The media websocket (`/webhook/twilio/stream`): a thin loop from Twilio's frames to a session.

Per frame this does only `receive`, `StreamState.parse` and `CallSession.on_media`, all inline:
no thread hop, task, log line or metric label lookup per frame (ARCHITECTURE.md).
It speaks plain ASGI messages rather than going through starlette's `WebSocket`, whose state
checks wrap every receive and send: 2% of the gateway's CPU under load (bench/README.md).
Invalid frames are logged (the first few per call), counted, and skipped; the call goes on.

The same loop serves the softphone (app/softphone.py): a subclass of the endpoint changes who may
connect (`admit`), which call a `start` may open (`vet`), and what carries out the call's endings
and watches it (`link`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from starlette.requests import HTTPConnection
from starlette.routing import WebSocketRoute
from starlette.types import Receive, Scope, Send

from app import security
from app.config import Settings
from app.gateway import Gateway
from app.prompts import greeting_text
from app.resume import Carried, RememberFailures
from app.twiml import STREAM_PATH
from streaming import metrics
from streaming.ports import CallControl, CallEvents, CallInfo
from streaming.protocol import Dtmf, Mark, Media, ProtocolError, Start, Stop, StreamState
from streaming.session import CallSession, Phase
from streaming.settings import SessionConfig
from streaming.tasks import cancel_and_wait

logger = logging.getLogger("app.media")

LOGGED_REJECTIONS = 10  # per call; the rest are only counted, so garbage cannot flood the logs
START_TIMEOUT_SECONDS = 10.0  # Twilio sends `start` at once; a silent socket is not kept open
POLICY_VIOLATION = 1008
MEDIA_POLL_MIN_SECONDS = 0.25  # the media-timeout watcher looks no more often than this


def session_config(settings: Settings, carried: Carried,
                   answered_seconds_ago: float = 0.0) -> SessionConfig:
    """The session's view of the settings; the greeting depends on the time of the call, and a
    resumed stream opens with prompts.resume instead."""
    return SessionConfig(settings.language.code, settings.stt.endpoint_silence_ms,
                         greeting_text(settings), call=settings.call, vad=settings.vad,
                         prompts=settings.prompts, resumed=carried.resumes > 0,
                         elapsed_seconds=carried.elapsed_seconds(),
                         answered_seconds_ago=answered_seconds_ago)


SendText = Callable[[str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Admission:
    """The answer to an upgrade request: the subprotocol to accept with, or why it is refused."""

    refusal: str | None = None  # the close reason; None admits the connection
    subprotocol: str | None = None


@dataclass(frozen=True, slots=True)
class CallLink:
    """What serves one call besides the session: who carries out its endings, who watches it,
    and what to release once it is over."""

    control: CallControl
    events: CallEvents | None = None
    aclose: Callable[[], Awaitable[None]] | None = None


class MediaStreamEndpoint:
    """The ASGI app behind STREAM_PATH (an instance, so starlette hands it raw ASGI messages)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        conn = HTTPConnection(scope)
        gateway: Gateway = conn.app.state.gateway
        if (await receive())["type"] != "websocket.connect":
            return
        # The upgrade request is checked before anything is read from the socket. Accepting first
        # lets the refusal be a websocket close code (1008) rather than a bare 403.
        admission = self.admit(conn, gateway)
        accept = {"type": "websocket.accept"}
        if admission.subprotocol is not None:
            accept["subprotocol"] = admission.subprotocol
        await send(accept)
        if admission.refusal is not None:
            await send({"type": "websocket.close", "code": POLICY_VIOLATION,
                        "reason": admission.refusal})
            return
        stream = _Stream(conn, receive, send, gateway, self.link, self.vet)
        try:
            await stream.run()
        finally:
            await stream.aclose()

    def admit(self, conn: HTTPConnection, gateway: Gateway) -> Admission:
        """Twilio signs the upgrade request (X-Twilio-Signature)."""
        if security.verify(conn, gateway.settings):
            return Admission()
        return Admission(refusal="invalid X-Twilio-Signature")

    def vet(self, gateway: Gateway, call: CallInfo) -> CallInfo | None:
        """The call a `start` opens, or None when it is refused (logged and counted): the upgrade's
        signature covers no CallSid, so the stream token our TwiML issued must name this one, be
        fresh and not have opened a stream before (app/security.py). A replayed upgrade cannot
        take over a live call."""
        reason = security.check_stream(gateway.settings, call.call_sid, call.custom_parameters,
                                       gateway.stream_tokens)
        if reason is None:
            return call
        security.refuse_stream(STREAM_PATH, call.call_sid, reason)
        return None

    def link(self, conn: HTTPConnection, gateway: Gateway, call: CallInfo,
             send: SendText) -> CallLink:
        """Endings go through Twilio's REST API; one it refuses is remembered for the resume
        webhook (app/resume.py). Without server.public_url, the URLs given to Twilio (Gather
        redirect, <Dial> action) are built on the base URL this websocket was reached at."""
        control = gateway.call_control.for_base_url(str(conn.base_url))
        return CallLink(RememberFailures(control, gateway.failed_handovers))


@dataclass(eq=False)
class _Stream:
    """One websocket's lifetime: before `start`, the call's session, and the cleanup."""

    conn: HTTPConnection
    receive: Receive
    send: Send
    gateway: Gateway
    make_link: Callable[[HTTPConnection, Gateway, CallInfo, SendText], CallLink]
    vet: Callable[[Gateway, CallInfo], CallInfo | None]
    link: CallLink | None = None
    state: StreamState = field(default_factory=StreamState)
    session: CallSession | None = None
    call_sid: str | None = None
    rejected: int = 0
    open: bool = True  # neither side has closed the socket
    _watcher: asyncio.Task[None] | None = field(default=None, init=False)

    async def run(self) -> None:
        receive, parse = self.receive, self.state.parse
        session: CallSession | None = None
        try:
            async with asyncio.timeout(START_TIMEOUT_SECONDS) as before_start:
                while True:
                    message = await receive()
                    text = message.get("text")
                    if text is None:
                        if message["type"] == "websocket.disconnect":
                            self.open = False
                            return
                        text = message.get("bytes") or b""  # a binary frame: parse rejects it
                    try:
                        event = parse(text)
                    except ProtocolError as exc:
                        self._reject(exc)
                        continue
                    kind = type(event)
                    if kind is Media:
                        session.on_media(event.payload)  # type: ignore[union-attr]  # start came first
                    elif kind is Mark:
                        session.on_mark(event.name)  # type: ignore[union-attr]
                    elif kind is Dtmf:
                        session.on_dtmf(event.digit)  # type: ignore[union-attr]
                    elif kind is Start:
                        call = self.vet(self.gateway, event.call)  # type: ignore[attr-defined]
                        if call is None:
                            await self._close_socket(POLICY_VIOLATION, "stream token refused")
                            return
                        session = await self._open(call)
                        before_start.reschedule(None)
                    elif kind is Stop:
                        session.on_stop()  # type: ignore[union-attr]
                        return
        except TimeoutError:
            logger.warning("no start event within %g s", START_TIMEOUT_SECONDS, extra={
                "event": "stream_start_timeout", "call_sid": None})
        except Exception:
            logger.exception("media stream failed", extra={
                "event": "stream_failed", "call_sid": self.call_sid})

    async def _open(self, call: CallInfo) -> CallSession:
        gateway = self.gateway
        self.call_sid = call.call_sid
        self.link = link = self.make_link(self.conn, gateway, call, self.send_text)
        carried = Carried.read(call.custom_parameters)
        if carried.resumes:
            logger.info("a dropped stream resumes", extra={
                "event": "stream_resumed", "call_sid": call.call_sid, "resumes": carried.resumes})
        session = CallSession(
            call, self.send_text,
            stt=gateway.stt, tts=gateway.tts, bot=gateway.rasa, control=link.control,
            config=session_config(gateway.settings, carried,
                                  security.answered_seconds_ago(call.custom_parameters)),
            events=link.events,
        )
        self.session = session
        previous = gateway.calls.get(call.call_sid)
        gateway.calls[call.call_sid] = session
        if previous is not None:
            await _replace(previous)
        if gateway.calls.get(call.call_sid) is session:  # not itself replaced in the meantime
            await session.start()
        # The session may end the call itself (call-control failure, Twilio never stopping the
        # stream after a transfer): then the socket is closed, and Twilio runs the TwiML that
        # follows <Connect> (the resume webhook).
        self._watcher = asyncio.create_task(self._close_when_finished(session),
                                            name=f"stream-watcher:{call.call_sid}")
        return session

    async def _close_when_finished(self, session: CallSession) -> None:
        """Close the socket once the session is done with the call, or once Twilio's frames
        stopped coming for call.media_timeout_seconds: the connection is gone though the socket
        has not noticed, and Twilio may have resumed the call on another instance already, so
        the session stops at once rather than act on it (a reprompt, a transfer).

        The frame path only counts frames; the watcher looks every eighth of the timeout and
        notes the two looks the count last moved between, so the stop is seen between 1 and 1.25
        times the timeout after the last frame (looking once per timeout: up to twice it), and
        the real idle time is reported as the bounds those two looks give."""
        timeout = self.gateway.settings.call.media_timeout_seconds
        poll = min(timeout, max(MEDIA_POLL_MIN_SECONDS, timeout / 8))
        clock = asyncio.get_running_loop().time
        seen, looked = session.frames, clock()
        moved_after = moved_at = looked  # the count last moved after one look, before the other
        while not session.finished.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(poll):
                    await session.finished.wait()
            if session.finished.is_set():
                break
            now, frames = clock(), session.frames
            if frames != seen or session.phase is Phase.ENDING:
                seen, moved_after, moved_at = frames, looked, now
            elif now - moved_at >= timeout:
                metrics.MEDIA_TIMEOUTS.inc()
                logger.warning("no media for %g s: the stream is gone", timeout, extra={
                    "event": "media_stopped", "call_sid": session.call.call_sid,
                    "idle_at_least_seconds": round(now - moved_at, 3),
                    "idle_at_most_seconds": round(now - moved_after, 3)})
                await session.aclose()
                break
            looked = now
        await self._close_socket(1000)

    async def send_text(self, text: str) -> None:
        await self.send({"type": "websocket.send", "text": text})

    def _reject(self, exc: ProtocolError) -> None:
        self.rejected += 1
        metrics.FRAMES_REJECTED[exc.reason].inc()
        if self.rejected <= LOGGED_REJECTIONS:
            logger.warning("websocket message rejected: %s", exc.detail, extra={
                "event": "frame_rejected", "call_sid": self.call_sid, "reason": exc.reason})

    async def aclose(self) -> None:
        """Stop the session's tasks, unregister the call, close the socket. Never raises."""
        if self._watcher is not None:
            await cancel_and_wait(self._watcher)
        session, gateway = self.session, self.gateway
        if session is not None:
            await session.aclose()
            if gateway.calls.get(session.call.call_sid) is session:
                del gateway.calls[session.call.call_sid]
        if self.link is not None and self.link.aclose is not None:
            await self.link.aclose()
        if self.rejected > LOGGED_REJECTIONS:
            logger.warning("%d websocket messages rejected in this call", self.rejected, extra={
                "event": "frames_rejected", "call_sid": self.call_sid, "count": self.rejected})
        await self._close_socket(1000)

    async def _close_socket(self, code: int, reason: str = "") -> None:
        if not self.open:
            return
        self.open = False
        try:
            await self.send({"type": "websocket.close", "code": code, "reason": reason})
        except Exception:  # the peer is already gone
            pass


async def _replace(previous: CallSession) -> None:
    """A new stream started for a call that has a live session (Twilio reconnected, or replayed
    `start`): the old session stops before the new one starts, so only one talks to Rasa. Its
    socket closes when it finishes (`_close_when_finished`)."""
    metrics.SESSIONS_REPLACED.inc()
    logger.warning("a new stream started for a live call; closing the old session", extra={
        "event": "session_replaced", "call_sid": previous.call.call_sid})
    await previous.aclose()


routes = [WebSocketRoute(STREAM_PATH, MediaStreamEndpoint())]
