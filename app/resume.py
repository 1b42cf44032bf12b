"""What lets a call outlive its media stream, with no state shared between instances.

When a call's stream ends without the gateway handing the call over (the instance died, the
network cut, the drain limit closed it), Twilio runs the TwiML after `</Connect>`: a `<Redirect>`
to the resume webhook, which any instance answers (app/webhooks.py) with a new stream that goes
on with the same Rasa conversation (sender = CallSid). What that answer needs travels with the
call itself:

- `Carried`: how many times the call was resumed, and when it began. In the `<Redirect>` URL's
  query they cannot be forged: Twilio signs the whole URL it requests, and that URL came from our
  own TwiML. The new `<Stream>` gets them as `<Parameter>`s (Twilio drops a Stream URL's query),
  covered by the stream token (app/security.py), so its session knows it is a resumed one and
  how long the call has lasted.
- `FailedHandovers`: when the gateway meant to hand the call over (transfer, hang-up, Gather path)
  and Twilio's REST API refused, the session closes the stream and Twilio follows the same
  `<Redirect>`. The process that failed remembers what it meant, and carries it out in the
  TwiML it answers with, if the Redirect comes back to it. Another instance cannot know: it
  resumes, and `call.max_resumes` bounds the loop (README, "When something fails").
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field, replace

from streaming.handover import Ending
from streaming.ports import CallControl

MOST_RESUMES = 100  # what a carried count is clamped to, whatever the settings say


def _now() -> int:
    return int(time.time())


@dataclass(frozen=True, slots=True)
class Carried:
    """What a call carries from one stream to the next."""

    resumes: int = 0  # streams of this call picked up again after one dropped
    started: int = field(default_factory=_now)  # Unix seconds: when the call was answered

    @classmethod
    def read(cls, values: Mapping[str, str]) -> Carried:
        """From the Redirect's query or the stream's custom parameters. What is missing or not a
        number (TwiML from before resumes existed, the softphone) is a new call's."""
        started = integer(values.get("started"))
        return cls(count(values.get("resumes"), MOST_RESUMES),
                   _now() if started is None else started)

    def params(self) -> dict[str, str]:
        """The query of the Redirect URL, and the stream's `<Parameter>`s."""
        return {"resumes": str(self.resumes), "started": str(self.started)}

    def resumed(self) -> Carried:
        return replace(self, resumes=self.resumes + 1)

    def elapsed_seconds(self) -> float:
        """How long the call has lasted (never negative, whatever the clocks say)."""
        return float(max(0, _now() - self.started))


def integer(raw: str | None) -> int | None:
    """A count or time from a URL's query or a stream's parameters; None when missing or not an
    integer (the one reading of such values: `count` below, app/security.py)."""
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def count(raw: str | None, most: int) -> int:
    """A carried count (resumes, no-inputs) from a URL's query or a stream's parameters, within
    0..`most`; 0 when missing or not an integer."""
    return max(0, min(integer(raw) or 0, most))


@dataclass(frozen=True, slots=True)
class Handover:
    """What a session meant to do with the call when Twilio's REST API refused it."""

    action: Ending
    number: str | None = None  # the transfer's number; None: the agent's


class FailedHandovers:
    """This process's hand-overs that Twilio refused, by CallSid, until the Redirect that follows
    takes its entry or `keep_seconds` pass (the Redirect comes within a second; a REST update
    that timed out but did reach Twilio leaves an entry nobody takes). At most `most` entries."""

    def __init__(self, keep_seconds: float = 120.0, most: int = 10_000) -> None:
        self._keep = keep_seconds
        self._most = most
        self._entries: OrderedDict[str, tuple[float, Handover]] = OrderedDict()

    def remember(self, call_sid: str, handover: Handover) -> None:
        self._entries.pop(call_sid, None)
        self._entries[call_sid] = (time.monotonic() + self._keep, handover)
        self._forget_old()

    def take(self, call_sid: str) -> Handover | None:
        self._forget_old()
        entry = self._entries.pop(call_sid, None)
        return None if entry is None else entry[1]

    def _forget_old(self) -> None:
        entries, now = self._entries, time.monotonic()
        while entries and (len(entries) > self._most or next(iter(entries.values()))[0] < now):
            entries.popitem(last=False)


class RememberFailures:
    """A streaming.ports.CallControl that remembers each hand-over Twilio refused, for the
    resume webhook that Twilio calls next."""

    def __init__(self, control: CallControl, failed: FailedHandovers) -> None:
        self._control = control
        self._failed = failed

    async def transfer(self, call_sid: str, number: str | None = None) -> None:
        await self._attempt(call_sid, Handover("transfer", number),
                            self._control.transfer(call_sid, number))

    async def hang_up(self, call_sid: str) -> None:
        await self._attempt(call_sid, Handover("hang_up"), self._control.hang_up(call_sid))

    async def redirect_to_gather(self, call_sid: str) -> None:
        await self._attempt(call_sid, Handover("redirect_to_gather"),
                            self._control.redirect_to_gather(call_sid))

    async def _attempt(self, call_sid: str, handover: Handover, update: Awaitable[None]) -> None:
        try:
            await update
        except Exception:
            self._failed.remember(call_sid, handover)
            raise
