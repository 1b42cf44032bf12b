"""The simulator against a scripted gateway: signatures, Twilio's messages, playout, marks, clear.

The fake gateway is a real Starlette app on a loopback port; it validates signatures like the real
one, records every message it receives, and answers on a fixed script so the simulator's clock,
playout and mark echoes can be checked exactly.
"""

from __future__ import annotations

import base64
import json
import wave
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from twilio.request_validator import RequestValidator

from app import __main__ as cli
from app.simulate import (
    SimulationError, Turn, load_wav, simulate_call, speech_segments,
)
from audio import mulaw
from audio.framing import FRAME_BYTES
from streaming.protocol import StreamState
from streaming.twilio_side import Playout
from tests.support.servers import ServerThread

TOKEN = "fake-auth-token"


def tone(seconds: float, amplitude: int = 8000, freq: float = 440.0) -> bytes:
    t = np.arange(int(seconds * 8000)) / 8000
    pcm = (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16).tobytes()
    return mulaw.encode(pcm)


@dataclass
class FakeGateway:
    """Greets with a tone and a mark, answers each caller utterance with another tone and mark."""

    greeting_seconds: float = 1.0
    reply_seconds: float = 0.5
    clear_on_speech: bool = False
    hang_up_after_reply: bool = False  # close the call's first stream after its first reply
    misbehave: bool = False
    public_url: str = ""
    # TwiML after </Connect>; the documents /webhook/twilio/next answers, in turn (the last one
    # again and again); what was posted to it.
    after_connect: str = ""
    next_documents: list[str] = field(default_factory=list)
    next_requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)
    voice_form: dict[str, str] = field(default_factory=dict)

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/webhook/twilio/voice", self.voice, methods=["POST"]),
            Route("/webhook/twilio/next", self.next, methods=["POST"]),
            WebSocketRoute("/webhook/twilio/stream", self.stream),
        ])

    def stream_twiml(self, host: str, scheme: str, form: dict[str, Any], leg: str = "1") -> str:
        return (
            f'<?xml version="1.0" encoding="UTF-8"?><Response><Connect>'
            f'<Stream url="{scheme}://{host}/webhook/twilio/stream">'
            f'<Parameter name="callSid" value="{form["CallSid"]}"/>'
            f'<Parameter name="from" value="{form["From"]}"/>'
            f'<Parameter name="leg" value="{leg}"/></Stream></Connect>{self.after_connect}'
            f'</Response>'
        )

    async def next(self, request: Request) -> Response:
        form = dict(await request.form())
        if not RequestValidator(TOKEN).validate(
            str(request.url), form, request.headers.get("X-Twilio-Signature", "")
        ):
            return Response("forbidden", status_code=403)
        self.next_requests.append((str(request.url), form))
        document = self.next_documents[min(len(self.next_requests), len(self.next_documents)) - 1]
        return Response(document.format(host=request.headers["host"], **form),
                        media_type="application/xml")

    def signed_url(self, url: str) -> str:
        if not self.public_url:
            return url
        path = url.split("/webhook/", 1)[1]
        scheme = "wss://" if url.startswith("ws") else "https://"
        return scheme + self.public_url.split("://", 1)[1] + "/webhook/" + path

    async def voice(self, request: Request) -> Response:
        form = dict(await request.form())
        if not RequestValidator(TOKEN).validate(
            self.signed_url(str(request.url)), form, request.headers.get("X-Twilio-Signature", "")
        ):
            return Response("forbidden", status_code=403)
        self.voice_form = form
        host = self.public_url.split("://", 1)[1] if self.public_url else request.headers["host"]
        scheme = "wss" if self.public_url else "ws"
        return Response(self.stream_twiml(host, scheme, form), media_type="application/xml")

    async def stream(self, ws: WebSocket) -> None:
        signature = ws.headers.get("X-Twilio-Signature", "")
        if not RequestValidator(TOKEN).validate(self.signed_url(str(ws.url)), {}, signature):
            await ws.close(code=1008)
            return
        await ws.accept()
        sid = ""
        loud = quiet = 0
        state = StreamState()
        try:
            while True:
                text = await ws.receive_text()
                state.parse(text)  # the gateway's own parser accepts what the simulator sends
                msg = json.loads(text)
                self.received.append(msg)
                event = msg["event"]
                if event == "start":
                    sid = msg["streamSid"]
                    await self.speak(ws, sid, self.greeting_seconds, "greeting")
                    if self.misbehave:
                        await ws.send_bytes(b"\x00\x01")
                        await ws.send_text(json.dumps({"event": "mark", "streamSid": "MZwrong",
                                                       "mark": {"name": "x"}}))
                elif event == "media":
                    frame = mulaw.decode(base64.b64decode(msg["media"]["payload"]))
                    if mulaw.rms(frame) > 300:
                        if loud == 0 and self.clear_on_speech:
                            await ws.send_text(json.dumps({"event": "clear", "streamSid": sid}))
                        loud, quiet = loud + 1, 0
                    elif loud:
                        quiet += 1
                        if quiet == 10:  # 200 ms of silence ends the utterance
                            loud = 0
                            await self.speak(ws, sid, self.reply_seconds, "reply")
                            if self.hang_up_after_reply and len(self.events("start")) == 1:
                                await ws.close(code=1000)
                                return
                elif event == "stop":
                    return
        except WebSocketDisconnect:
            return

    async def speak(self, ws: WebSocket, sid: str, seconds: float, mark: str) -> None:
        audio = tone(seconds)
        for i in range(0, len(audio), 320):  # 40 ms chunks, all at once: Twilio buffers them
            payload = base64.b64encode(audio[i:i + 320]).decode()
            await ws.send_text(json.dumps({"event": "media", "streamSid": sid,
                                           "media": {"payload": payload}}))
        await ws.send_text(json.dumps({"event": "mark", "streamSid": sid, "mark": {"name": mark}}))

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.received if m["event"] == kind]

    def media_before(self, kind: str, detail: str) -> int:
        """How many media frames arrived before the first `kind` message matching `detail`."""
        count = 0
        for m in self.received:
            if m["event"] == kind and detail in json.dumps(m):
                return count
            count += m["event"] == "media"
        raise AssertionError(f"no {kind} {detail}")


