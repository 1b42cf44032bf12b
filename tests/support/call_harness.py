"""Drive a real `CallSession` without sockets: Twilio's messages in, what the session sends out.

The engines, bot and call control here stand in for the outside world (Google, espeak, Rasa,
Twilio's REST API) and implement the `streaming.ports` protocols; the session, protocol parsing,
VAD and framing under test are the real ones.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any

from streaming.ports import (
    BotError,
    BotMessage,
    CallControlError,
    CallEvent,
    SpeechError,
    SynthesisError,
    Transcript,
)
from streaming.protocol import Dtmf, Mark, Media, Stop, StreamState
from streaming.session import CallSession
from streaming.settings import CallSettings, SessionConfig
from streaming.twilio_side import TwilioSide
from tests.support.caller_audio import SILENT_FRAME, frames


class ScriptedRecognition:
    """A recognition stream whose results the test scripts with `say` / `fail`."""

    def __init__(self, language: str) -> None:
        self.language = language
        self.fed: list[bytes] = []
        self.feed_error: Exception | None = None  # raised by every `feed` once set
        self.speech_ends: list[int] = []  # audio fed (ms) each time the session said so
        self.speech_starts: list[int] = []  # speech ends told before each start told
        self.closed = False
        self._results: asyncio.Queue[Transcript | Exception | None] = asyncio.Queue()

    def feed(self, mulaw: bytes) -> None:
        if self.feed_error is not None:
            raise self.feed_error
        self.fed.append(mulaw)

    def speech_ended(self) -> None:
        self.speech_ends.append(self.fed_ms)

    def speech_started(self) -> None:
        self.speech_starts.append(len(self.speech_ends))

    async def results(self) -> AsyncIterator[Transcript]:
        while True:
            item = await self._results.get()
            if item is None:
                return
            if isinstance(item, Exception):
                raise item
            yield item

    def say(self, text: str, final: bool = True, start_ms: int | None = None,
            end_ms: int | None = None) -> None:
        self._results.put_nowait(Transcript(text, final, None, start_ms, end_ms))

    @property
    def fed_ms(self) -> int:
        """Audio fed so far, in ms: the timeline of the transcripts' times."""
        return sum(len(batch) for batch in self.fed) // 8

    def fail(self, message: str = "recognizer broke") -> None:
        self._results.put_nowait(SpeechError(message))

    async def close(self) -> None:
        self.closed = True
        self._results.put_nowait(None)


class ScriptedStt:
    name = "scripted"

    def __init__(self, fail_open: bool = False) -> None:
        self.streams: list[ScriptedRecognition] = []
        self.fail_open = fail_open

    def open(self, language: str) -> ScriptedRecognition:
        if self.fail_open:
            raise SpeechError("no recognizer")
        stream = ScriptedRecognition(language)
        self.streams.append(stream)
        return stream

    async def aclose(self) -> None:
        pass


class FakeTts:
    """Deterministic "speech": 100 ms of audio per word, yielded in odd-sized chunks."""

    name = "fake"

    def __init__(self, chunk: int = 333, delay: float = 0.0, fail_on: str | None = None) -> None:
        self.chunk, self.delay, self.fail_on = chunk, delay, fail_on
        self.texts: list[str] = []
        self.unfinished = 0  # generators closed before they were exhausted

    @staticmethod
    def audio_for(text: str) -> bytes:
        return b"".join(bytes([0x10 + i % 64]) * 800 for i, _ in enumerate(text.split()))

    async def synthesize(self, text: str, language: str) -> AsyncIterator[bytes]:
        self.texts.append(text)
        if self.fail_on and self.fail_on in text:
            raise SynthesisError(f"cannot say {text!r}")
        audio = self.audio_for(text)
        finished = False
        try:
            for i in range(0, len(audio), self.chunk):
                if self.delay:
                    await asyncio.sleep(self.delay)
                yield audio[i:i + self.chunk]
            finished = True
        finally:
            if not finished:
                self.unfinished += 1

    async def aclose(self) -> None:
        pass


@dataclass
class FakeBot:
    """Answers with `reply(text)`; an Exception instance in `failure` is raised instead."""

    reply: Callable[[str], list[BotMessage]] = lambda text: [BotMessage(text=f"Ha dicho {text}.")]
    failure: Exception | None = None
    delay: float = 0.0
    requests: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    async def send(self, sender: str, message: str,
                   metadata: Mapping[str, Any]) -> list[BotMessage]:
        self.requests.append((sender, message, dict(metadata)))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.failure is not None:
            raise self.failure
        return self.reply(message)


@dataclass
class FakeControl:
    fail: bool = False
    calls: list[tuple[str, ...]] = field(default_factory=list)

    async def _record(self, *call: str) -> None:
        self.calls.append(call)
        if self.fail:
            raise CallControlError("Twilio said no")

    async def transfer(self, call_sid: str, number: str | None = None) -> None:
        await self._record("transfer", call_sid, number or "")

    async def hang_up(self, call_sid: str) -> None:
        await self._record("hang_up", call_sid)

    async def redirect_to_gather(self, call_sid: str) -> None:
        await self._record("redirect_to_gather", call_sid)


