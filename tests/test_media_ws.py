"""The media websocket of the real app on a loopback port, driven with the `websockets` client.

Signature refusal, garbage that must not end the call, and cleanup at stop or disconnect. The
conversation itself is covered by the session tests and the simulator's end-to-end tests.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from app import media
from streaming.twilio_side import TwilioSide
from tests.support.gateway import AUTH_TOKEN, RunningGateway, null_gateway, running_gateway
from tests.support.gateway_process import LiveCall
from tests.support.twilio_sign import answered, signed_headers

PATH = "/webhook/twilio/stream"


@pytest.fixture(scope="module")
def gw() -> Iterator[RunningGateway]:
    with null_gateway() as gateway:
        yield gateway


def stream_url(gw: RunningGateway) -> str:
    return gw.url.replace("http://", "ws://") + PATH


def open_stream(gw: RunningGateway, headers: dict[str, str] | None = None):
    url = stream_url(gw)
    headers = signed_headers(url, token=AUTH_TOKEN) if headers is None else headers
    # max_queue=None: like Twilio, keep reading what the gateway sends even when the test does
    # not look at it, so the closing handshake is never stuck behind unread audio
    return connect(url, additional_headers=headers, proxy=None, open_timeout=10, max_queue=None)


def sessions_replaced() -> float:
    return REGISTRY.get_sample_value("gateway_stream_sessions_replaced_total") or 0.0


def rejected(reason: str) -> float:
    return REGISTRY.get_sample_value("gateway_stream_frames_rejected_total",
                                     {"reason": reason}) or 0.0


async def until(predicate, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def closed_with(ws: ClientConnection) -> int | None:
    with pytest.raises(ConnectionClosed) as info:
        while True:
            await asyncio.wait_for(ws.recv(), 5)
    return info.value.rcvd.code if info.value.rcvd else None


@pytest.mark.parametrize("headers", [
    {},                                                                    # no signature
    {"X-Twilio-Signature": "bm90IGEgc2lnbmF0dXJl"},                         # wrong signature
    signed_headers("wss://elsewhere.example" + PATH, token=AUTH_TOKEN),     # signed another URL
    None,                                                                   # wrong token, below
])
async def test_unsigned_upgrade_is_closed_with_policy_violation(gw: RunningGateway,
                                                                headers) -> None:
    if headers is None:
        headers = signed_headers(stream_url(gw), token="not-the-auth-token")
    before = gw.tasks()
    async with open_stream(gw, headers) as ws:
        assert await closed_with(ws) == 1008
    assert gw.gateway.calls == {}
    assert await asyncio.to_thread(gw.wait_settled, before) == []


async def test_garbage_does_not_end_the_call_and_stop_cleans_up(gw: RunningGateway) -> None:
    twilio = answered(TwilioSide(call_sid="CA" + "a1" * 16, stream_sid="MZ" + "b2" * 16),
                      AUTH_TOKEN)
    reasons = ["before_start", "binary_frame", "invalid_json", "unknown_event", "bad_base64",
               "wrong_stream_sid", "missing_field", "duplicate_start"]
    counts = {reason: rejected(reason) for reason in reasons}
    before = gw.tasks()
    async with open_stream(gw) as ws:
        await ws.send(twilio.connected())
        await ws.send(twilio.media())                       # media before start
        await ws.send(twilio.start())
        await until(lambda: twilio.call_sid in gw.gateway.calls, what="call registered")
        bad_media = json.loads(twilio.media())
        bad_media["media"]["payload"] = "not base64!"
        no_payload = json.loads(twilio.media())
        del no_payload["media"]["payload"]
        for garbage in (b"\x00\x01binary", "{not json", '{"event":"hello"}',
                        json.dumps(bad_media), twilio.media(stream_sid="MZ" + "0" * 32),
                        json.dumps(no_payload), twilio.start()):
            await ws.send(garbage)
        for _ in range(25):                                 # the call goes on
            await ws.send(twilio.media())
        await ws.send(twilio.dtmf("5"))
        await until(lambda: all(rejected(r) == counts[r] + 1 for r in reasons),
                    what="every bad frame counted")
        await asyncio.wait_for(ws.ping(), 5)                 # the socket is still open...
        assert twilio.call_sid in gw.gateway.calls           # ...and the call still live
        first = twilio.read(await asyncio.wait_for(ws.recv(), 5))  # the greeting goes out
        assert first["event"] in {"media", "mark"}
        assert first["streamSid"] == twilio.stream_sid
        if first["event"] == "media":
            base64.b64decode(first["media"]["payload"], validate=True)
        await ws.send(twilio.stop())
        assert await closed_with(ws) == 1000
    await until(lambda: not gw.gateway.calls, what="call unregistered")
    assert await asyncio.to_thread(gw.wait_settled, before) == []


async def test_disconnect_without_stop_cleans_up(gw: RunningGateway) -> None:
    twilio = answered(TwilioSide(call_sid="CA" + "c3" * 16, stream_sid="MZ" + "d4" * 16),
                      AUTH_TOKEN)
    before = gw.tasks()
    async with open_stream(gw) as ws:
        await ws.send(twilio.start())
        for _ in range(10):
            await ws.send(twilio.media())
        await until(lambda: twilio.call_sid in gw.gateway.calls, what="call registered")
    # the caller's side vanished: no stop, just a closed socket
    await until(lambda: not gw.gateway.calls, what="call unregistered")
    assert await asyncio.to_thread(gw.wait_settled, before) == []


async def test_socket_closed_before_start_leaves_nothing(gw: RunningGateway) -> None:
    before = gw.tasks()
    async with open_stream(gw) as ws:
        await ws.send(TwilioSide().connected())
    assert await asyncio.to_thread(gw.wait_settled, before) == []
    assert gw.gateway.calls == {}


async def test_a_socket_that_never_starts_is_closed(gw: RunningGateway, monkeypatch) -> None:
    monkeypatch.setattr(media, "START_TIMEOUT_SECONDS", 0.2)
    before = gw.tasks()
    async with open_stream(gw) as ws:
        await ws.send(TwilioSide().connected())
        assert await closed_with(ws) == 1000
    assert await asyncio.to_thread(gw.wait_settled, before) == []


async def test_a_turn_over_the_socket_reaches_rasa_and_comes_back(gw: RunningGateway) -> None:
    """Wiring: the gateway's engines, Rasa client and session behind the real endpoint."""
    twilio = answered(TwilioSide(call_sid="CA" + "e5" * 16, stream_sid="MZ" + "f6" * 16),
                      AUTH_TOKEN)
    seen = len(gw.bot.requests)

    async def marks(ws: ClientConnection) -> list[str]:
        """The marks sent until the gateway is quiet for a moment (all of a reply's sentences)."""
        names: list[str] = []
        while True:
            try:
                message = twilio.read(await asyncio.wait_for(ws.recv(), 0.5 if names else 5))
            except TimeoutError:
                return names
            if message["event"] == "mark":
                names.append(message["mark"]["name"])

    async with open_stream(gw) as ws:
        await ws.send(twilio.connected())
        await ws.send(twilio.start())
        for name in await marks(ws):  # Twilio played the whole greeting
            await ws.send(twilio.mark(name))
        for _ in range(5):
            await ws.send(twilio.media())
        await ws.send(twilio.media(b"\x00" * 160))  # the null recognizer's end-of-speech marker
        for _ in range(5):  # audio goes to the recognizer in 100 ms batches
            await ws.send(twilio.media())
        await until(lambda: len(gw.bot.requests) > seen, what="Rasa request")
        request = gw.bot.requests[seen]
        assert request["sender"] == twilio.call_sid and request["message"] == "hola"
        assert request["metadata"]["channel"] == "twilio_voice_stream"
        assert request["metadata"]["input"] == "speech"
        assert request["metadata"]["from"] == twilio.from_number
        # the reply ("Ha dicho: hola") comes back as audio and its own mark
        assert (await marks(ws))[0].startswith("g0-")
        await ws.send(twilio.stop())
        assert await closed_with(ws) == 1000
    await until(lambda: not gw.gateway.calls, what="call unregistered")


