"""Twilio's side of a Media Stream, sans I/O: the messages Twilio sends, the gateway's messages
parsed, and Twilio's playout clock.

streaming/protocol.py is the gateway's role on the wire; this is the other role of the same
protocol, for whatever plays Twilio against a gateway: the call simulator (app/simulate.py), the
load generator (bench/) and the tests. They own the sockets and the clock; `TwilioSide` builds
`connected`/`start`/`media`/`dtmf`/`mark`/`stop` numbered as Twilio numbers them, and `receive`
takes the gateway's `media`/`mark`/`clear` into the `Playout`: audio is "played" in order from
when it arrives, a mark is echoed once the audio sent before it has played, and `clear` drops what
has not played and echoes every pending mark at once. Times are the caller's stream seconds; the
playout counts samples, so nothing drifts. A message the gateway should not have sent raises
ProtocolError saying so.
"""

from __future__ import annotations

import uuid
from binascii import a2b_base64, b2a_base64
from dataclasses import dataclass, field
from collections.abc import Collection
from typing import Any

import orjson

from audio import mulaw
from audio.framing import FRAME_BYTES, SAMPLE_RATE
from streaming.protocol import SUPPORTED_ENCODING, ProtocolError

GATEWAY_EVENTS = frozenset({"media", "mark", "clear"})  # what a gateway may send Twilio


def new_sid(prefix: str) -> str:
    """A Twilio-shaped SID: two letters and 32 hex digits."""
    return prefix + uuid.uuid4().hex


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
    """Twilio's output buffer on the caller's clock (in samples, so nothing drifts)."""

    def __init__(self) -> None:
        self.segments: list[Segment] = []
        self.end = 0  # sample at which everything buffered has played
        self.pending: list[tuple[int, str]] = []  # (due sample, mark name)

    def add(self, now: float, audio: bytes) -> None:
        start = max(round(now * SAMPLE_RATE), self.end)
        self.segments.append(Segment(start, audio, now))
        self.end = start + len(audio)

    def mark(self, now: float, name: str) -> None:
        self.pending.append((max(round(now * SAMPLE_RATE), self.end), name))

    def due_marks(self, now: float) -> list[str]:
        due = [name for at, name in self.pending if at <= round(now * SAMPLE_RATE)]
        self.pending = self.pending[len(due):]
        return due

    def clear(self, now: float) -> list[str]:
        """Drop what has not played yet; every pending mark is due at once."""
        self.cut(now)
        marks, self.pending = [name for _, name in self.pending], []
        return marks

    def cut(self, now: float) -> None:
        at = round(now * SAMPLE_RATE)
        self.segments = [s for s in self.segments if s.start < at]
        for s in self.segments:
            s.audio = s.audio[:at - s.start]
        self.end = min(self.end, at)

    def buffered(self, now: float) -> bool:
        return self.end > round(now * SAMPLE_RATE)

    def quiet_for(self, now: float) -> float:
        return now - self.end / SAMPLE_RATE

    def spoke_since(self, t: float) -> bool:
        return any(s.arrival >= t for s in self.segments)

    def playing_since(self, t: float, now: float) -> bool:
        at = round(now * SAMPLE_RATE)
        return any(s.arrival >= t and s.start <= at < s.stop for s in self.segments)

    def spans(self, gap: float = 0.1) -> list[tuple[float, float]]:
        """Stretches of played bot audio; gaps under `gap` seconds count as one stretch."""
        spans: list[list[int]] = []
        for s in self.segments:
            if not s.audio:
                continue
            if spans and s.start - spans[-1][1] < gap * SAMPLE_RATE:
                spans[-1][1] = max(spans[-1][1], s.stop)
            else:
                spans.append([s.start, s.stop])
        return [(a / SAMPLE_RATE, b / SAMPLE_RATE) for a, b in spans]

    def render(self, until: float) -> bytes:
        """The played audio from the start of the stream to `until`, silence in the gaps."""
        out = bytearray(mulaw.silence(round(until * SAMPLE_RATE)))
        for s in self.segments:
            out[s.start:s.stop] = s.audio
        return bytes(out)