@pytest.fixture
def fake() -> Iterator[tuple[FakeGateway, ServerThread]]:
    gateway = FakeGateway()
    server = ServerThread(gateway.app()).start()
    try:
        yield gateway, server
    finally:
        server.stop()


async def test_a_call_speaks_like_twilio_and_plays_the_replies(fake):
    gateway, server = fake
    result = await simulate_call(
        server.url, [Turn(audio=tone(0.6), digits="12#")], auth_token=TOKEN, realtime=False,
        from_number="+34600111222", tail=5)

    assert gateway.voice_form["From"] == "+34600111222"
    assert gateway.voice_form["CallSid"] == result.call_sid
    kinds = [m["event"] for m in gateway.received]
    assert kinds[:2] == ["connected", "start"] and kinds[-1] == "stop"
    start = gateway.received[1]["start"]
    assert start["callSid"] == result.call_sid and start["streamSid"] == result.stream_sid
    assert start["customParameters"] == {"callSid": result.call_sid, "from": "+34600111222",
                                         "leg": "1"}
    media = gateway.events("media")
    assert [m["media"]["chunk"] for m in media] == [str(i) for i in range(1, len(media) + 1)]
    assert [m["media"]["timestamp"] for m in media[:3]] == ["0", "20", "40"]
    assert all(len(base64.b64decode(m["media"]["payload"])) == FRAME_BYTES for m in media)
    sequence = [int(m["sequenceNumber"]) for m in gateway.received[1:]]
    assert sequence == list(range(1, len(sequence) + 1))
    assert [m["dtmf"]["digit"] for m in gateway.events("dtmf")] == ["1", "2", "#"]

    # The greeting (1.0 s, all buffered at once) plays out on the clock: its mark comes back
    # after exactly 50 frames; the caller waits for it and then for 0.8 s of quiet.
    assert gateway.media_before("mark", "greeting") == 50
    assert result.marks == ["greeting", "reply"]
    assert result.times("bot_audio_start")[0] == 0.0
    assert result.times("bot_audio_stop")[0] == pytest.approx(1.0)
    speech_start = result.times("caller_speech_start")[0]
    assert speech_start >= 1.8
    assert result.times("caller_speech_end")[0] == pytest.approx(speech_start + 0.6)
    # The reply came 200 ms after the caller stopped (the fake's end of utterance).
    assert result.latencies[0] is not None and 0.15 <= result.latencies[0] <= 0.3

    heard = result.heard_pcm16()
    def loud(t0: float, t1: float) -> int:
        return mulaw.rms(heard[int(t0 * 16000):int(t1 * 16000)])
    assert loud(0.0, 1.0) > 3000 and loud(1.05, speech_start) < 50
    reply_start = result.times("bot_audio_start")[1]
    assert loud(reply_start, reply_start + 0.5) > 3000
    assert result.audible_seconds() == pytest.approx(1.5, abs=0.05)
    assert result.protocol_errors == [] and result.close_code is None