async def test_a_second_stream_for_a_live_call_replaces_its_session(gw: RunningGateway,
                                                                    caplog) -> None:
    """Twilio reconnecting (or a replayed start) opens a second socket for the same CallSid: the
    old session is closed and its tasks awaited before the new one starts, so only one session
    ever talks to Rasa for the call."""
    call_sid = "CA" + "7a" * 16
    before, replaced = gw.tasks(), sessions_replaced()
    async with LiveCall.open(stream_url(gw), call_sid, token=AUTH_TOKEN) as first:
        await first.turn(gw.bot)
        old = gw.gateway.calls[call_sid]
        async with LiveCall.open(stream_url(gw), call_sid, token=AUTH_TOKEN) as second:
            assert await first.closed_with(timeout=5) == 1000
            # Closed because its session was replaced (logged before the old session stops),
            # not because its media stopped.
            events = [(getattr(r, "event", None), getattr(r, "call_sid", None))
                      for r in caplog.records]
            assert ("session_replaced", call_sid) in events
            assert ("media_stopped", call_sid) not in events
            assert old.closed  # every task of the old session cancelled and awaited
            await until(lambda: gw.gateway.calls.get(call_sid) not in (None, old),
                        what="the new session registered")
            assert len(gw.gateway.calls) == 1
            senders = [r["sender"] for r in gw.bot.requests]
            await second.turn(gw.bot)
            assert [r["sender"] for r in gw.bot.requests][len(senders):] == [call_sid]
            await second.ws.send(second.twilio.stop())
            assert await second.closed_with() == 1000
    assert sessions_replaced() == replaced + 1
    assert [r.call_sid for r in caplog.records
            if getattr(r, "event", None) == "session_replaced"] == [call_sid]
    await until(lambda: not gw.gateway.calls, what="call unregistered")
    assert await asyncio.to_thread(gw.wait_settled, before) == []


