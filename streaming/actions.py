"""A bot turn, the same on both call paths: what the request carries, what the reply means.

The stream path (CallSession) and the Gather path (app/webhooks.py, app/twiml.py) send the same
`turn_metadata` and read the reply through the same `plan_turn`, so the bot team writes one set
of payloads (documented in README.md):

    {"custom": {"action": "transfer", "number": "+34911234567"}}   # number optional
    {"custom": {"action": "hangup"}}
    {"custom": {"action": "collect_dtmf", "max_digits": 16, "finish_on_key": "#",
                "timeout_seconds": 5}}
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from streaming.ports import BotMessage
from streaming.protocol import DTMF_KEYS

logger = logging.getLogger("streaming.actions")

# What a transfer can dial: an E.164 number or a SIP URI (Twilio's <Dial><Number> / <Sip>).
_DIALABLE = re.compile(r"\+[1-9][0-9]{6,14}|sip:[^\s<>\"]+")


def is_dialable(number: str) -> bool:
    """The one rule for transfer targets, from a bot payload or `twilio.fallback_phone_number`."""
    return _DIALABLE.fullmatch(number) is not None


@dataclass(frozen=True, slots=True)
class Speak:
    text: str


@dataclass(frozen=True, slots=True)
class Transfer:
    number: str | None = None


@dataclass(frozen=True, slots=True)
class HangUp:
    pass


@dataclass(frozen=True, slots=True)
class CollectDigits:
    max_digits: int | None = None
    finish_on_key: str = "#"
    timeout_seconds: float | None = None


Action = Speak | Transfer | HangUp | CollectDigits
Ending = Transfer | HangUp


@dataclass(frozen=True, slots=True)
class TurnPlan:
    """What a reply means for the call: say `says` (in order), then end the call as `ending`
    says, or else collect the next input by `collect` (None: speech, or keys by the defaults)."""

    says: tuple[str, ...]
    collect: CollectDigits | None = None
    ending: Ending | None = None
    goodbye: bool = False  # `says` is the goodbye prompt: the hang-up had nothing to say


def plan_turn(messages: Iterable[BotMessage], goodbye: str) -> TurnPlan:
    """Every text is said; the first transfer or hang-up ends the call once it has been said
    (a hang-up with nothing to say says `goodbye`); without one, the first `collect_dtmf`
    sets the next input."""
    actions = parse_actions(messages)
    says = tuple(action.text for action in actions if isinstance(action, Speak))
    ending = next((a for a in actions if isinstance(a, (Transfer, HangUp))), None)
    if isinstance(ending, HangUp) and not says:
        return TurnPlan((goodbye,), None, ending, goodbye=True)
    if ending is not None:
        return TurnPlan(says, None, ending)
    collect = next((a for a in actions if isinstance(a, CollectDigits)), None)
    return TurnPlan(says, collect)


def turn_metadata(call_sid: str, from_number: str, to_number: str, channel: str,
                  source: str) -> dict[str, str]:
    """The `metadata` of a turn sent to Rasa (README.md, the Rasa contract)."""
    return {"from": from_number, "to": to_number, "call_sid": call_sid, "channel": channel,
            "input": source}


def parse_actions(messages: Iterable[BotMessage]) -> list[Action]:
    """Turn bot messages into actions in order. Unknown or invalid payloads are logged and skipped."""
    actions: list[Action] = []
    for message in messages:
        if message.text and message.text.strip():
            actions.append(Speak(message.text.strip()))
        if message.custom is not None:
            action = _parse_custom(message.custom)
            if action is not None:
                actions.append(action)
    return actions


def _parse_custom(payload: Mapping[str, Any]) -> Action | None:
    kind = payload.get("action")
    if kind == "transfer":
        number = payload.get("number")
        if number is None:
            return Transfer()
        if isinstance(number, str) and is_dialable(number.strip()):
            return Transfer(number.strip())
        logger.warning("transfer payload with an invalid number ignored; using the default",
                       extra={"event": "bot_payload_invalid"})
        return Transfer()
    if kind == "hangup":
        return HangUp()
    if kind == "collect_dtmf":
        max_digits = payload.get("max_digits")
        finish = payload.get("finish_on_key", "#")
        timeout = payload.get("timeout_seconds")
        valid = (
            (max_digits is None or (isinstance(max_digits, int) and 1 <= max_digits <= 64))
            and isinstance(finish, str) and (finish == "" or finish in DTMF_KEYS)
            and (timeout is None or (isinstance(timeout, (int, float)) and 0 < timeout <= 60))
        )
        if valid:
            return CollectDigits(max_digits, finish, None if timeout is None else float(timeout))
        logger.warning("collect_dtmf payload with invalid fields ignored",
                       extra={"event": "bot_payload_invalid"})
        return None
    logger.warning("unknown custom payload ignored", extra={"event": "bot_payload_unknown"})
    return None
