"""The small interfaces the real-time core needs from the outside world.

`app/` hands concrete objects (the aiohttp Rasa client, the twilio REST client, the configured
engines) to each `CallSession`; nothing in `streaming/` knows about HTTP or configuration files.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol


@dataclass(frozen=True, slots=True)
class Transcript:
    """A recognition result. Times are milliseconds of audio fed to the stream since it opened."""

    text: str
    is_final: bool
    confidence: float | None = None
    start_ms: int | None = None
    end_ms: int | None = None


class SpeechError(Exception):
    """The recognizer failed and could not recover; the session degrades the call."""


class SynthesisError(Exception):
    """The synthesizer failed for this text; the session degrades the call."""


class RecognitionStream(Protocol):
    """A call's recognition. A stream may also have `speech_ended(self) -> None`: the session
    calls it once per utterance when its VAD has seen `stt.endpoint_silence_ms` of silence after
    speech (all audio up to there fed), and an engine that can finalize on demand does so then
    instead of waiting for its own endpointer (streaming/stt/google_stream.py). It may also have
    `speech_started(self) -> None`, called once per utterance when the VAD hears speech begin
    (such an engine drops a finalization it was still waiting to make). Synchronous and cheap,
    like `feed`; raising there degrades the call the same way."""

    def feed(self, mulaw: bytes) -> None:
        """Queue 8 kHz mu-law audio; the engine's own task or worker picks it up. Cheap, never
        blocks, bounds its own backlog. Synchronous because a task wake-up per 100 ms batch cost
        ~8% CPU per call (bench/README.md); raising here degrades the call like SpeechError."""

    def results(self) -> AsyncIterator[Transcript]:
        """Interim and final transcripts until `close`; raises SpeechError on failure."""

    async def close(self) -> None:
        """Stop recognizing and release what the stream holds. Idempotent."""


class SpeechToText(Protocol):
    name: str

    def open(self, language: str) -> RecognitionStream: ...

    async def aclose(self) -> None:
        """Release what the engine shares between calls (thread pools, channels)."""


class TextToSpeech(Protocol):
    name: str

    def synthesize(self, text: str, language: str) -> AsyncIterator[bytes]:
        """Raw 8 kHz mu-law audio (no header) in chunks; raises SynthesisError on failure."""

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class BotMessage:
    """One message of the bot's reply: text to speak and/or a custom action payload."""

    text: str | None = None
    custom: Mapping[str, Any] | None = None


class BotError(Exception):
    """The bot is unreachable, too slow, or answered something that is not a reply."""


class Bot(Protocol):
    async def send(
        self, sender: str, message: str, metadata: Mapping[str, Any]
    ) -> list[BotMessage]:
        """Send the caller's message; raises BotError when no usable reply comes back."""


class CallControlError(Exception):
    """Twilio refused or could not be reached for a live-call update."""


class CallControl(Protocol):
    async def transfer(self, call_sid: str, number: str | None = None) -> None:
        """Replace the call's stream with a <Dial> to an agent (default number when None)."""

    async def hang_up(self, call_sid: str) -> None: ...

    async def redirect_to_gather(self, call_sid: str) -> None:
        """Move the live call to the Gather path: same CallSid, same Rasa conversation."""


@dataclass(frozen=True, slots=True)
class CallInfo:
    """What the `start` event tells about the call."""

    call_sid: str
    stream_sid: str
    account_sid: str = ""
    from_number: str = ""
    to_number: str = ""
    custom_parameters: Mapping[str, str] = field(default_factory=dict)


# -- what happened in a call, for whoever watches it (the softphone's timeline) ------------------


@dataclass(frozen=True, slots=True)
class CallerInput:
    """The caller's input exactly as sent to the bot: a final transcript, or the keyed digits."""

    kind: ClassVar[str] = "caller_input"
    text: str
    source: Literal["speech", "dtmf"]


@dataclass(frozen=True, slots=True)
class BotReply:
    """The bot's reply to one caller input, its messages as the bot sent them."""

    kind: ClassVar[str] = "bot_reply"
    messages: tuple[BotMessage, ...]


@dataclass(frozen=True, slots=True)
class BotFailed:
    """No usable reply came back; the caller hears the apology and is transferred."""

    kind: ClassVar[str] = "bot_failed"
    error: str


PromptName = Literal["greeting", "resume", "reprompt", "apology", "goodbye", "thinking"]


@dataclass(frozen=True, slots=True)
class Prompt:
    """The gateway speaks one of its own prompts (not the bot's words)."""

    kind: ClassVar[str] = "prompt"
    name: PromptName
    text: str


@dataclass(frozen=True, slots=True)
class BargeIn:
    """The caller interrupted a reply: which sentences were heard and which were cut."""

    kind: ClassVar[str] = "barge_in"
    cause: Literal["speech", "dtmf"]
    played: tuple[str, ...]
    interrupted: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TurnLatency:
    """How long the caller waited: every field ending in `_ms` is one stage, in milliseconds.

    `total_ms` runs from the end of the caller's input to the reply's first audio sent; the
    other stages are its parts (streaming/turns.py), None when not measured.
    """

    kind: ClassVar[str] = "turn_latency"
    total_ms: float
    endpointing_ms: float | None = None
    bot_ms: float | None = None
    synthesis_ms: float | None = None


CallEvent = CallerInput | BotReply | BotFailed | Prompt | BargeIn | TurnLatency


class CallEvents(Protocol):
    def emit(self, event: CallEvent) -> None:
        """Told at turn boundaries, never per frame. Synchronous and quick: queue, don't wait."""


class NoCallEvents:
    """The default: nobody is watching (phone calls)."""

    def emit(self, event: CallEvent) -> None:
        pass
