"""Twilio's side of the TwiML a call runs, sans I/O: a document's verbs, in order, as data.

Twilio runs the document a webhook answers verb by verb. `<Connect><Stream>` holds the call on a
media stream until the stream ends, then the next verb runs; `<Redirect>` fetches the next
document and runs it instead of the rest; `<Say>` speaks; `<Gather>`, `<Dial>` and `<Hangup>`
hand the call to Twilio's own recognition or another phone, or end it; past the last verb Twilio
hangs up. The call simulator (app/simulate.py) plays Twilio with these: it makes the requests and
holds the streams (streaming/twilio_side.py), `read` says what comes next.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field


class TwimlError(ValueError):
    """The gateway answered something Twilio would not run (error 12100: document parse failure)."""


@dataclass(frozen=True, slots=True)
class Stream:
    """`<Connect><Stream>`: a bidirectional media stream; `parameters` arrive in its `start`."""

    url: str
    parameters: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Redirect:
    url: str
    method: str = "POST"


@dataclass(frozen=True, slots=True)
class Say:
    text: str


@dataclass(frozen=True, slots=True)
class Gather:
    """Twilio's recognition takes the call: it says `says`, listens, and posts to `action`."""

    action: str
    input: str
    says: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Dial:
    number: str  # an E.164 number or a sip: URI


@dataclass(frozen=True, slots=True)
class Hangup:
    pass


Verb = Stream | Redirect | Say | Gather | Dial | Hangup


def read(twiml: str) -> list[Verb]:
    """The document's verbs in order; TwimlError names what Twilio would not run."""
    try:
        root = ET.fromstring(twiml)
    except ET.ParseError as exc:
        raise TwimlError(f"not TwiML: {exc}: {twiml[:200]!r}") from None
    if root.tag != "Response":
        raise TwimlError(f"TwiML's root is <Response>, not <{root.tag}>")
    return [_verb(element) for element in root]


def describe(verb: Verb) -> str:
    """One line for a timeline."""
    if isinstance(verb, Stream):
        return f"<Connect><Stream> {verb.url}"
    if isinstance(verb, Redirect):
        return f"<Redirect> {verb.method} {verb.url}"
    if isinstance(verb, Say):
        return f"<Say> {verb.text}"
    if isinstance(verb, Gather):
        said = " ".join(verb.says)
        return f"<Gather input={verb.input!r}> {said} -> {verb.action}".replace("  ", " ")
    if isinstance(verb, Dial):
        return f"<Dial> {verb.number}"
    return "<Hangup>"


def _verb(element: ET.Element) -> Verb:
    tag = element.tag
    if tag == "Connect":
        stream = element.find("Stream")
        if stream is None or not stream.get("url"):
            raise TwimlError("<Connect> without a <Stream url>: the gateway connects nothing else")
        parameters = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
        return Stream(stream.get("url", ""), parameters)
    if tag == "Redirect":
        if not (element.text or "").strip():
            raise TwimlError("<Redirect> without a URL")
        return Redirect((element.text or "").strip(), element.get("method", "POST").upper())
    if tag == "Say":
        return Say(element.text or "")
    if tag == "Gather":
        says = tuple(say.text or "" for say in element.findall("Say"))
        return Gather(element.get("action", ""), element.get("input", "dtmf"), says)
    if tag == "Dial":
        target = element.find("Number")
        if target is None:
            target = element.find("Sip")
        number = (target.text if target is not None else element.text) or ""
        return Dial(number.strip())
    if tag == "Hangup":
        return Hangup()
    raise TwimlError(f"<{tag}> is not a verb the gateway answers with (not simulated)")
