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

import argparse
import asyncio
import base64
import json
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import httpx
import websockets
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import connect

from app.config import ConfigError, load_settings
from audio import mulaw, wav

RATE = 8000
FRAME_BYTES = 160
FRAME_SECONDS = FRAME_BYTES / RATE
DIGIT_GAP_SECONDS = 0.2
VOICE_PATH = "/webhook/twilio/voice"


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
        wav.write(path, self.heard_pcm16(), RATE)

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


@dataclass(slots=True)
class Segment:
    """One `media` message of the gateway as played: from sample `start` of the stream."""

    start: int
    audio: bytes
    arrival: float  # stream seconds when it was received

    @property
    def stop(self) -> int:
        return self.start + len(self.audio)


class Playout:
    """Twilio's output buffer on the simulator's clock (in samples, so nothing drifts)."""

    def __init__(self) -> None:
        self.segments: list[Segment] = []
        self.end = 0  # sample at which everything buffered has played
        self.pending: list[tuple[int, str]] = []  # (due sample, mark name)

    def add(self, now: float, audio: bytes) -> None:
        start = max(round(now * RATE), self.end)
        self.segments.append(Segment(start, audio, now))
        self.end = start + len(audio)

    def mark(self, now: float, name: str) -> None:
        self.pending.append((max(round(now * RATE), self.end), name))

    def due_marks(self, now: float) -> list[str]:
        due = [name for at, name in self.pending if at <= round(now * RATE)]
        self.pending = self.pending[len(due):]
        return due

    def clear(self, now: float) -> list[str]:
        """Drop what has not played yet; every pending mark is due at once."""
        self.cut(now)
        marks, self.pending = [name for _, name in self.pending], []
        return marks

    def cut(self, now: float) -> None:
        at = round(now * RATE)
        self.segments = [s for s in self.segments if s.start < at]
        for s in self.segments:
            s.audio = s.audio[:at - s.start]
        self.end = min(self.end, at)

    def buffered(self, now: float) -> bool:
        return self.end > round(now * RATE)

    def quiet_for(self, now: float) -> float:
        return now - self.end / RATE

    def spoke_since(self, t: float) -> bool:
        return any(s.arrival >= t for s in self.segments)

    def playing_since(self, t: float, now: float) -> bool:
        at = round(now * RATE)
        return any(s.arrival >= t and s.start <= at < s.stop for s in self.segments)

    def spans(self, gap: float = 0.1) -> list[tuple[float, float]]:
        """Stretches of played bot audio; gaps under `gap` seconds count as one stretch."""
        spans: list[list[int]] = []
        for s in self.segments:
            if not s.audio:
                continue
            if spans and s.start - spans[-1][1] < gap * RATE:
                spans[-1][1] = max(spans[-1][1], s.stop)
            else:
                spans.append([s.start, s.stop])
        return [(a / RATE, b / RATE) for a, b in spans]

    def render(self, until: float) -> bytes:
        """The played audio from the start of the stream to `until`, silence in the gaps."""
        out = bytearray(mulaw.silence(round(until * RATE)))
        for s in self.segments:
            out[s.start:s.stop] = s.audio
        return bytes(out)


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


def _sid(prefix: str) -> str:
    return prefix + uuid.uuid4().hex


def _websocket_address(stream_url: str, base_url: str) -> str:
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


