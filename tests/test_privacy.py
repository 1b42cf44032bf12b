"""No full card number reaches the log, whatever path the caller's digits take through the gateway.

Callers read or key in their card numbers. These tests drive the real app (uvicorn on loopback,
signed Twilio webhooks, a real Rasa-compatible bot) with DEBUG logging on, so httpx, httpcore and
uvicorn log everything they would in production debugging, and read the log the gateway writes.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator

import httpx
import pytest

from app.logs import configure_logging
from tests.support.http_gateway import Running, gateway
from tests.support.rasa_bot import RasaBot
from tests.support.servers import ServerThread, running

PAN = "4539148803436467"
SPEECH_PATH = "/webhook/twilio/speech"


@pytest.fixture
def debug_gateway(bot_server: tuple[RasaBot, ServerThread]) -> Iterator[tuple[Running, io.StringIO]]:
    """The gather-mode gateway with server.debug on, its log written to a buffer."""
    httpx_logger = logging.getLogger("httpx")
    levels = logging.getLogger().level, httpx_logger.level
    with gateway(bot_server[1].url, server={"mode": "gather", "debug": True}) as gw:
        buffer = io.StringIO()
        handler = configure_logging(gw.settings, stream=buffer)  # the app's handler, re-aimed
        try:
            yield gw, buffer
        finally:
            logging.getLogger().removeHandler(handler)
            logging.getLogger().setLevel(levels[0])
            httpx_logger.setLevel(levels[1])


def unseparated(text: str) -> str:
    """The log with every separator a card number could be written with removed."""
    return re.sub(r"%20|[\s+.,-]", "", text)


@pytest.mark.parametrize(
    "fields",
    [
        {"SpeechResult": "mi tarjeta es 4539 1488 0343 6467", "Confidence": "0.91"},
        {"SpeechResult": "4539-1488-0343-6467 caduca el 12 del 27"},
        {"Digits": PAN},
        {"Digits": PAN + "1227"},  # the card number and its expiry date keyed in one go
    ],
    ids=["spoken-groups", "spoken-dashes", "dtmf", "dtmf-with-expiry"],
)
def test_gather_input_with_a_card_number(
    debug_gateway: tuple[Running, io.StringIO], bot: RasaBot, fields: dict[str, str]
) -> None:
    gw, log = debug_gateway
    gw.twiml(SPEECH_PATH, **fields)  # the bot echoes it back: the reply holds it too
    assert PAN in unseparated(bot.messages()[0])  # it did go all the way to Rasa
    text = log.getvalue()
    assert '"event": "gather_input"' in text and '"logger": "httpcore' in text
    assert PAN not in unseparated(text)


def test_rasa_failures_with_a_card_number(
    debug_gateway: tuple[Running, io.StringIO], bot: RasaBot
) -> None:
    gw, log = debug_gateway
    bot.mode = "error"
    gw.twiml(SPEECH_PATH, SpeechResult=f"mi tarjeta es {PAN}")
    assert '"event": "rasa_error"' in log.getvalue()
    assert PAN not in unseparated(log.getvalue())


@pytest.mark.parametrize("query", [f"card={PAN}", "card=4539+1488+0343+6467",
                                   "card=4539%201488%200343%206467", f"card={PAN}1227"])
def test_access_log_query_strings(debug_gateway: tuple[Running, io.StringIO], query: str) -> None:
    gw, log = debug_gateway
    assert httpx.get(f"{gw.server.url}/health?{query}").status_code == 200
    assert '"logger": "uvicorn.access"' in log.getvalue()
    assert PAN not in unseparated(log.getvalue())
