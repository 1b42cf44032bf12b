"""Play a caller against a running gateway, exactly as Twilio would, and report what was heard.

The simulator is the Twilio side of a call: it posts the signed voice webhook, runs the TwiML
(app/call_flow.py reads it), opens the signed websocket of its <Stream> and streams the caller's
audio as 20 ms mu-law `media` frames. It also plays Twilio's output role: the gateway's audio is
buffered and "played" on the simulator's clock, marks are echoed once the audio sent before them
has played, and `clear` drops what is buffered and echoes pending marks at once. When a stream
ends without the caller hanging up (the gateway closed it, or the connection dropped), the TwiML
after `</Connect>` runs as Twilio runs it: the signed `<Redirect>`, then a new stream, a
`<Gather>`, a `<Dial>`. Times are the call's seconds on that clock, from its first stream: wall
time in real-time mode; with `fast`, the clock skips ahead while the caller talks or audio is
buffered and only waits in real time for the gateway.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx
import websockets
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import ClientConnection, connect

from app import call_flow
from app.call_report import Event, SimulationResult
from app.twiml import VOICE_PATH
from audio import mulaw, wav
from audio.framing import FRAME_BYTES, FRAME_SECONDS, SAMPLE_RATE
from streaming.protocol import ProtocolError
from streaming.tasks import cancel_and_wait
from streaming.twilio_side import Playout, TwilioSide, new_sid

DIGIT_GAP_SECONDS = 0.2
MAX_DOCUMENTS = 12  # TwiML documents one simulated call may run before it is called a loop


class SimulationError(Exception):
    """The gateway did not behave like a Twilio endpoint (HTTP error, TwiML without a stream...)."""


@dataclass(frozen=True, slots=True)
class Turn:
    """One thing the caller does, once the previous one is over and `when` holds (+ `delay`)."""

    audio: bytes = b""  # mu-law 8 kHz mono to speak
    digits: str = ""  # keys pressed after the audio, DIGIT_GAP_SECONDS apart
    # "Since the previous turn" means since the end of its speech (or its last key), or since
    # the stream began when the call is on a new stream (it was resumed):
    # bot_idle: the bot has spoken since the previous turn and finished playing;
    # bot_speaking: bot audio sent since the previous turn is playing now (barge-in).
    when: Literal["bot_idle", "bot_speaking", "now"] = "bot_idle"
    delay: float = 0.0
    wait_limit: float = 15.0  # most seconds to wait for `when`; the turn then goes ahead anyway
    raw: tuple[str | bytes, ...] = ()  # websocket messages sent verbatim first (bad-input tests)
    hang_up: bool = False  # send `stop` right after this turn: the caller hangs up


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

    def resync(self) -> None:
        """A new stream after a gap without frames (a Redirect): real time does not send the
        frames of the gap in a burst, it goes on from now."""
        if self.realtime:
            self.frames = int((time.monotonic() - self.t0) / FRAME_SECONDS)

    async def wait_next_frame(self, idle: bool) -> None:
        """A frame is sent once its 20 ms have been captured, as a phone would."""
        if self.realtime:
            due = self.t0 + (self.frames + 1) * FRAME_SECONDS
            await asyncio.sleep(max(0.0, due - time.monotonic()))
        else:
            await asyncio.sleep(FRAME_SECONDS if idle else 0)


def on_gateway(url: str, base_url: str) -> str:
    """Where to send a request for `url` (TwiML's, the public one): its path and query on the
    gateway's actual address, ws(s) for a websocket."""
    target, base = urlsplit(url), urlsplit(base_url)
    scheme = base.scheme
    if target.scheme in ("ws", "wss"):
        scheme = "wss" if base.scheme == "https" else "ws"
    return urlunsplit((scheme, base.netloc, target.path, target.query, ""))


def read_twiml(twiml: str) -> list[call_flow.Verb]:
    """The verbs of a TwiML document as Twilio runs them; SimulationError when Twilio would
    reject it."""
    try:
        return call_flow.read(twiml)
    except call_flow.TwimlError as exc:
        raise SimulationError(f"the gateway answered TwiML Twilio rejects: {exc}") from None


def parse_twiml(twiml: str) -> tuple[str, dict[str, str]]:
    """The <Connect><Stream> URL and its <Parameter>s; SimulationError when there is none."""
    for verb in read_twiml(twiml):
        if isinstance(verb, call_flow.Stream):
            return verb.url, verb.parameters
    raise SimulationError(f"TwiML has no <Connect><Stream url>: {twiml}")


@dataclass
class SimulatedCall:
    """One call placed on the gateway at `url`, playing `turns`; `run` returns what happened.

    `public_url` is the base URL the gateway believes Twilio reaches it at (its
    server.public_url) and signs the webhooks; `dtmf_at` presses keys at fixed stream times; after
    the last turn the caller waits up to `tail` seconds for the bot to answer and finish playing
    (silence of `settle` seconds), then hangs up (`stop`). When a stream ends and the caller did
    not hang up, the TwiML after it runs as Twilio runs it (`follow`): a `<Redirect>` is posted,
    signed, to the gateway at `url`; a new `<Connect><Stream>` plays the turns left (one the
    caller was saying when the line dropped is lost); `<Gather>`, `<Dial>` or `<Hangup>` end the
    simulation, reported in `outcome`.
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
    follow: bool = True

    def __post_init__(self) -> None:
        self.base = self.url.rstrip("/")
        self.validator = RequestValidator(self.auth_token)
        self.call_sid = self.call_sid or new_sid("CA")
        self.account_sid = self.account_sid or new_sid("AC")
        self.playout = Playout()  # the caller's ear, whichever stream the audio came on
        self.streams: list[TwilioSide] = []
        self.clock = _Clock(self.realtime)
        self.events: list[Event] = []
        self.errors: list[str] = []
        self.ends: list[float] = []  # per turn said: end of its speech (or its last key)
        self.said = 0  # turns begun, on whichever stream
        self.answered_at = 0.0  # time.monotonic() when the voice webhook answered
        self.first_audio_at: float | None = None  # time.monotonic() of the first bot audio
        self.keys = sorted((at + i * DIGIT_GAP_SECONDS, d)
                           for at, keys in self.dtmf_at for i, d in enumerate(keys))
        self.close_code: int | None = None
        self.outcome = ""

    async def run(self) -> SimulationResult:
        signed = (self.public_url or self.base).rstrip("/") + VOICE_PATH
        twiml = await self._request(signed, "POST", "ringing")
        self.answered_at = time.monotonic()
        await self._follow(twiml)
        return self._result(twiml)

    async def _follow(self, twiml: str) -> None:
        """Run TwiML as Twilio does, document after document, until the call leaves the gateway."""
        for _ in range(MAX_DOCUMENTS):
            for verb in read_twiml(twiml):
                if isinstance(verb, call_flow.Stream):
                    if await self._stream(verb):
                        self.outcome = "the caller hung up"
                        return
                    if not self.follow:
                        self.outcome = "the stream ended (the TwiML after it was not followed)"
                        return
                elif isinstance(verb, call_flow.Redirect):
                    self._record("redirect", verb.url)
                    twiml = await self._request(verb.url, verb.method, "in-progress")
                    break
                elif isinstance(verb, call_flow.Say):
                    self._record("say", verb.text)
                else:  # Twilio's recognition, another phone, or the end: the simulation stops
                    self.outcome = call_flow.describe(verb)
                    self._record("twiml", self.outcome)
                    return
            else:
                self.outcome = "the TwiML ended: Twilio hangs up"
                return
        raise SimulationError(f"{MAX_DOCUMENTS} TwiML documents in one call: the gateway loops")

    async def _request(self, url: str, method: str, status: str) -> str:
        """A webhook request as Twilio makes it: to `url` (TwiML's, the public one) on the
        gateway's actual address, signed over `url` and the call's parameters."""
        params = {
            "AccountSid": self.account_sid or "", "ApiVersion": "2010-04-01",
            "CallSid": self.call_sid or "", "CallStatus": status, "Called": self.to_number,
            "Caller": self.from_number, "Direction": "inbound", "From": self.from_number,
            "To": self.to_number,
        }
        if method == "GET":  # the parameters go in the query, which the signature covers
            url = f"{url}{'&' if '?' in url else '?'}{urlencode(params)}"
            params = {}
        headers = {"X-Twilio-Signature": self.validator.compute_signature(url, params)}
        async with httpx.AsyncClient(trust_env=False, timeout=30) as http:
            response = await http.request(method, on_gateway(url, self.base), data=params or None,
                                          headers=headers)
        if response.status_code != 200:
            raise SimulationError(f"{urlsplit(url).path} answered HTTP {response.status_code}: "
                                  f"{response.text[:200]}")
        return response.text

    async def _stream(self, verb: call_flow.Stream) -> bool:
        """One media stream of the call; True when the caller hung up on it."""
        side = TwilioSide(call_sid=self.call_sid or "", account_sid=self.account_sid or "",
                          from_number=self.from_number, to_number=self.to_number,
                          custom_parameters=verb.parameters, playout=self.playout)
        signature = self.validator.compute_signature(verb.url, {})
        try:
            ws = await connect(on_gateway(verb.url, self.base), proxy=None, compression=None,
                               max_size=None, additional_headers={"X-Twilio-Signature": signature})
        except (OSError, websockets.InvalidHandshake) as exc:  # Twilio goes on with the TwiML
            if not self.streams:
                raise
            self._record("stream_failed", repr(exc))
            return False
        async with ws:
            self.ws: ClientConnection = ws
            self.side = side
            await ws.send(side.connected())
            await ws.send(side.start())
            if self.streams:
                self.clock.resync()
            else:
                self.clock.t0 = time.monotonic()
            self.streams.append(side)
            self.close_code = None
            self._record("stream_start", f"{side.call_sid} {side.stream_sid}")
            receiver = asyncio.create_task(self._receive())
            hung_up = False
            try:
                hung_up = await self._converse()
            except websockets.ConnectionClosed:
                pass
            finally:
                await cancel_and_wait(receiver)
            if not hung_up:
                self.close_code = ws.close_code
                self.playout.clear(self.clock.now())  # Twilio's buffer goes with the stream
                self._record("gateway_closed", f"code {ws.close_code}")
            return hung_up

    async def _converse(self) -> bool:
        """The turns left, on this stream; True once the caller hung up."""
        since = self.clock.now()  # a turn that waits for the bot waits for it on this stream
        while self.said < len(self.turns):
            turn = self.turns[self.said]
            if turn.when == "bot_idle":
                await self._wait(lambda: self._bot_idle(since), turn.wait_limit)
            elif turn.when == "bot_speaking":
                await self._wait(lambda: self.playout.playing_since(since, self.clock.now()),
                                 turn.wait_limit)
            await self._wait(lambda: False, turn.delay)
            self.said += 1  # said from here on, even if the line drops under it
            since = await self._play(turn)  # a reply may start while trailing silence is sent
            if turn.hang_up:
                break
        else:
            await self._wait(lambda: not self.keys and self._bot_idle(since), self.tail)
        self.playout.cut(self.clock.now())  # what would play after hanging up is unheard
        await self.ws.send(self.side.stop())
        self._record("stop_sent")
        await self.ws.close()
        return True

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
        await clock.wait_next_frame(idle=audio is None and not self.playout.buffered(clock.now()))
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
                event = self.side.receive(data, now)
                if event == "clear":
                    self._record("clear", t=now)
                elif event == "media" and self.first_audio_at is None:
                    self.first_audio_at = time.monotonic()
            except ProtocolError as exc:
                if exc.reason == "binary_frame":
                    self.errors.append(f"t={now:.2f}s binary frame (Twilio error 31950)")
                else:
                    self.errors.append(f"t={now:.2f}s invalid message (Twilio error 31951): "
                                       f"{exc.detail}: {data[:120]!s}")

    def _bot_idle(self, since: float) -> bool:
        """The bot has spoken since `since` and its audio has played out, marks echoed."""
        playout = self.playout
        return (playout.spoke_since(since) and playout.quiet_for(self.clock.now()) >= self.settle
                and not self.side.echoing)

    async def _wait(self, condition: Callable[[], bool], limit: float) -> None:
        start = self.clock.now()
        while not condition() and self.clock.now() - start < limit:
            await self._frame()

    def _record(self, kind: str, detail: str = "", t: float | None = None) -> None:
        self.events.append(Event(self.clock.now() if t is None else t, kind, detail))

    def _result(self, twiml: str) -> SimulationResult:
        duration = self.clock.now()
        playout = self.playout
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
        first_audio = (None if self.first_audio_at is None
                       else self.first_audio_at - self.answered_at)
        return SimulationResult(
            self.call_sid or "", [side.stream_sid for side in self.streams], twiml,
            playout.render(duration), events, latencies, self.errors, self.close_code, duration,
            outcome=self.outcome, started_at=self.clock.t0, ends=list(self.ends),
            first_audio=first_audio)


async def simulate_call(url: str, turns: Sequence[Turn], **options: Any) -> SimulationResult:
    """Place one call and play `turns` (see SimulatedCall for the options)."""
    return await SimulatedCall(url, turns, **options).run()