async def test_clear_drops_the_buffered_audio_and_echoes_pending_marks(fake):
    gateway, server = fake
    gateway.greeting_seconds, gateway.clear_on_speech = 3.0, True
    result = await simulate_call(
        server.url, [Turn(audio=tone(0.4), when="bot_speaking", delay=0.5)], auth_token=TOKEN,
        tail=3, settle=0.3)

    (clear,) = result.clears
    assert 0.5 <= clear < 2.5
    # The greeting's mark was due at 3.0 s; after the clear it comes back with the next frame.
    greeting_echo = next(e.t for e in result.events if e.kind == "mark" and e.detail == "greeting")
    assert clear <= greeting_echo < 2.9
    first_stop = result.times("bot_audio_stop")[0]
    assert first_stop == pytest.approx(clear, abs=0.001)
    heard = result.heard_pcm16()
    cut = int(clear * 16000)
    assert mulaw.rms(heard[cut - 1600:cut]) > 3000 and mulaw.rms(heard[cut:cut + 1600]) < 50
    (delay,) = result.clear_delays()
    assert delay == pytest.approx(clear - result.times("caller_speech_start")[0])
    assert result.marks == ["greeting", "reply"]


async def test_real_time_mode_runs_on_the_wall_clock(fake):
    gateway, server = fake
    gateway.greeting_seconds = 0.3
    result = await simulate_call(server.url, [Turn(audio=tone(0.3))], auth_token=TOKEN, tail=3,
                                 settle=0.2)
    # Frames are paced at 50 per second: the stream lasted as long as the frames sent.
    frames = len(gateway.events("media"))
    assert result.duration == pytest.approx(frames * 0.02, abs=0.1)
    assert gateway.media_before("mark", "greeting") in range(14, 18)
    assert result.marks == ["greeting", "reply"]


async def test_keys_can_be_pressed_at_fixed_times_even_while_speaking(fake):
    gateway, server = fake
    result = await simulate_call(server.url, [Turn(audio=tone(1.0), when="now")],
                                 auth_token=TOKEN, realtime=False, tail=2, dtmf_at=[(0.5, "4*")])
    # Keys go out once their time has come, 200 ms apart, between the audio frames.
    assert gateway.media_before("dtmf", '"4"') == 25
    assert gateway.media_before("dtmf", '"*"') == 35
    assert [e.detail for e in result.events if e.kind == "dtmf"] == ["4", "*"]


async def test_the_gateway_hanging_up_ends_the_simulation(fake):
    gateway, server = fake
    gateway.hang_up_after_reply = True
    result = await simulate_call(server.url, [Turn(audio=tone(0.3), when="now")],
                                 auth_token=TOKEN, realtime=False, tail=5)
    assert result.close_code == 1000
    assert gateway.events("stop") == []
    closed = result.times("gateway_closed")
    # Audio still buffered when the websocket closes is never played (goodbyes get cut off).
    assert closed and result.times("bot_audio_stop")[-1] <= closed[0]
    assert "reply" not in result.marks