@dataclass
class RecordedEvents:
    """streaming.ports.CallEvents that keeps what it is told."""

    events: list[CallEvent] = field(default_factory=list)

    def emit(self, event: CallEvent) -> None:
        self.events.append(event)

    def kinds(self) -> list[str]:
        return [event.kind for event in self.events]


FAST = SessionConfig(
    "es-ES", endpoint_silence_ms=600, greeting="",
    call=CallSettings(no_input_seconds=30, dtmf_timeout_seconds=0.2),
    mark_timeout_seconds=2.0, end_grace_seconds=0.2,
)


def config(*, call: Mapping[str, Any] | None = None, vad: Mapping[str, Any] | None = None,
           prompts: Mapping[str, Any] | None = None, **own: Any) -> SessionConfig:
    """FAST with fields changed: the session's own, or those of its call/vad/prompts sections."""
    sections = {name: dataclasses.replace(getattr(FAST, name), **changes)
                for name, changes in (("call", call), ("vad", vad), ("prompts", prompts))
                if changes}
    return dataclasses.replace(FAST, **sections, **own)


class CallHarness:
    """One call: the session under test, Twilio's messages into it, its messages collected."""

    def __init__(self, config: SessionConfig = FAST, *, bot: FakeBot | None = None,
                 tts: FakeTts | None = None, stt: ScriptedStt | None = None,
                 control: FakeControl | None = None,
                 events: RecordedEvents | None = None) -> None:
        self.twilio = TwilioSide()
        self.state = StreamState()
        self.bot = bot or FakeBot()
        self.tts = tts or FakeTts()
        self.stt = stt or ScriptedStt()
        self.control = control or FakeControl()
        self.recorded = events or RecordedEvents()
        self.sent: list[dict[str, Any]] = []
        self.echoed: set[str] = set()
        start = self.state.parse(self.twilio.start())
        self.session = CallSession(start.call, self._send, stt=self.stt, tts=self.tts,
                                   bot=self.bot, control=self.control, config=config,
                                   events=self.recorded)

    async def _send(self, text: str) -> None:
        self.sent.append(self.twilio.read(text))

    @property
    def recognition(self) -> ScriptedRecognition:
        return self.stt.streams[-1]

    def deliver(self, text: str) -> None:
        """What app/media.py does with one websocket message."""
        event = self.state.parse(text)
        if type(event) is Media:
            self.session.on_media(event.payload)
        elif type(event) is Mark:
            self.session.on_mark(event.name)
        elif type(event) is Dtmf:
            self.session.on_dtmf(event.digit)
        elif type(event) is Stop:
            self.session.on_stop()

    def audio(self, mulaw: bytes) -> None:
        for frame in frames(mulaw):
            self.deliver(self.twilio.media(frame))

    def silence(self, ms: int) -> None:
        for _ in range(ms // 20):
            self.deliver(self.twilio.media(SILENT_FRAME))

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.sent if m["event"] == kind]

    def marks(self) -> list[str]:
        return [m["mark"]["name"] for m in self.events("mark")]

    def played_audio(self) -> bytes:
        return b"".join(base64.b64decode(m["media"]["payload"]) for m in self.events("media"))

    async def wait(self, predicate: Callable[[], bool], timeout: float = 3.0,
                   what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; sent: {self.summary()}")
            await asyncio.sleep(0.005)

    async def wait_marks(self, count: int) -> list[str]:
        await self.wait(lambda: len(self.marks()) >= count, what=f"{count} marks")
        return self.marks()

    def echo_marks(self) -> list[str]:
        """Twilio finished playing everything sent so far: echo the marks not yet echoed."""
        new = [name for name in self.marks() if name not in self.echoed]
        for name in new:
            self.echoed.add(name)
            self.deliver(self.twilio.mark(name))
        return new

    async def play_out(self, marks: int) -> None:
        """Wait until `marks` marks in total were sent, then echo them (the caller heard it)."""
        await self.wait_marks(marks)
        self.echo_marks()

    def summary(self) -> list[str]:
        """Sent messages, runs collapsed: ['mediax12', 'mark:g0-s1x1', ...]."""
        labels = [m["event"] if m["event"] != "mark" else f"mark:{m['mark']['name']}"
                  for m in self.sent]
        return [f"{label}x{len(list(run))}" for label, run in groupby(labels)]

    async def __aenter__(self) -> CallHarness:
        await self.session.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.aclose()


__all__ = ["BotError", "BotMessage", "CallHarness", "FakeBot", "FakeControl", "FakeTts",
           "RecordedEvents", "ScriptedStt", "FAST", "config"]
