"""The words the gateway itself speaks, chosen from the configured texts."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from app.config import Settings


def salutation(settings: Settings, now: datetime | None = None) -> str:
    """Buenos días 05:00-11:59, buenas tardes 12:00-19:59, buenas noches otherwise.

    The hour is read in greeting.timezone (where the callers are), not the server's zone.
    A naive `now` is taken to be in that zone already.
    """
    zone = ZoneInfo(settings.greeting.timezone)
    if now is None:
        now = datetime.now(zone)
    elif now.tzinfo is not None:
        now = now.astimezone(zone)
    if 5 <= now.hour < 12:
        return settings.greeting.morning
    if 12 <= now.hour < 20:
        return settings.greeting.afternoon
    return settings.greeting.night


def greeting_text(settings: Settings, now: datetime | None = None) -> str:
    """The contextual greeting both call paths open with."""
    return _greeting(settings, salutation(settings, now))


def _greeting(settings: Settings, salutation_text: str) -> str:
    return settings.greeting.text.replace("{salutation}", salutation_text)


def spoken_prompts(settings: Settings) -> list[str]:
    """Every text the stream path speaks on its own: worth synthesizing once at startup."""
    greeting = settings.greeting
    greetings = [_greeting(settings, s) for s in (greeting.morning, greeting.afternoon, greeting.night)]
    prompts = settings.prompts
    return [*greetings, prompts.reprompt, prompts.apology, prompts.goodbye, prompts.resume,
            prompts.thinking]