@dataclass(slots=True)
class TwilioSide:
    """One stream as Twilio plays it. `sequence`, `chunk` and `timestamp` count what was sent."""

    call_sid: str = field(default_factory=lambda: new_sid("CA"))
    stream_sid: str = field(default_factory=lambda: new_sid("MZ"))
    account_sid: str = field(default_factory=lambda: new_sid("AC"))
    from_number: str = "+34600000001"
    to_number: str = "+34910000000"
    custom_parameters: dict[str, str] | None = None  # None: callSid, from and to, as our TwiML
    # A later stream of the same call plays on into the caller's ear: pass the earlier playout.
    playout: Playout = field(default_factory=Playout)
    sequence: int = field(default=0, init=False)
    chunk: int = field(default=0, init=False)
    timestamp: int = field(default=0, init=False)  # ms of audio sent
    _echo_now: list[str] = field(default_factory=list, init=False, repr=False)

    # -- what Twilio sends ------------------------------------------------------------------------

    def connected(self) -> str:
        return _dump({"event": "connected", "protocol": "Call", "version": "1.0.0"})

    def start(self, **media_format: Any) -> str:
        fmt = {"encoding": SUPPORTED_ENCODING, "sampleRate": SAMPLE_RATE, "channels": 1,
               **media_format}
        params = self.custom_parameters
        if params is None:
            params = {"callSid": self.call_sid, "from": self.from_number, "to": self.to_number}
        return self._numbered("start", start={
            "streamSid": self.stream_sid, "accountSid": self.account_sid,
            "callSid": self.call_sid, "tracks": ["inbound"], "customParameters": params,
            "mediaFormat": fmt})

    def media(self, audio: bytes = mulaw.silence(FRAME_BYTES),
              stream_sid: str | None = None) -> str:
        """One frame of the caller's audio (8 kHz mu-law, 20 ms as Twilio sends them)."""
        self.chunk += 1
        payload = b2a_base64(audio, newline=False).decode("ascii")
        message = self._numbered("media", stream_sid, media={
            "track": "inbound", "chunk": str(self.chunk), "timestamp": str(self.timestamp),
            "payload": payload})
        self.timestamp += len(audio) * 1000 // SAMPLE_RATE
        return message

    def dtmf(self, digit: str) -> str:
        return self._numbered("dtmf", dtmf={"track": "inbound_track", "digit": digit})

    def mark(self, name: str) -> str:
        """The echo of the gateway's mark `name`: what it sent before the mark has played."""
        return self._numbered("mark", mark={"name": name})

    def stop(self) -> str:
        return self._numbered("stop", stop={"accountSid": self.account_sid,
                                            "callSid": self.call_sid})

    def _numbered(self, event: str, stream_sid: str | None = None, **body: Any) -> str:
        self.sequence += 1
        return _dump({"event": event, "sequenceNumber": str(self.sequence),
                      "streamSid": stream_sid or self.stream_sid, **body})

    # -- what the gateway sends ---------------------------------------------------------------

    def receive(self, text: str | bytes, now: float) -> str:
        """Play one message of the gateway at stream second `now`; returns its event (media,
        mark or clear). Raises ProtocolError when the gateway broke the protocol."""
        return self.play(self.read(text), now)

    def read(self, text: str | bytes, extra_events: Collection[str] = ()) -> dict[str, Any]:
        """One message of the gateway, checked as Twilio checks it: a JSON object for this
        stream, a `media`, `mark` or `clear` (or one of `extra_events`, a gateway's own
        additions). Raises ProtocolError when it is not."""
        if not isinstance(text, str):
            raise ProtocolError("binary_frame", "the gateway sent a binary frame")
        try:
            message = orjson.loads(text)
        except ValueError as exc:
            raise ProtocolError("invalid_json", f"the gateway sent invalid JSON: {exc}") from None
        if type(message) is not dict:
            raise ProtocolError("not_an_object", "the gateway sent JSON that is not an object")
        event = message.get("event")
        if message.get("streamSid") != self.stream_sid:
            raise ProtocolError("wrong_stream_sid", f"the gateway sent {event!r} for streamSid "
                                f"{message.get('streamSid')!r}, not {self.stream_sid!r}")
        if event not in GATEWAY_EVENTS and event not in extra_events:
            raise ProtocolError("unknown_event", f"the gateway sent unknown event {event!r}")
        return message

    def play(self, message: dict[str, Any], now: float) -> str:
        """A message `read` returned, into the playout at stream second `now`; its event.
        Events other than media, mark and clear are not Twilio's: nothing plays."""
        event = str(message["event"])
        try:
            if event == "media":
                self.playout.add(now, a2b_base64(message["media"]["payload"], strict_mode=True))
            elif event == "mark":
                self.playout.mark(now, str(message["mark"]["name"]))
            elif event == "clear":
                self._echo_now.extend(self.playout.clear(now))
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError("bad_value", f"the gateway sent a malformed {event}: "
                                f"{type(exc).__name__} {exc}") from None
        return event

    def due_marks(self, now: float) -> list[str]:
        """Names of the marks to echo now (`mark` builds each echo), in order."""
        due, self._echo_now = [*self._echo_now, *self.playout.due_marks(now)], []
        return due

    def played_marks(self) -> list[str]:
        """The marks to echo once everything received has played: for a Twilio whose audio
        plays the moment it arrives (tests that keep no clock)."""
        return self.due_marks(self.playout.end / SAMPLE_RATE)

    @property
    def echoing(self) -> bool:
        """Marks are waiting to be echoed: their audio has not played, or a clear just came."""
        return bool(self.playout.pending or self._echo_now)


def _dump(message: dict[str, Any]) -> str:
    return orjson.dumps(message).decode()
