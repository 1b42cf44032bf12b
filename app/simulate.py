"""Play a caller against a running gateway, exactly as Twilio would, and report what was heard.

The simulator is the Twilio side of a call: it posts the signed voice webhook, follows the TwiML to
the <Stream>, opens the signed websocket and streams the caller's audio as 20 ms mu-law `media`
frames. It also plays Twilio's output role: the gateway's audio is buffered and "played" on the
simulator's clock, marks are echoed once the audio sent before them has played, and `clear` drops
what is buffered and echoes pending marks at once. Times are stream seconds on that clock: wall
time in real-time mode; with `fast`, the clock skips ahead while the caller talks or audio is
buffered and only waits in real time for the gateway.
"""

from __future__ import annotations

import asyncio
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import httpx
import websockets
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import ClientConnection, connect

from app.twiml import VOICE_PATH
from audio import mulaw, wav
from audio.framing import FRAME_MS, SAMPLE_RATE, chunk_size
from streaming.protocol import ProtocolError
from streaming.tasks import cancel_and_wait
from streaming.twilio_side import TwilioSide, new_sid

FRAME_BYTES = chunk_size(FRAME_MS)
FRAME_SECONDS = FRAME_MS / 1000
DIGIT_GAP_SECONDS = 0.2


class SimulationError(Exception):
    """The gateway did not behave like a Twilio endpoint (HTTP error, TwiML without a stream...)."""


@dataclass(frozen=True, slots=True)
class Turn:
    """One thing the caller does, once the previous one is over and `when` holds (+ `delay`)."""

    audio: bytes = b""  # mu-law 8 kHz mono to speak
    digits: str = ""  # keys pressed after the audio, DIGIT_GAP_SECONDS apart
    # "Since the previous turn" means since the end of its speech (or its last key):
    # bot_idle: the bot has spoken since the previous turn and finished playing;
    # bot_speaking: bot audio sent since the previous turn is playing now (barge-in).
    when: Literal["bot_idle", "bot_speaking", "now"] = "bot_idle"
    delay: float = 0.0
    wait_limit: float = 15.0  # most seconds to wait for `when`; the turn then goes ahead anyway
    raw: tuple[str | bytes, ...] = ()  # websocket messages sent verbatim first (bad-input tests)
    hang_up: bool = False  # send `stop` right after this turn: the caller hangs up


@dataclass(frozen=True, slots=True)
class Event:
    t: float
    kind: str
    detail: str = ""


@dataclass
class SimulationResult:
    call_sid: str
    stream_sid: str
    twiml: str
    heard: bytes  # mu-law 8 kHz: the gateway's audio as played, silence where nothing played
    events: list[Event]
    # Per turn: end of the caller's speech (or last key, without speech) -> first bot audio after.
    latencies: list[float | None]
    protocol_errors: list[str]  # what Twilio would reject (binary frames, bad JSON, wrong sid)
    close_code: int | None  # set when the gateway closed the websocket itself
    duration: float
    started_at: float = 0.0  # time.monotonic() at stream time 0 (real time: to compare clocks)

    def times(self, kind: str) -> list[float]:
        return [e.t for e in self.events if e.kind == kind]

    @property
    def marks(self) -> list[str]:
        """Names of the marks echoed back to the gateway, in order."""
        return [e.detail for e in self.events if e.kind == "mark"]

    @property
    def clears(self) -> list[float]:
        return self.times("clear")

    def clear_delays(self) -> list[float]:
        """Per `clear`: seconds since the onset of the caller speech it interrupted."""
        onsets = self.times("caller_speech_start")
        return [t - max(o for o in onsets if o <= t)
                for t in self.clears if onsets and onsets[0] <= t]

    def heard_pcm16(self) -> bytes:
        return mulaw.decode(self.heard)

    def audible_seconds(self, threshold: int = 200) -> float:
        """Seconds of heard audio in 20 ms frames louder than `threshold` RMS."""
        heard = self.heard
        loud = sum(mulaw.level(heard[i:i + FRAME_BYTES]) > threshold
                   for i in range(0, len(heard), FRAME_BYTES))
        return loud * FRAME_SECONDS

    def write_wav(self, path: str | Path) -> None:
        """16-bit PCM at 8 kHz, which every player opens."""
        wav.write(path, self.heard_pcm16(), SAMPLE_RATE)

    def timeline(self) -> str:
        lines = [f"t={e.t:7.2f}s  {e.kind:<20} {e.detail}".rstrip() for e in self.events]
        shown = ", ".join("-" if x is None else f"{x:.2f}s" for x in self.latencies)
        lines.append(f"turn latencies (end of caller speech -> first bot audio): {shown or '-'}")
        if self.clears:
            lines.append("barge-in (caller speech onset -> clear): "
                         + ", ".join(f"{d:.2f}s" for d in self.clear_delays()))
        for error in self.protocol_errors:
            lines.append(f"protocol error: {error}")
        return "\n".join(lines)