def signature_rejections(reason: str) -> float:
    return REGISTRY.get_sample_value("gateway_signature_rejections_total",
                                     {"route": PATH, "reason": reason}) or 0.0


def forged(call_sid: str, how: str) -> TwilioSide:
    """A start naming the live call `call_sid`, by someone holding a valid upgrade signature."""
    twilio = TwilioSide(call_sid=call_sid)
    if how == "no_token":
        return twilio  # callSid, from and to only
    if how == "another_calls_token":  # a real token, issued for the attacker's own call
        own = answered(TwilioSide(call_sid="CA" + "66" * 16), AUTH_TOKEN)
        twilio.custom_parameters = {**(own.custom_parameters or {}), "callSid": call_sid}
        return twilio
    if how == "wrong_token":
        answered(twilio, AUTH_TOKEN)
        twilio.custom_parameters = {**(twilio.custom_parameters or {}), "token": "0" * 64}
        return twilio
    if how == "replayed":
        return twilio  # its parameters are the live call's: the test copies them
    if how == "resumes_changed":  # the resume count and start bound by the token, lowered
        answered(twilio, AUTH_TOKEN, resumes=2)
        twilio.custom_parameters = {**(twilio.custom_parameters or {}), "resumes": "0",
                                    "started": str(int(time.time()))}
        return twilio
    assert how == "stale"  # a token as Twilio would have had it 121 s ago
    return answered(twilio, AUTH_TOKEN, issued_ms=time.time_ns() // 1_000_000 - 121_000)


@pytest.mark.parametrize(("how", "reason"), [
    ("no_token", "stream_token_missing"),
    ("another_calls_token", "stream_token_invalid"),
    ("wrong_token", "stream_token_invalid"),
    ("resumes_changed", "stream_token_invalid"),
    ("stale", "stream_token_expired"),
    ("replayed", "stream_token_replayed"),
])
async def test_a_signed_upgrade_cannot_take_over_a_live_call(gw: RunningGateway, caplog,
                                                             how: str, reason: str) -> None:
    """Twilio signs the upgrade over its URL only, the same for every call: a start must also
    carry the stream token our TwiML issued for its CallSid, fresh, or it is refused and the
    live call's session is left alone."""
    call_sid = "CA" + "5e" * 16
    before, replaced, refused = gw.tasks(), sessions_replaced(), signature_rejections(reason)
    async with LiveCall.open(stream_url(gw), call_sid, token=AUTH_TOKEN) as live:
        await live.turn(gw.bot)
        session = gw.gateway.calls[call_sid]
        with caplog.at_level(logging.WARNING, logger="app.security"):
            async with open_stream(gw) as ws:  # a valid upgrade signature
                attacker = forged(call_sid, how)
                if how == "replayed":  # the live call's own start, captured and sent again
                    attacker.custom_parameters = dict(live.twilio.custom_parameters or {})
                await ws.send(attacker.connected())
                await ws.send(attacker.start())
                assert await closed_with(ws) == 1008
        assert gw.gateway.calls[call_sid] is session and not session.closed
        assert sessions_replaced() == replaced
        assert signature_rejections(reason) == refused + 1
        (warning,) = [r for r in caplog.records
                      if getattr(r, "event", None) == "signature_rejected"]
        assert (warning.levelname, warning.reason, warning.call_sid) == ("WARNING", reason,
                                                                         call_sid)
        await live.turn(gw.bot)  # the real caller goes on talking to the bot
        await live.ws.send(live.twilio.stop())
        assert await live.closed_with() == 1000
    await until(lambda: not gw.gateway.calls, what="call unregistered")
    assert await asyncio.to_thread(gw.wait_settled, before) == []


async def test_without_signature_checks_a_start_needs_no_token() -> None:
    """twilio.validate_signatures: false (development) accepts any start, as it accepts any
    upgrade."""
    with running_gateway(stt={"engine": "null"}, tts={"engine": "null"},
                         twilio={"validate_signatures": False}) as dev:
        twilio = TwilioSide(call_sid="CA" + "4d" * 16)
        async with open_stream(dev, headers={}) as ws:
            await ws.send(twilio.connected())
            await ws.send(twilio.start())
            await until(lambda: twilio.call_sid in dev.gateway.calls, what="call registered")
            await ws.send(twilio.stop())
            assert await closed_with(ws) == 1000


def greeting_seconds() -> tuple[float, float]:
    return (REGISTRY.get_sample_value("gateway_stream_greeting_seconds_sum") or 0.0,
            REGISTRY.get_sample_value("gateway_stream_greeting_seconds_count") or 0.0)


@pytest.mark.parametrize(("answered_ms_ago", "at_least"), [
    (1500, 1.5),  # Twilio took 1.5 s to connect: the caller waited that too
    (-3000, 0.0),  # the answering instance's clock is 3 s ahead: from the start event instead
])
async def test_the_time_to_first_greeting_counts_from_the_webhooks_answer(
        gw: RunningGateway, answered_ms_ago: int, at_least: float) -> None:
    twilio = answered(TwilioSide(call_sid="CA" + "3b" * 16), AUTH_TOKEN,
                      issued_ms=time.time_ns() // 1_000_000 - answered_ms_ago)
    (total, count) = greeting_seconds()
    async with open_stream(gw) as ws:
        await ws.send(twilio.connected())
        await ws.send(twilio.start())
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["event"] == "media"
        await until(lambda: greeting_seconds()[1] == count + 1, what="the greeting timed")
        await ws.send(twilio.stop())
        assert await closed_with(ws) == 1000
    assert greeting_seconds()[0] - total >= at_least
    await until(lambda: not gw.gateway.calls, what="call unregistered")


async def test_streams_racing_for_one_call_leave_one_session(gw: RunningGateway, caplog) -> None:
    """Three sockets start the same call at once: a session being replaced may itself be replaced
    before it started; whatever the order, one session is left and the other sockets close."""
    call_sid = "CA" + "8b" * 16
    before, replaced = gw.tasks(), sessions_replaced()
    now_ms = time.time_ns() // 1_000_000
    streams = [answered(TwilioSide(call_sid=call_sid, stream_sid=f"MZ{index:032x}"), AUTH_TOKEN,
                        issued_ms=now_ms - index)  # three TwiMLs (resumes): three tokens
               for index in range(3)]
    async with open_stream(gw) as a, open_stream(gw) as b, open_stream(gw) as c:
        sockets = [a, b, c]
        await asyncio.gather(*(ws.send(twilio.start()) for ws, twilio in zip(sockets, streams)))
        await until(lambda: sum(ws.close_code is not None for ws in sockets) == 2, timeout=10,
                    what="two sockets closed")
        assert [ws.close_code for ws in sockets].count(1000) == 2
        (live,) = [ws for ws in sockets if ws.close_code is None]
        session = gw.gateway.calls[call_sid]
        assert not session.closed and len(gw.gateway.calls) == 1
        assert sessions_replaced() == replaced + 2
        await live.send(streams[sockets.index(live)].stop())
        assert await closed_with(live) == 1000
    await until(lambda: not gw.gateway.calls, what="call unregistered")
    assert await asyncio.to_thread(gw.wait_settled, before) == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_stream_whose_media_stopped_is_closed_and_its_session_stops() -> None:
    """A network cut the socket has not noticed: Twilio's frames (every 20 ms while the stream
    lives) stop. The session stops rather than act on a call Twilio may have resumed elsewhere;
    a stream that keeps streaming stays, however long nobody speaks."""
    with running_gateway(stt={"engine": "null"}, tts={"engine": "null"},
                         call={"media_timeout_seconds": 0.5}) as quick:
        timeouts = REGISTRY.get_sample_value("gateway_stream_media_timeouts_total") or 0.0
        before = quick.tasks()
        live = answered(TwilioSide(call_sid="CA" + "9c" * 16, stream_sid="MZ" + "0d" * 16),
                        AUTH_TOKEN)
        silent = answered(TwilioSide(call_sid="CA" + "ae" * 16, stream_sid="MZ" + "1f" * 16),
                          AUTH_TOKEN)
        async with open_stream(quick) as streaming, open_stream(quick) as cut:
            for ws, twilio in ((streaming, live), (cut, silent)):
                await ws.send(twilio.connected())
                await ws.send(twilio.start())
            await until(lambda: len(quick.gateway.calls) == 2, what="two calls registered")
            session = quick.gateway.calls[silent.call_sid]
            for _ in range(100):  # 2 s of frames on one stream, none on the other
                await streaming.send(live.media())
                await asyncio.sleep(0.02)
            assert await closed_with(cut) == 1000
            assert session.closed and silent.call_sid not in quick.gateway.calls
            assert live.call_sid in quick.gateway.calls and streaming.close_code is None
            await streaming.send(live.stop())
            assert await closed_with(streaming) == 1000
        assert (REGISTRY.get_sample_value("gateway_stream_media_timeouts_total")
                == timeouts + 1)
        assert await asyncio.to_thread(quick.wait_settled, before) == []


async def test_media_that_stopped_is_detected_within_a_quarter_more_than_the_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The watcher looks often enough that a stream whose frames stopped is closed between
    call.media_timeout_seconds and 1.25 times it after its last frame, wherever the frames
    stopped between two of its looks (here just after one, the worst case of looking once per
    timeout: nearly twice the timeout), measured here from the last frame sent. The watcher
    only sees the frame count at its looks, so it reports the idle time as bounds that hold the
    real one."""
    caplog.set_level(logging.WARNING, logger="app.media")
    timeout = 2.0
    with running_gateway(stt={"engine": "null"}, tts={"engine": "null"},
                         call={"media_timeout_seconds": timeout}) as quick:
        twilio = answered(TwilioSide(call_sid="CA" + "5e" * 16, stream_sid="MZ" + "2b" * 16),
                          AUTH_TOKEN)
        async with open_stream(quick) as ws:
            await ws.send(twilio.connected())
            await ws.send(twilio.start())
            await until(lambda: twilio.call_sid in quick.gateway.calls, what="call registered")
            registered = time.monotonic()
            while True:
                await ws.send(twilio.media())
                last_frame_sent = time.monotonic()
                if last_frame_sent - registered >= timeout * 1.1:
                    break
                await asyncio.sleep(0.02)
            assert await closed_with(ws) == 1000
            closed = time.monotonic()
        idle = closed - last_frame_sent
        assert timeout <= idle <= timeout * 1.25 + 0.15  # looking once per timeout: ~1.9 x
        [stopped] = [r for r in caplog.records if getattr(r, "event", "") == "media_stopped"]
        # The real idle time (<= what was seen here, less the frame's and the close's transit).
        assert timeout <= stopped.idle_at_least_seconds <= idle
        assert idle - 0.05 <= stopped.idle_at_most_seconds <= timeout * 1.25 + 0.15
