"""No full card number reaches the log, whatever path the caller's digits take through the gateway.

Callers read or key in their card numbers. These tests drive the real app (uvicorn on loopback,
signed Twilio webhooks, a real Rasa-compatible bot that echoes what it hears) with DEBUG logging
on, so uvicorn, aiohttp (the Rasa client) and every other library log all they would while
debugging in production, and read the log the gateway writes. The log is the process's root
logger, which the tests' own httpx client writes to as well: its httpcore lines show that DEBUG
is really on.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import httpx
import pytest

from app.config import Settings
from app.logs import configure_logging
from tests.support.call_harness import CallHarness, config
from tests.support.http_gateway import Running, gateway
from tests.support.rasa_bot import RasaBot
from tests.support.servers import ServerThread

PAN = "4539148803436467"
SPEECH_PATH = "/webhook/twilio/speech"
Logged = tuple[Running, io.StringIO]


@pytest.fixture
def logged(bot_server: tuple[RasaBot, ServerThread]) -> Iterator[Logged]:
    """The Gather-mode gateway with server.debug on, its log written to a buffer."""
    root = logging.getLogger()
    level = root.level
    with gateway(bot_server[1].url, server={"mode": "gather", "debug": True}) as gw:
        buffer = io.StringIO()
        handler = configure_logging(gw.settings, stream=buffer)  # the app's handler, re-aimed
        try:
            yield gw, buffer
        finally:
            root.removeHandler(handler)
            root.setLevel(level)


def unseparated(text: str) -> str:
    """`text` without any of the separators a card number can be written with."""
    return re.sub(r"%20|\sy\s|[\s+.,/-]", "", text)


def said(log: io.StringIO) -> list[str]:
    entries = (json.loads(line) for line in log.getvalue().splitlines())
    return [e["message"] for e in entries if e["event"] == "gather_input"]


@pytest.mark.parametrize(
    ("fields", "logged_as"),
    [
        ({"SpeechResult": "mi tarjeta es 4539 1488 0343 6467", "Confidence": "0.91"},
         "caller said: mi tarjeta es **** **** **** ****"),
        ({"SpeechResult": "4539-1488-0343-6467 caduca el 12 del 27"},
         "caller said: ****-****-****-**** caduca el ** del **"),
        ({"SpeechResult": "4, 5, 3, 9, 1, 4, 8, 8, 0, 3, 4, 3, 6, 4, 6, 7"},  # read one by one
         "caller said: *, *, *, *, *, *, *, *, *, *, *, *, *, *, *, *"),
        ({"SpeechResult": "es el 4539, 1488, 0343, 6467"},
         "caller said: es el ****, ****, ****, ****"),
        ({"SpeechResult": "4539, 1488, 0343 y 6467"}, "caller said: ****, ****, **** y ****"),
        ({"Digits": PAN}, "caller said: 16 digits"),
        ({"Digits": PAN + "1227"}, "caller said: 20 digits"),  # with the expiry date
    ],
    ids=["spoken-groups", "spoken-dashes", "spoken-digits", "spoken-comma-groups",
         "spoken-y", "dtmf", "dtmf-with-expiry"],
)
def test_gather_input_with_a_card_number(
    logged: Logged, bot: RasaBot, fields: dict[str, str], logged_as: str
) -> None:
    gw, log = logged
    gw.twiml(SPEECH_PATH, **fields)  # the bot echoes it: Rasa's answer holds it too
    assert PAN in unseparated(bot.messages()[0])  # it went all the way to Rasa
    assert said(log) == [logged_as]
    assert '"logger": "httpcore' in log.getvalue()  # DEBUG logging is really on
    assert PAN not in unseparated(log.getvalue())
    assert re.findall(r"[0-9]{13,}", unseparated(log.getvalue())) == []


def test_a_card_number_read_over_two_gather_turns(logged: Logged, bot: RasaBot) -> None:
    """Each half is shorter than a card number: no pattern could tell, so no digit is logged."""
    gw, log = logged
    gw.twiml(SPEECH_PATH, SpeechResult="mi tarjeta es 4539 1488")
    gw.twiml(SPEECH_PATH, SpeechResult="0343 6467")
    assert said(log) == ["caller said: mi tarjeta es **** ****", "caller said: **** ****"]
    assert re.findall(r"4539|1488|0343|6467", log.getvalue()) == []


async def test_a_card_number_read_over_two_streamed_turns() -> None:
    """The streamed path's caller_input line shows the words of each turn, no digit."""
    root = logging.getLogger()
    level, buffer = root.level, io.StringIO()
    handler = configure_logging(Settings(), stream=buffer)
    try:
        async with CallHarness(config(greeting="Hola.")) as h:
            await h.play_out(1)  # the greeting
            h.recognition.say("mi tarjeta es 4539 1488")
            await h.play_out(2)  # the first reply
            h.recognition.say("0343 6467")
            await h.wait(lambda: len(h.bot.requests) == 2, what="the second turn")
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    entries = [json.loads(line) for line in buffer.getvalue().splitlines()]
    assert [e["message"] for e in entries if e["event"] == "caller_input"] == [
        "caller said: mi tarjeta es **** ****", "caller said: **** ****"]
    assert [text for _, text, *_ in h.bot.requests] == ["mi tarjeta es 4539 1488", "0343 6467"]
    assert re.findall(r"4539|1488|0343|6467", buffer.getvalue()) == []


def test_rasa_failure_with_a_card_number(logged: Logged, bot: RasaBot) -> None:
    gw, log = logged
    bot.mode = "error"
    gw.twiml(SPEECH_PATH, SpeechResult=f"mi tarjeta es {PAN}")
    assert '"event": "rasa_error"' in log.getvalue()
    assert PAN not in unseparated(log.getvalue())


@pytest.mark.parametrize(
    "query",
    [f"card={PAN}", "card=4539+1488+0343+6467", "card=4539%201488%200343%206467",
     f"card={PAN}1227"],
)
def test_access_log_query_strings(logged: Logged, query: str) -> None:
    gw, log = logged
    assert httpx.get(f"{gw.server.url}/health?{query}").status_code == 200
    assert '"logger": "uvicorn.access"' in log.getvalue()
    assert PAN not in unseparated(log.getvalue())