def load_wav(path: str | Path) -> bytes:
    """Any PCM or mu-law WAV -> mono 8 kHz mu-law, the way Twilio carries the caller's voice."""
    try:
        return wav.read_mulaw_8k(path)
    except wav.WavError as exc:
        raise SimulationError(f"{path}: {exc}") from None


def speech_segments(
    audio: bytes, threshold: int = 300, hangover: float = 0.4
) -> list[tuple[float, float]]:
    """(start, end) seconds of speech in mu-law audio by frame energy; shorter pauses join."""
    segments: list[list[float]] = []
    for index in range(0, len(audio) // FRAME_BYTES):
        if mulaw.level(audio[index * FRAME_BYTES:(index + 1) * FRAME_BYTES]) <= threshold:
            continue
        start = index * FRAME_SECONDS
        if segments and start - segments[-1][1] < hangover:
            segments[-1][1] = start + FRAME_SECONDS
        else:
            segments.append([start, start + FRAME_SECONDS])
    return [(a, b) for a, b in segments]


class _Clock:
    """Stream seconds. Real time: the wall clock. Fast: 20 ms per frame sent, however fast."""

    def __init__(self, realtime: bool) -> None:
        self.realtime = realtime
        self.frames = 0
        self.t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self.t0 if self.realtime else self.frames * FRAME_SECONDS

    async def wait_next_frame(self, idle: bool) -> None:
        """A frame is sent once its 20 ms have been captured, as a phone would."""
        if self.realtime:
            due = self.t0 + (self.frames + 1) * FRAME_SECONDS
            await asyncio.sleep(max(0.0, due - time.monotonic()))
        else:
            await asyncio.sleep(FRAME_SECONDS if idle else 0)


def websocket_address(stream_url: str, base_url: str) -> str:
    """Where to connect: the Stream URL's path on the gateway's actual address."""
    stream, base = urlsplit(stream_url), urlsplit(base_url)
    scheme = "wss" if base.scheme == "https" else "ws"
    return urlunsplit((scheme, base.netloc, stream.path, stream.query, ""))


def parse_twiml(twiml: str) -> tuple[str, dict[str, str]]:
    """The <Connect><Stream> URL and its <Parameter>s; SimulationError when there is none."""
    try:
        root = ET.fromstring(twiml)
    except ET.ParseError as exc:
        raise SimulationError(f"voice webhook did not answer TwiML: {exc}") from None
    stream = root.find("./Connect/Stream")
    if stream is None or not stream.get("url"):
        raise SimulationError(f"TwiML has no <Connect><Stream url>: {twiml}")
    params = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
    return stream.get("url", ""), params


@dataclass
class SimulatedCall:
    """One call placed on the gateway at `url`, playing `turns`; `run` returns what happened.

    `public_url` is the base URL the gateway believes Twilio reaches it at (its
    server.public_url) and signs the webhook; `dtmf_at` presses keys at fixed stream times; after
    the last turn the caller waits up to `tail` seconds for the bot to answer and finish playing
    (silence of `settle` seconds), then hangs up (`stop`).
    """

    url: str
    turns: Sequence[Turn]
    auth_token: str = ""
    public_url: str | None = None
    from_number: str = "+34600000001"
    to_number: str = "+34910000000"
    account_sid: str | None = None
    call_sid: str | None = None
    realtime: bool = True
    tail: float = 15.0
    settle: float = 0.8
    dtmf_at: Sequence[tuple[float, str]] = ()
    speech_threshold: int = 300

    def __post_init__(self) -> None:
        self.base = self.url.rstrip("/")
        self.validator = RequestValidator(self.auth_token)
        self.side = TwilioSide(call_sid=self.call_sid or new_sid("CA"),
                               account_sid=self.account_sid or new_sid("AC"),
                               from_number=self.from_number, to_number=self.to_number)
        self.clock = _Clock(self.realtime)
        self.events: list[Event] = []
        self.errors: list[str] = []
        self.ends: list[float] = []  # per turn: end of its speech (or its last key)
        self.keys = sorted((at + i * DIGIT_GAP_SECONDS, d)
                           for at, keys in self.dtmf_at for i, d in enumerate(keys))

    async def run(self) -> SimulationResult:
        twiml = await self._voice_webhook()
        stream_url, custom = parse_twiml(twiml)
        self.side.custom_parameters = custom
        signature = self.validator.compute_signature(stream_url, {})
        async with connect(websocket_address(stream_url, self.base), proxy=None,
                           compression=None, max_size=None,
                           additional_headers={"X-Twilio-Signature": signature}) as ws:
            self.ws: ClientConnection = ws
            await ws.send(self.side.connected())
            await ws.send(self.side.start())
            self.clock.t0 = time.monotonic()
            self._record("call_start", f"{self.side.call_sid} {self.side.stream_sid}")
            receiver = asyncio.create_task(self._receive())
            try:
                await self._converse()
            except websockets.ConnectionClosed:
                pass
            finally:
                await cancel_and_wait(receiver)
            close_code = None
            if not any(e.kind == "stop_sent" for e in self.events):
                close_code = ws.close_code
                self.side.playout.cut(self.clock.now())
                self._record("gateway_closed", f"code {close_code}")
        return self._result(twiml, close_code)

    async def _voice_webhook(self) -> str:
        side = self.side
        params = {
            "AccountSid": side.account_sid, "ApiVersion": "2010-04-01",
            "CallSid": side.call_sid, "CallStatus": "ringing", "Called": side.to_number,
            "Caller": side.from_number, "Direction": "inbound", "From": side.from_number,
            "To": side.to_number,
        }
        signed = (self.public_url or self.base).rstrip("/") + VOICE_PATH
        async with httpx.AsyncClient(trust_env=False, timeout=30) as http:
            response = await http.post(self.base + VOICE_PATH, data=params, headers={
                "X-Twilio-Signature": self.validator.compute_signature(signed, params)})
        if response.status_code != 200:
            raise SimulationError(
                f"voice webhook answered HTTP {response.status_code}: {response.text[:200]}")
        return response.text

    async def _converse(self) -> None:
        since = 0.0
        for turn in self.turns:
            if turn.when == "bot_idle":
                await self._wait(lambda: self._bot_idle(since), turn.wait_limit)
            elif turn.when == "bot_speaking":
                await self._wait(lambda: self.side.playout.playing_since(since, self.clock.now()),
                                 turn.wait_limit)
            await self._wait(lambda: False, turn.delay)
            since = await self._play(turn)  # a reply may start while trailing silence is sent
            if turn.hang_up:
                break
        else:
            await self._wait(lambda: not self.keys and self._bot_idle(since), self.tail)
        self.side.playout.cut(self.clock.now())  # what would play after hanging up is unheard
        await self.ws.send(self.side.stop())
        self._record("stop_sent")
        await self.ws.close()

    async def _play(self, turn: Turn) -> float:
        """The caller's part of a turn; returns when their speech (or last key) ended."""
        for raw in turn.raw:
            await self.ws.send(raw)
            self._record("raw_sent", repr(raw[:40]))
        offset = self.clock.frames * FRAME_SECONDS
        segments = speech_segments(turn.audio, self.speech_threshold)
        for start, end in segments:
            self._record("caller_speech_start", t=offset + start)
            self._record("caller_speech_end", t=offset + end)
        padded = turn.audio + mulaw.silence(-len(turn.audio) % FRAME_BYTES)
        for i in range(0, len(padded), FRAME_BYTES):
            await self._frame(padded[i:i + FRAME_BYTES])
        if turn.digits:
            now = self.clock.now()
            self.keys.extend((now + i * DIGIT_GAP_SECONDS, d) for i, d in enumerate(turn.digits))
            self.keys.sort()
            await self._wait(lambda: not self.keys, len(turn.digits) * DIGIT_GAP_SECONDS + 1)
        self.ends.append(offset + segments[-1][1] if segments else self.clock.now())
        return self.ends[-1]

    async def _frame(self, audio: bytes | None = None) -> None:
        """Send one 20 ms frame (silence by default), after due marks and key presses."""
        side, clock, send = self.side, self.clock, self.ws.send
        await clock.wait_next_frame(idle=audio is None and not side.playout.buffered(clock.now()))
        now = clock.now()
        for name in side.due_marks(now):
            await send(side.mark(name))
            self._record("mark", name)
        while self.keys and self.keys[0][0] <= now:
            digit = self.keys.pop(0)[1]
            await send(side.dtmf(digit))
            self._record("dtmf", digit)
        await send(side.media(audio or mulaw.silence(FRAME_BYTES)))
        clock.frames += 1

    async def _receive(self) -> None:
        async for data in self.ws:
            now = self.clock.now()
            try:
                if self.side.receive(data, now) == "clear":
                    self._record("clear", t=now)
            except ProtocolError as exc:
                if exc.reason == "binary_frame":
                    self.errors.append(f"t={now:.2f}s binary frame (Twilio error 31950)")
                else:
                    self.errors.append(f"t={now:.2f}s invalid message (Twilio error 31951): "
                                       f"{exc.detail}: {data[:120]!s}")

    def _bot_idle(self, since: float) -> bool:
        """The bot has spoken since `since` and its audio has played out, marks echoed."""
        playout = self.side.playout
        return (playout.spoke_since(since) and playout.quiet_for(self.clock.now()) >= self.settle
                and not self.side.echoing)

    async def _wait(self, condition: Callable[[], bool], limit: float) -> None:
        start = self.clock.now()
        while not condition() and self.clock.now() - start < limit:
            await self._frame()

    def _record(self, kind: str, detail: str = "", t: float | None = None) -> None:
        self.events.append(Event(self.clock.now() if t is None else t, kind, detail))

    def _result(self, twiml: str, close_code: int | None) -> SimulationResult:
        duration = self.clock.now()
        playout = self.side.playout
        # Speech the caller never got to say (the gateway hung up first) did not happen.
        events = [e for e in self.events if e.t <= duration]
        for start, stop in playout.spans():
            events.append(Event(start, "bot_audio_start"))
            events.append(Event(stop, "bot_audio_stop", f"{stop - start:.2f}s"))
        latencies: list[float | None] = []
        for end in self.ends:
            first = next((s.start / SAMPLE_RATE for s in playout.segments
                          if s.audio and s.arrival >= end), None)
            latencies.append(None if first is None else first - end)
        events.sort(key=lambda e: e.t)
        return SimulationResult(self.side.call_sid, self.side.stream_sid, twiml,
                                playout.render(duration), events, latencies, self.errors,
                                close_code, duration, self.clock.t0)


async def simulate_call(url: str, turns: Sequence[Turn], **options: Any) -> SimulationResult:
    """Place one call and play `turns` (see SimulatedCall for the options)."""
    return await SimulatedCall(url, turns, **options).run()
