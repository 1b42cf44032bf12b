"""Every TwiML document the gateway answers with, built by twilio's VoiceResponse.

Pure functions: settings and absolute URLs in, XML text out. What a call carries from one request
to the next travels in the URLs, so any instance can answer it: the Gather path's no-input count
(`?noinput=N`), a streamed call's resumes and start (`?resumes=N&started=T`, app/resume.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

from twilio.twiml.voice_response import Gather, VoiceResponse

from app.config import Settings
from app.resume import Carried, Handover
from streaming.actions import CollectDigits, HangUp, Transfer, TurnPlan

VOICE_PATH = "/webhook/twilio/voice"
SPEECH_PATH = "/webhook/twilio/speech"
FALLBACK_PATH = "/webhook/twilio/fallback"
RESUME_PATH = "/webhook/twilio/resume"
STATUS_PATH = "/webhook/twilio/status"
STREAM_PATH = "/webhook/twilio/stream"


@dataclass(frozen=True, slots=True)
class Urls:
    """This gateway's absolute URLs as Twilio reaches it, from one base like https://host."""

    base: str

    def speech(self, no_input: int = 0) -> str:
        return f"{self.base}{SPEECH_PATH}?noinput={no_input}"

    @property
    def degraded(self) -> str:
        """The Gather path for a streamed call whose engine failed (app/twilio_rest.py)."""
        return f"{self.base}{SPEECH_PATH}?degraded=1"

    @property
    def fallback(self) -> str:
        return f"{self.base}{FALLBACK_PATH}"

    def resume(self, carried: Carried) -> str:
        return f"{self.base}{RESUME_PATH}?{urlencode(carried.params())}"

    @property
    def dialed(self) -> str:
        return f"{self.base}{FALLBACK_PATH}?dialed=1"

    @property
    def stream(self) -> str:
        parts = urlsplit(self.base)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return f"{scheme}://{parts.netloc}{parts.path}{STREAM_PATH}"


def connect_stream(urls: Urls, parameters: Mapping[str, str], carried: Carried) -> str:
    """Bridge the call to our websocket, with `parameters` (app/security.stream_parameters: the
    call's identity, what it carries, the stream token) in its `start`; when the stream ends
    without a hand-over, Twilio asks the resume webhook what next, with what the call carries."""
    response = VoiceResponse()
    connect = response.connect()
    stream = connect.stream(url=urls.stream)
    for name, value in parameters.items():
        stream.parameter(name=name, value=value)
    response.redirect(urls.resume(carried), method="POST")
    return str(response)


def hand_over(settings: Settings, urls: Urls, handover: Handover) -> str:
    """What the REST update that Twilio refused would have put in place (app/twilio_rest.py)."""
    if handover.action == "transfer":
        return transfer(settings, urls, number=handover.number)
    if handover.action == "hang_up":
        response = VoiceResponse()
        response.hangup()
        return str(response)
    return gather(settings, urls, [settings.prompts.degraded])


def gather(
    settings: Settings,
    urls: Urls,
    says: Sequence[str] = (),
    no_input: int = 0,
    digits: CollectDigits | None = None,
) -> str:
    """Speak `says` while listening; silence falls through to the speech URL with the count."""
    response = VoiceResponse()
    response.append(_gather(settings, urls, says, no_input, digits))
    response.redirect(urls.speech(no_input), method="POST")
    return str(response)


def reply(settings: Settings, urls: Urls, plan: TurnPlan) -> str:
    """A bot turn (streaming.actions.plan_turn): the says, then the ending or the next Gather."""
    if isinstance(plan.ending, Transfer):
        return transfer(settings, urls, plan.says, plan.ending.number, announce=not plan.says)
    if isinstance(plan.ending, HangUp):
        response = VoiceResponse()
        _say_all(response, settings, plan.says)
        response.hangup()
        return str(response)
    return gather(settings, urls, plan.says, digits=plan.collect)


def transfer(settings: Settings, urls: Urls, says: Sequence[str] = (), number: str | None = None,
             *, announce: bool = True) -> str:
    """Say `says`, then announce the transfer (`prompts.transfer`, unless `announce` is false)
    and dial the agent. With no number to dial nothing is announced: the caller hears
    `prompts.no_answer` and the call ends."""
    response = VoiceResponse()
    _say_all(response, settings, says)
    number = number or settings.twilio.fallback_phone_number
    if not number:
        _say_all(response, settings, [settings.prompts.no_answer])
        response.hangup()
        return str(response)
    if announce:
        _say_all(response, settings, [settings.prompts.transfer])
    dial = response.dial(
        timeout=settings.twilio.dial_timeout_seconds, action=urls.dialed, method="POST"
    )
    if number.startswith("sip:"):
        dial.sip(number)
    else:
        dial.number(number)
    return str(response)


def goodbye(settings: Settings) -> str:
    """`prompts.goodbye` and the hang-up: a call past call.max_duration_seconds."""
    response = VoiceResponse()
    _say_all(response, settings, [settings.prompts.goodbye])
    response.hangup()
    return str(response)


def after_dial(settings: Settings, dial_status: str) -> str:
    """End of the agent call: a completed call just ends; otherwise nobody answered."""
    response = VoiceResponse()
    if dial_status != "completed":
        _say_all(response, settings, [settings.prompts.no_answer])
    response.hangup()
    return str(response)


def empty() -> str:
    """An empty <Response/>: status callbacks need a 200, Twilio ignores the body."""
    return str(VoiceResponse())


def _gather(
    settings: Settings,
    urls: Urls,
    says: Sequence[str],
    no_input: int,
    digits: CollectDigits | None,
) -> Gather:
    action = urls.speech(no_input)
    if digits is None:
        verb = Gather(
            input="speech dtmf",
            action=action,
            method="POST",
            language=settings.language.code,
            speech_model=settings.gather.speech_model,
            enhanced=settings.gather.enhanced,
            speech_timeout=settings.gather.speech_timeout,
            timeout=settings.gather.timeout_seconds,
        )
    else:
        timeout = digits.timeout_seconds or settings.gather.timeout_seconds
        verb = Gather(
            input="dtmf",
            action=action,
            method="POST",
            num_digits=digits.max_digits,
            finish_on_key=digits.finish_on_key,
            timeout=math.ceil(timeout),
        )
    _say_all(verb, settings, says)
    return verb


def _say_all(parent: VoiceResponse | Gather, settings: Settings, says: Sequence[str]) -> None:
    for text in says:
        parent.say(text, language=settings.language.code, voice=settings.language.say_voice or None)
