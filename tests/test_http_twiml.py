"""TwiML builders and the greeting, as pure functions."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime

import pytest

from app import twiml
from app.config import Settings
from app.prompts import greeting_text
from app.twiml import Urls
from streaming.actions import CollectDigits, TurnPlan, plan_turn
from streaming.ports import BotMessage

URLS = Urls("https://voice.bank.example")


@pytest.mark.parametrize(
    ("utc", "salutation"),
    [
        (datetime(2026, 11, 25, 4, 0, tzinfo=UTC), "Buenos días"),  # 05:00 in Madrid (CET)
        (datetime(2026, 11, 25, 10, 59, tzinfo=UTC), "Buenos días"),  # 11:59
        (datetime(2026, 11, 25, 11, 0, tzinfo=UTC), "Buenas tardes"),  # 12:00
        (datetime(2026, 11, 25, 18, 59, tzinfo=UTC), "Buenas tardes"),  # 19:59
        (datetime(2026, 11, 25, 19, 0, tzinfo=UTC), "Buenas noches"),  # 20:00
        (datetime(2026, 11, 25, 3, 59, tzinfo=UTC), "Buenas noches"),  # 04:59
        (datetime(2026, 7, 1, 10, 30, tzinfo=UTC), "Buenas tardes"),  # 12:30 CEST (summer)
    ],
)
def test_greeting_by_hour_in_the_callers_zone(utc: datetime, salutation: str) -> None:
    assert greeting_text(Settings(), utc) == (
        f"{salutation}, le atiende el asistente virtual de bloqueo de tarjetas. "
        "¿En qué puedo ayudarle?"
    )


def test_greeting_texts_and_zone_come_from_settings() -> None:
    settings = Settings().replace(
        greeting={
            "timezone": "America/Mexico_City",
            "afternoon": "Qué tal",
            "text": "{salutation}.",
        }
    )
    assert greeting_text(settings, datetime(2026, 11, 25, 20, 0, tzinfo=UTC)) == "Qué tal."
    assert greeting_text(settings, datetime(2026, 11, 25, 9, 0)) == "Buenos días."  # naive: local
    assert greeting_text(settings) in {"Buenos días.", "Qué tal.", "Buenas noches."}


def parse(text: str) -> ET.Element:
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>')
    root = ET.fromstring(text)
    assert root.tag == "Response"
    return root


def test_stream_url_follows_the_base_scheme_and_path() -> None:
    assert URLS.stream == "wss://voice.bank.example/webhook/twilio/stream"
    assert Urls("http://10.0.0.5:5001/voz").stream == "ws://10.0.0.5:5001/voz/webhook/twilio/stream"


def test_language_and_voice_follow_settings() -> None:
    settings = Settings().replace(language={"code": "es-MX", "say_voice": ""})
    root = parse(twiml.gather(settings, URLS, ["Hola"]))
    assert root[0].get("language") == "es-MX"
    assert root[0][0].attrib == {"language": "es-MX"}  # no voice: Twilio's default for the language


def test_reply_without_anything_to_say_just_listens() -> None:
    root = parse(twiml.reply(Settings(), URLS, TurnPlan(())))
    assert [e.tag for e in root] == ["Gather", "Redirect"] and list(root[0]) == []


def test_first_control_action_wins_and_all_says_come_first() -> None:
    replies = [BotMessage("Uno"), BotMessage(custom={"action": "hangup"}), BotMessage("Dos"),
               BotMessage(custom={"action": "transfer", "number": "+34911234567"})]
    root = parse(twiml.reply(Settings(), URLS, plan_turn(replies, goodbye="Adiós.")))
    assert [e.tag for e in root] == ["Say", "Say", "Hangup"]


def test_digits_without_limits() -> None:
    root = parse(twiml.reply(Settings(), URLS, TurnPlan((), CollectDigits(finish_on_key=""))))
    assert root[0].attrib == {
        "input": "dtmf",
        "action": "https://voice.bank.example/webhook/twilio/speech?noinput=0",
        "method": "POST",
        "finishOnKey": "",
        "timeout": "6",
    }


def test_transfer_to_a_sip_agent() -> None:
    root = parse(twiml.transfer(Settings(), URLS, ["Un momento."], "sip:agentes@pbx.bank.example",
                                announce=False))
    assert [e.tag for e in root] == ["Say", "Dial"]
    (sip,) = root[1]
    assert sip.tag == "Sip" and sip.text == "sip:agentes@pbx.bank.example"


def test_texts_are_escaped() -> None:
    root = parse(twiml.gather(Settings(), URLS, ['<Hangup/> & "comillas"']))
    assert root[0][0].text == '<Hangup/> & "comillas"'
