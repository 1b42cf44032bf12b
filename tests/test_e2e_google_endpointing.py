"""Early finalization end to end: the real gateway on the Google engines, against the local
Google fakes (which finalize like Google: late by their own endpointer, at once on a half-close),
a Rasa-compatible bot, and app.simulate as Twilio playing a Spanish caller.

What is checked is who finalized each utterance, not how fast: speed is bench/latency.py's.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from app.simulate import Turn, load_wav, simulate_call
from audio import mulaw
from tests.support.gateway import AUTH_TOKEN, running_gateway
from tests.support.google_fakes import FakeSpeechServer, FakeTextToSpeechServer
from tests.support.rasa_bot import RasaBot

FIXTURES = Path(__file__).parent / "fixtures"
HEARD = re.compile(r"heard-[0-9a-f]{12}")


@pytest.fixture
async def fakes() -> AsyncIterator[tuple[FakeSpeechServer, FakeTextToSpeechServer]]:
    speech = FakeSpeechServer(final_every=None, endpoint_ms=1500)
    voice = FakeTextToSpeechServer(audio_for=lambda text: mulaw.silence(80 * len(text)))
    async with speech, voice:
        yield speech, voice


def engines(speech: FakeSpeechServer, voice: FakeTextToSpeechServer,
            early: bool) -> dict[str, dict[str, object]]:
    client = {"insecure": True, "timeout_seconds": 5}
    return {
        "stt": {"engine": "google",
                "google": {"endpoint": speech.address, "early_finalization": early, **client}},
        "tts": {"engine": "google", "cache_size": 0,
                "google": {"endpoint": voice.address, **client}},
        "greeting": {"text": "{salutation}."},
    }


def stage_counts(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics", trust_env=False, timeout=5).text
    return {match[1]: float(match[2]) for match in re.finditer(
        r'^gateway_turn_stage_seconds_count\{stage="(\w+)"\} (\S+)$', text, re.MULTILINE)}


@pytest.mark.parametrize("early", [True, False], ids=["early", "googles_endpointer"])
async def test_each_utterance_is_finalized_once_by_the_half_close_or_by_google(
    fakes: tuple[FakeSpeechServer, FakeTextToSpeechServer], early: bool,
) -> None:
    speech, voice = fakes
    turns = [Turn(audio=load_wav(FIXTURES / name)) for name in
             ("es_bloquear_tarjeta.wav", "es_si_por_favor.wav")]
    with running_gateway(bot=RasaBot(), **engines(speech, voice, early)) as gw:
        before = stage_counts(gw.url)
        result = await simulate_call(gw.url, turns, auth_token=AUTH_TOKEN, tail=10)
        after = stage_counts(gw.url)

    messages = gw.bot.messages()
    assert len(messages) == 2 and all(HEARD.fullmatch(m) for m in messages), messages
    assert all(latency is not None for latency in result.latencies), result.timeline()
    causes = [cause for stream in speech.streams for cause in stream.final_causes]
    assert causes == (["half_close"] * 2 if early else ["endpointer"] * 2)
    # With early finalization each utterance had its own stream, and one more waits for the next.
    assert len(speech.streams) == (3 if early else 1)
    assert {stage: after[stage] - before.get(stage, 0) for stage in after} == {
        "endpointing": 2, "bot": 2, "synthesis": 2, "total": 2}
