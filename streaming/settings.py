"""What the real-time core is configured with: the settings sections it reads (`call`, `vad`,
`prompts`), a call session's whole configuration, and the limits every settings field declares
next to itself.

They live here rather than in app/config.py because `streaming/` never imports `app/`: the
session takes these very sections, and app/config.py composes them with its own into `Settings`
and loads them. A field's default is its one default (config.yaml repeats it, a test keeps the
two equal); its limits are `Annotated` metadata the loader checks, and each names what is wrong
in words an operator acts on: `server.port: must be between 1 and 65535, got 0`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from streaming.protocol import DTMF_KEYS


@dataclass(frozen=True, slots=True)
class Rule:
    """A condition on one field's value, and what to tell an operator when it does not hold:
    `Rule(is_dtmf_key, "must be one DTMF key (0-9, * or #)")`. The loader (app/config_loader.py)
    checks every Rule of a field's `Annotated` type."""

    holds: Callable[[Any], bool]
    requirement: str

    def problem(self, value: Any) -> str | None:
        return None if self.holds(value) else f"{self.requirement}, got {value!r}"


def between(low: float, high: float) -> Rule:
    return Rule(lambda value: low <= value <= high, f"must be between {low} and {high}")


def at_least(low: float) -> Rule:
    return Rule(lambda value: value >= low,
                f"must be at least {low}" if low else "must not be negative")


def above(low: float) -> Rule:
    return Rule(lambda value: value > low, f"must be greater than {low}")


def below(high: float, what: str = "") -> Rule:
    """`what`: the bound in words, when a bare number would not say why."""
    return Rule(lambda value: value < high, f"must be under {what or high}")


def at_most(high: float, why: str = "") -> Rule:
    """`why`: what a larger value would do, when a bare number would not say."""
    return Rule(lambda value: value <= high, f"must be at most {high}" + (f" ({why})" if why else ""))


def multiple_of(step: int) -> Rule:
    return Rule(lambda value: value % step == 0, f"must be a multiple of {step}")


PositiveInt = Annotated[int, above(0)]
PositiveFloat = Annotated[float, above(0)]
NonNegativeInt = Annotated[int, at_least(0)]


def is_dtmf_key(key: str) -> bool:
    return key in DTMF_KEYS


@dataclass(frozen=True, slots=True)
class CallSettings:
    """How a streamed call behaves: no-input, barge-in, DTMF and outbound audio."""

    # Seconds of caller silence (bot not speaking) before a reprompt.
    no_input_seconds: PositiveFloat = 8.0
    max_reprompts: NonNegativeInt = 2
    # Caller speech must last this long during playback to interrupt the bot.
    barge_in_min_speech_ms: NonNegativeInt = 240
    dtmf_timeout_seconds: PositiveFloat = 3.0
    dtmf_finish_key: Annotated[str, Rule(is_dtmf_key, "must be one DTMF key (0-9, * or #)")] = "#"
    # Outbound audio per media message: whole 20 ms frames.
    outbound_chunk_ms: Annotated[int, above(0), multiple_of(20)] = 40
    # Dropped streams one call may resume (the instance died, the network cut): a new stream on
    # any instance, the same Rasa conversation. The next drop sends the caller to the agent.
    max_resumes: Annotated[int, between(0, 20)] = 2
    # The longest a call lasts, its resumed streams included: then prompts.goodbye and a hang-up.
    max_duration_seconds: PositiveFloat = 1800.0
    # Twilio sends a media frame every 20 ms while a stream lives, silence included: none for
    # this long means the connection is gone (a network cut the socket has not noticed yet).
    media_timeout_seconds: PositiveFloat = 10.0
    # The bot has not answered for this long: `prompts.thinking` plays meanwhile, once per turn
    # (0: never).
    thinking_after_ms: NonNegativeInt = 1500


@dataclass(frozen=True, slots=True)
class VadSettings:
    # Frame energy (RMS of 16-bit linear PCM) above which a 20 ms frame counts as speech.
    energy_threshold: NonNegativeInt = 500


@dataclass(frozen=True, slots=True)
class PromptSettings:
    """What the gateway says on its own (the greeting is in `greeting`)."""

    reprompt: str = "¿Sigue ahí? Dígame en qué puedo ayudarle."
    apology: str = "Lo siento, estamos teniendo problemas técnicos."
    transfer: str = "Le paso con un ejecutivo. Un momento, por favor."
    no_answer: str = (
        "En este momento no hay ejecutivos disponibles. Por favor, llame más tarde. Adiós."
    )
    # Said before hanging up when the bot's hang-up reply has no text of its own.
    goodbye: str = "Gracias por llamar. Adiós."
    # Said when a dropped stream is resumed (the instance died, the network cut): the call goes
    # on where it was, in the same Rasa conversation.
    resume: str = "Disculpe, se ha cortado la comunicación. ¿En qué estábamos?"
    # Said on the Gather path when a streamed call moved there after an engine failure.
    degraded: str = "Disculpe la interrupción. ¿En qué puedo ayudarle?"
    # While the bot takes longer than `call.thinking_after_ms` to answer.
    thinking: str = "Un momento, por favor."


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """What a session needs: the call's language and greeting, the settings' own `call`, `vad`
    and `prompts` sections (app/media.py hands them over), and timings that are the session's."""

    language: str
    # Silence that ends the caller's speech for the VAD (the `stt.endpoint_silence_ms` setting,
    # which the recognizers share: it is not the session's own).
    endpoint_silence_ms: int
    greeting: str = ""
    # The call's stream dropped and this one picks it up: prompts.resume instead of the greeting.
    resumed: bool = False
    # How long the call had lasted when this stream began (its earlier streams), so that
    # call.max_duration_seconds counts the whole call.
    elapsed_seconds: float = 0.0
    # How long before this stream's start the call was answered (the webhook's TwiML): the time
    # to first greeting counts from there. 0: from the stream's start.
    answered_seconds_ago: float = 0.0
    call: CallSettings = field(default_factory=CallSettings)
    vad: VadSettings = field(default_factory=VadSettings)
    prompts: PromptSettings = field(default_factory=PromptSettings)
    # Loud audio needed before the VAD calls it speech.
    vad_start_ms: int = 60
    # Audio is handed to the recognizer in batches of this much (ARCHITECTURE.md: never per
    # 20 ms frame).
    stt_batch_ms: int = 100
    # Sentences sent beyond the last one the caller is known to have heard (>= 2 avoids gaps).
    sentences_ahead: int = 2
    # How much longer than the audio itself to wait for a sentence's mark.
    mark_timeout_seconds: float = 5.0
    # After a successful transfer/hang-up Twilio stops the stream; if it doesn't, we close it.
    end_grace_seconds: float = 10.0
    # Longest wait for the session's tasks to finish once cancelled (they normally take none).
    close_timeout_seconds: float = 5.0