REDIRECT = '<Redirect method="POST">http://{host}/webhook/twilio/next?step=1</Redirect>'
NEW_STREAM = ('<Response><Connect><Stream url="ws://{host}/webhook/twilio/stream">'
              '<Parameter name="callSid" value="{CallSid}"/><Parameter name="leg" value="2"/>'
              '</Stream></Connect></Response>')


async def test_when_the_gateway_drops_the_stream_the_redirect_brings_a_new_one(fake):
    gateway, server = fake
    gateway.hang_up_after_reply = True  # the first stream ends after one reply
    gateway.after_connect = REDIRECT.replace("{host}", server.url.removeprefix("http://"))
    gateway.next_documents = [NEW_STREAM]
    result = await simulate_call(server.url, [Turn(audio=tone(0.3)), Turn(audio=tone(0.3))],
                                 auth_token=TOKEN, realtime=False, tail=3)

    # Twilio's request for the Redirect: signed over its whole URL, the call still in progress.
    ((url, form),) = gateway.next_requests
    assert url.endswith("/webhook/twilio/next?step=1")
    assert (form["CallSid"], form["CallStatus"]) == (result.call_sid, "in-progress")
    first, second = result.stream_sids
    assert first != second
    starts = gateway.events("start")
    assert [m["start"]["customParameters"]["leg"] for m in starts] == ["1", "2"]
    assert [m["start"]["callSid"] for m in starts] == [result.call_sid] * 2
    assert [m["streamSid"] for m in starts] == [first, second]
    # The second turn is said on the second stream, after its greeting played.
    second_stream = next(e.t for e in result.events if e.kind == "stream_start"
                         and second in e.detail)
    assert result.times("caller_speech_start")[1] > second_stream
    assert result.marks == ["greeting", "greeting", "reply"]
    # (fast mode: the clock stands still between the streams)
    assert result.times("gateway_closed")[0] <= result.times("redirect")[0] <= second_stream
    assert result.outcome == "the caller hung up" and result.close_code is None
    assert result.latencies[1] is not None  # the second stream's reply was heard
    assert "call: the caller hung up" in result.timeline()


async def test_the_twiml_after_the_stream_is_reported_where_the_simulation_ends(fake):
    gateway, server = fake
    gateway.hang_up_after_reply = True
    gateway.after_connect = REDIRECT.replace("{host}", server.url.removeprefix("http://"))
    gateway.next_documents = ["<Response><Say>Le paso.</Say><Dial action=\"x\">"
                              "<Number>+34911234567</Number></Dial></Response>"]
    result = await simulate_call(server.url, [Turn(audio=tone(0.3)), Turn(audio=tone(0.3))],
                                 auth_token=TOKEN, realtime=False, tail=3)
    assert result.outcome == "<Dial> +34911234567"
    assert [e.detail for e in result.events if e.kind == "say"] == ["Le paso."]
    assert len(result.stream_sids) == 1 and len(result.latencies) == 1  # the 2nd turn: no line
    assert result.close_code == 1000


async def test_not_following_stops_when_the_stream_ends(fake):
    gateway, server = fake
    gateway.hang_up_after_reply = True
    gateway.after_connect = REDIRECT.replace("{host}", server.url.removeprefix("http://"))
    result = await simulate_call(server.url, [Turn(audio=tone(0.3), when="now")],
                                 auth_token=TOKEN, realtime=False, tail=3, follow=False)
    assert gateway.next_requests == [] and result.outcome.startswith("the stream ended")


async def test_a_gateway_that_redirects_forever_is_reported(fake):
    gateway, server = fake
    gateway.hang_up_after_reply = True
    gateway.after_connect = REDIRECT.replace("{host}", server.url.removeprefix("http://"))
    gateway.next_documents = ["<Response>" + REDIRECT + "</Response>"]
    with pytest.raises(SimulationError, match="loops"):
        await simulate_call(server.url, [Turn(audio=tone(0.3), when="now")], auth_token=TOKEN,
                            realtime=False, tail=3)