async def simulate_call(
    url: str,
    turns: Sequence[Turn],
    *,
    auth_token: str = "",
    public_url: str | None = None,
    from_number: str = "+34600000001",
    to_number: str = "+34910000000",
    account_sid: str | None = None,
    call_sid: str | None = None,
    realtime: bool = True,
    tail: float = 15.0,
    settle: float = 0.8,
    dtmf_at: Sequence[tuple[float, str]] = (),
    speech_threshold: int = 300,
) -> SimulationResult:
    """Place one call on the gateway at `url` and play `turns`; then wait up to `tail` seconds
    for the bot to answer the last turn and finish playing, and hang up (`stop`).

    `public_url` is the base URL the gateway believes Twilio reaches it at (its
    server.public_url) and signs the webhook; `dtmf_at` presses keys at fixed stream times.
    """
    base = url.rstrip("/")
    validator = RequestValidator(auth_token)
    account_sid = account_sid or _sid("AC")
    call_sid = call_sid or _sid("CA")
    stream_sid = _sid("MZ")
    params = {
        "AccountSid": account_sid, "ApiVersion": "2010-04-01", "CallSid": call_sid,
        "CallStatus": "ringing", "Called": to_number, "Caller": from_number,
        "Direction": "inbound", "From": from_number, "To": to_number,
    }
    signed = (public_url or base).rstrip("/") + VOICE_PATH
    async with httpx.AsyncClient(trust_env=False, timeout=30) as http:
        response = await http.post(base + VOICE_PATH, data=params, headers={
            "X-Twilio-Signature": validator.compute_signature(signed, params)})
    if response.status_code != 200:
        raise SimulationError(
            f"voice webhook answered HTTP {response.status_code}: {response.text[:200]}")
    stream_url, custom = parse_twiml(response.text)

    clock = _Clock(realtime)
    playout = Playout()
    events: list[Event] = []
    errors: list[str] = []
    echo_now: list[str] = []
    sequence = 0

    def record(kind: str, detail: str = "", t: float | None = None) -> None:
        events.append(Event(clock.now() if t is None else t, kind, detail))

    def message(event: str, **body: object) -> str:
        nonlocal sequence
        sequence += 1
        return json.dumps({"event": event, "sequenceNumber": str(sequence),
                           "streamSid": stream_sid, **body})

    async with connect(
        _websocket_address(stream_url, base), proxy=None, compression=None, max_size=None,
        additional_headers={"X-Twilio-Signature": validator.compute_signature(stream_url, {})},
    ) as ws:

        async def receive() -> None:
            async for data in ws:
                now = clock.now()
                if isinstance(data, bytes):
                    errors.append(f"t={now:.2f}s binary frame (Twilio error 31950)")
                    continue
                try:
                    msg = json.loads(data)
                    event = msg["event"]
                    if msg.get("streamSid") != stream_sid:
                        raise ValueError(f"streamSid {msg.get('streamSid')!r}")
                    if event == "media":
                        playout.add(now, base64.b64decode(msg["media"]["payload"], validate=True))
                    elif event == "mark":
                        playout.mark(now, str(msg["mark"]["name"]))
                    elif event == "clear":
                        record("clear", t=now)
                        echo_now.extend(playout.clear(now))
                    else:
                        raise ValueError(f"unknown event {event!r}")
                except (ValueError, KeyError, TypeError) as exc:
                    errors.append(
                        f"t={now:.2f}s invalid message (Twilio error 31951): {exc}: {data[:120]}")

        scheduled = sorted(
            (at + i * DIGIT_GAP_SECONDS, d) for at, keys in dtmf_at for i, d in enumerate(keys))

        async def frame(audio: bytes | None = None) -> None:
            """Send one 20 ms frame (silence by default), after due marks and key presses."""
            idle = audio is None and not playout.buffered(clock.now())
            await clock.wait_next_frame(idle)
            now = clock.now()
            for name in [*echo_now, *playout.due_marks(now)]:
                await ws.send(message("mark", mark={"name": name}))
                record("mark", name)
            echo_now.clear()
            while scheduled and scheduled[0][0] <= now:
                digit = scheduled.pop(0)[1]
                await ws.send(message("dtmf", dtmf={"track": "inbound_track", "digit": digit}))
                record("dtmf", digit)
            chunk = clock.frames + 1
            await ws.send(message("media", media={
                "track": "inbound", "chunk": str(chunk), "timestamp": str(clock.frames * 20),
                "payload": base64.b64encode(audio or mulaw.silence(FRAME_BYTES)).decode()}))
            clock.frames = chunk

        def bot_idle(since: float) -> bool:
            now = clock.now()
            return (playout.spoke_since(since) and playout.quiet_for(now) >= settle
                    and not playout.pending and not echo_now)

        async def wait(condition: Callable[[], bool], limit: float) -> None:
            start = clock.now()
            while not condition() and clock.now() - start < limit:
                await frame()

        await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await ws.send(message("start", start={
            "accountSid": account_sid, "streamSid": stream_sid, "callSid": call_sid,
            "tracks": ["inbound"], "customParameters": custom,
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": RATE, "channels": 1}}))
        clock.t0 = time.monotonic()
        record("call_start", f"{call_sid} {stream_sid}")
        receiver = asyncio.create_task(receive())
        latencies: list[float | None] = []
        ends: list[float] = []
        hung_up = False
        try:
            since = 0.0
            for turn in turns:
                if turn.when == "bot_idle":
                    await wait(lambda: bot_idle(since), turn.wait_limit)
                elif turn.when == "bot_speaking":
                    await wait(lambda: playout.playing_since(since, clock.now()), turn.wait_limit)
                await wait(lambda: False, turn.delay)
                for raw in turn.raw:
                    await ws.send(raw)
                    record("raw_sent", repr(raw[:40]))
                offset = clock.frames * FRAME_SECONDS
                segments = speech_segments(turn.audio, speech_threshold)
                for start, end in segments:
                    record("caller_speech_start", t=offset + start)
                    record("caller_speech_end", t=offset + end)
                padded = turn.audio + mulaw.silence(-len(turn.audio) % FRAME_BYTES)
                for i in range(0, len(padded), FRAME_BYTES):
                    await frame(padded[i:i + FRAME_BYTES])
                if turn.digits:
                    now = clock.now()
                    scheduled.extend(
                        (now + i * DIGIT_GAP_SECONDS, d) for i, d in enumerate(turn.digits))
                    scheduled.sort()
                    await wait(lambda: not scheduled, len(turn.digits) * DIGIT_GAP_SECONDS + 1)
                ends.append(offset + segments[-1][1] if segments else clock.now())
                since = ends[-1]  # a reply may start while trailing silence is still sent
                if turn.hang_up:
                    hung_up = True
                    break
            if not hung_up:
                await wait(lambda: not scheduled and bot_idle(since), tail)
            playout.cut(clock.now())  # what would still play after hanging up is never heard
            await ws.send(message("stop", stop={"accountSid": account_sid, "callSid": call_sid}))
            record("stop_sent")
            await ws.close()
        except websockets.ConnectionClosed:
            pass
        finally:
            receiver.cancel()
            await asyncio.gather(receiver, return_exceptions=True)
        close_code = None
        if not any(e.kind == "stop_sent" for e in events):
            close_code = ws.close_code
            playout.cut(clock.now())
            record("gateway_closed", f"code {close_code}")
        duration = clock.now()
        # Speech the caller never got to say (the gateway hung up first) did not happen.
        events = [e for e in events if e.t <= duration]

    for start, stop in playout.spans():
        events.append(Event(start, "bot_audio_start"))
        events.append(Event(stop, "bot_audio_stop", f"{stop - start:.2f}s"))
    for end in ends:
        first = next((s.start / RATE for s in playout.segments if s.audio and s.arrival >= end),
                     None)
        latencies.append(None if first is None else first - end)
    events.sort(key=lambda e: e.t)
    return SimulationResult(call_sid, stream_sid, response.text, playout.render(duration), events,
                            latencies, errors, close_code, duration, clock.t0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wav", help="caller audio (any PCM WAV; converted to 8 kHz mu-law)")
    parser.add_argument("--dtmf", default="", help="keys to press, e.g. 1234#")
    parser.add_argument("--dtmf-at", type=float, help="press the keys at this stream second "
                        "instead of after the audio")
    parser.add_argument("--out", help="write what the caller heard to this WAV (8 kHz, 16-bit)")
    parser.add_argument("--url", default="http://127.0.0.1:5001",
                        help="where the gateway listens (default %(default)s)")
    parser.add_argument("--public-url", help="the gateway's server.public_url, to sign the "
                        "webhook as Twilio would (default: config.yaml/environment, else --url)")
    parser.add_argument("--auth-token", default="", help="Twilio auth token the gateway validates "
                        "with (default: twilio.auth_token from config.yaml/environment)")
    parser.add_argument("--from", dest="from_number", default="+34600000001")
    parser.add_argument("--to", dest="to_number", default="+34910000000")
    parser.add_argument("--fast", action="store_true",
                        help="send audio as fast as possible; wait in real time only for the "
                        "gateway")
    parser.add_argument("--tail", type=float, default=15.0,
                        help="most seconds to wait for the bot to answer and finish "
                        "(default %(default)s)")
    parser.add_argument("--no-wait-greeting", action="store_true",
                        help="speak at once instead of after the greeting has played")


def run(args: argparse.Namespace) -> int:
    if not args.wav and not args.dtmf:
        print("simulate: give --wav and/or --dtmf", file=sys.stderr)
        return 2
    try:
        audio = load_wav(args.wav) if args.wav else b""
    except (OSError, SimulationError) as exc:
        print(f"simulate: cannot read {args.wav}: {exc}", file=sys.stderr)
        return 2
    auth_token, public_url = args.auth_token, args.public_url
    if not auth_token or public_url is None:
        try:  # sign like the gateway configured here expects (config.yaml + environment)
            settings = load_settings()
        except ConfigError as exc:
            print(f"simulate: configuration error: {exc}", file=sys.stderr)
            return 2
        auth_token = auth_token or settings.twilio.auth_token
        if public_url is None:
            public_url = settings.server.public_url or None
    dtmf_at = [(args.dtmf_at, args.dtmf)] if args.dtmf_at is not None and args.dtmf else []
    turn = Turn(audio=audio, digits="" if dtmf_at else args.dtmf, wait_limit=10.0,
                when="now" if args.no_wait_greeting else "bot_idle")
    try:
        result = asyncio.run(simulate_call(
            args.url, [turn], auth_token=auth_token, public_url=public_url,
            from_number=args.from_number, to_number=args.to_number,
            realtime=not args.fast, tail=args.tail, dtmf_at=dtmf_at))
    except (SimulationError, OSError, httpx.HTTPError, websockets.InvalidHandshake) as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return 1
    if args.fast:
        print("(fast mode: times are stream time, not what a caller would wait)")
    print(result.timeline())
    if args.out:
        result.write_wav(args.out)
        audible = result.audible_seconds()
        print(f"heard {result.duration:.2f}s ({audible:.2f}s of it audible) -> {args.out}")
    if result.close_code not in (None, 1000):
        print(f"simulate: the gateway closed the stream with code {result.close_code}",
              file=sys.stderr)
        return 1
    return 1 if result.protocol_errors else 0