async def test_messages_twilio_would_reject_are_reported(fake):
    gateway, server = fake
    gateway.misbehave = True
    result = await simulate_call(server.url, [Turn(digits="5", when="now")], auth_token=TOKEN,
                                 realtime=False, tail=0.5)
    assert len(result.protocol_errors) == 2
    assert "31950" in result.protocol_errors[0] and "streamSid" in result.protocol_errors[1]


async def test_a_wrong_token_is_refused_by_the_gateway(fake):
    _, server = fake
    with pytest.raises(SimulationError, match="403"):
        await simulate_call(server.url, [Turn(when="now")], auth_token="wrong", realtime=False)


async def test_behind_a_public_url_it_signs_the_public_urls_and_connects_locally():
    gateway = FakeGateway(public_url="https://voice.example.test")
    with_server = ServerThread(gateway.app()).start()
    try:
        result = await simulate_call(
            with_server.url, [Turn(digits="1", when="now")], auth_token=TOKEN, realtime=False,
            public_url="https://voice.example.test", tail=0.2)
    finally:
        with_server.stop()
    assert 'url="wss://voice.example.test/webhook/twilio/stream"' in result.twiml
    assert [m["dtmf"]["digit"] for m in gateway.events("dtmf")] == ["1"]


def test_the_cli_writes_what_the_caller_heard(fake, tmp_path, capsys):
    gateway, server = fake
    caller = tmp_path / "caller.wav"
    with wave.open(str(caller), "wb") as out:  # 16 kHz stereo: the simulator converts it
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(16000)
        pcm = np.repeat(np.frombuffer(mulaw.decode(tone(0.5)), np.int16), 2)
        out.writeframes(np.repeat(pcm, 2).tobytes())
    heard = tmp_path / "heard.wav"
    code = cli.main(["simulate", "--url", server.url, "--auth-token", TOKEN, "--wav", str(caller),
                     "--dtmf", "9", "--fast", "--tail", "3", "--out", str(heard)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "caller_speech_start" in printed and "turn latencies" in printed
    with wave.open(str(heard), "rb") as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (8000, 1, 2)
        assert wav.getnframes() > 8000 * 1.5
    assert [m["dtmf"]["digit"] for m in gateway.events("dtmf")] == ["9"]


def test_load_wav_converts_any_pcm_wav_to_8khz_mulaw(tmp_path):
    path = tmp_path / "x.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(1)
        out.setframerate(22050)
        out.writeframes(bytes([128]) * 22050 + bytes([255]) * 2205)  # 1 s silence, 0.1 s full scale
    audio = load_wav(path)
    assert len(audio) == 8800
    assert mulaw.rms(mulaw.decode(audio[:7800])) < 5
    assert mulaw.rms(mulaw.decode(audio[8100:8700])) > 30000


def test_speech_segments_join_short_pauses():
    audio = mulaw.silence(800) + tone(0.3) + mulaw.silence(1600) + tone(0.2) + mulaw.silence(8000)
    assert speech_segments(audio) == [(0.1, pytest.approx(0.8))]
    assert speech_segments(audio, hangover=0.1) == [(0.1, pytest.approx(0.4)),
                                                    (pytest.approx(0.6), pytest.approx(0.8))]
    assert speech_segments(mulaw.silence(8000)) == []


def test_playout_plays_in_order_and_clear_truncates():
    playout = Playout()
    playout.add(0.0, tone(0.5))
    playout.mark(0.1, "a")
    playout.add(0.2, tone(0.5))  # queued behind the first: plays 0.5..1.0
    playout.mark(0.2, "b")
    assert playout.due_marks(0.49) == [] and playout.due_marks(0.5) == ["a"]
    assert playout.clear(0.7) == ["b"] and not playout.buffered(0.7)
    assert playout.spans() == [(0.0, 0.7)]
    playout.add(1.5, tone(0.1))
    assert playout.spans() == [(0.0, 0.7), (1.5, 1.6)]
    assert len(playout.render(2.0)) == 16000
