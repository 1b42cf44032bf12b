"""Whole calls through the real gateway: the simulator plays Twilio, pocketsphinx hears the caller,
espeak answers, a Rasa-compatible bot converses, Twilio's REST API is a local server.

The simulator runs in fast mode here (caller audio sent as fast as possible, the gateway waited
for in real time): these tests check what happens, not how fast; test_e2e_barge_in.py runs in
real time.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.config import Settings
from app.simulate import SimulationResult, Turn, load_wav, simulate_call
from audio import mulaw, wav
from tests.support.gateway import AUTH_TOKEN, RunningGateway, running_gateway
from tests.support.rasa_bot import RasaBot
from tests.support.servers import running
from tests.support.twilio_api import TwilioApi

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures"
PHRASES = ("block my card", "i lost my credit card", "my card was stolen", "talk to a person",
           "yes", "no")
# The bot's reply, and the sentences the gateway plays (and marks) one by one.
REPLY_SENTENCES = ("Entendido.", "Voy a bloquear su tarjeta.")
REPLY = " ".join(REPLY_SENTENCES)


def e2e_settings() -> Settings:
    """Offline engines with the fixtures' phrase grammar, and a one-word greeting."""
    return Settings().replace(
        stt={"engine": "pocketsphinx", "pocketsphinx": {"phrases": list(PHRASES), "workers": 1}},
        tts={"engine": "espeak"},
        greeting={"text": "{salutation}."},
    )


def caller(name: str) -> bytes:
    return load_wav(FIXTURES / f"{name}.wav")


@pytest.fixture(scope="module")
def gw() -> Iterator[RunningGateway]:
    api = TwilioApi()
    bot = RasaBot(reply=lambda text: [{"recipient_id": "x", "text": REPLY}])
    with running(api.app()) as twilio, running_gateway(
        e2e_settings(), bot, twilio={"api_base_url": twilio.url}
    ) as gateway:
        yield gateway


async def call(gw: RunningGateway, *turns: Turn, **options: Any) -> SimulationResult:
    options = {"auth_token": AUTH_TOKEN, "realtime": False, "tail": 15, **options}
    return await simulate_call(gw.url, turns, **options)


def requests_of(gw: RunningGateway, result: SimulationResult) -> list[dict[str, Any]]:
    return [r for r in gw.bot.requests if r["sender"] == result.call_sid]


def synthesized_seconds(gw: RunningGateway, *sentences: str) -> float:
    """How long the gateway's own synthesizer speaks `sentences`, one by one as it plays them."""

    async def synthesize() -> int:
        total = 0
        for sentence in sentences:
            async for chunk in gw.gateway.tts.synthesize(sentence, gw.settings.language.code):
                total += len(chunk)
        return total

    return gw.call(synthesize(), timeout=30) / 8000


def rejected_frames(gw: RunningGateway) -> dict[str, float]:
    text = httpx.get(f"{gw.url}/metrics", trust_env=False).text
    return {sample.labels["reason"]: sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "gateway_stream_frames_rejected"
            for sample in family.samples if sample.name.endswith("_total")}


async def test_a_spoken_request_reaches_rasa_and_the_reply_is_heard(gw):
    rejected_before = rejected_frames(gw)
    result = await call(gw, Turn(audio=caller("block_my_card")), from_number="+34600555666")
    assert rejected_frames(gw) == rejected_before  # every message the simulator sent was valid

    (request,) = requests_of(gw, result)
    assert request["message"] == "block my card"
    assert request["metadata"] == {
        "from": "+34600555666", "to": "+34910000000", "call_sid": result.call_sid,
        "channel": "twilio_voice_stream", "input": "speech"}

    # The greeting, then the reply: as long as espeak speaks the text, and clearly audible.
    _, (reply_start, reply_stop) = zip(result.times("bot_audio_start"),
                                       result.times("bot_audio_stop"))
    assert reply_start > result.times("caller_speech_end")[0]
    assert reply_stop - reply_start == pytest.approx(synthesized_seconds(gw, *REPLY_SENTENCES), abs=0.1)
    heard = result.heard_pcm16()
    assert mulaw.rms(heard[int(reply_start * 16000):int(reply_stop * 16000)]) > 1000
    assert result.audible_seconds() > 0.5 * (reply_stop - reply_start)

    # One mark per sentence came back, the last one when the reply had finished playing.
    # The one-sentence greeting's mark, then one per sentence of the reply.
    assert len(result.marks) == len(set(result.marks)) == 1 + len(REPLY_SENTENCES)
    assert result.times("mark")[-1] == pytest.approx(reply_stop, abs=0.03)
    assert result.latencies[0] is not None
    assert result.protocol_errors == [] and result.close_code is None


async def test_keys_pressed_reach_rasa_as_one_message(gw):
    result = await call(gw, Turn(digits="1234#"))

    (request,) = requests_of(gw, result)
    assert request["message"] == "1234"
    assert request["metadata"]["input"] == "dtmf"
    assert len(result.times("bot_audio_start")) == 2  # greeting and the reply to the digits
    assert result.protocol_errors == []


async def test_garbage_frames_are_counted_and_the_call_goes_on(gw):
    before = rejected_frames(gw)
    garbage = (
        b"\x00\x01binary",
        "this is not json",
        json.dumps({"event": "media", "streamSid": "MZnot-this-call", "sequenceNumber": "2",
                    "media": {"track": "inbound", "chunk": "1", "timestamp": "0",
                              "payload": "/w=="}}),
        json.dumps({"event": "surprise"}),
        json.dumps({"event": "media", "media": {"payload": "%%%"}}),
    )
    result = await call(gw, Turn(raw=garbage, when="now"), Turn(audio=caller("my_card_was_stolen")))

    assert [r["message"] for r in requests_of(gw, result)] == ["my card was stolen"]
    assert result.close_code is None  # the gateway kept the socket open; the caller hung up
    after = rejected_frames(gw)
    grew = {reason for reason in after if after[reason] > before.get(reason, 0)}
    assert {"binary_frame", "invalid_json", "wrong_stream_sid", "unknown_event"} <= grew


def test_the_cli_simulates_a_call_and_writes_what_was_heard(gw, tmp_path):
    heard = tmp_path / "heard.wav"
    done = subprocess.run(
        [sys.executable, "-m", "app", "simulate", "--url", gw.url, "--auth-token", AUTH_TOKEN,
         "--wav", str(FIXTURES / "talk_to_a_person.wav"), "--fast", "--tail", "15",
         "--out", str(heard)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "caller_speech_start" in done.stdout and "bot_audio_start" in done.stdout
    assert "turn latencies (end of caller speech -> first bot audio): " in done.stdout
    assert "turn 1: the caller stopped at t=" in done.stdout and ": waited " in done.stdout
    assert "after the voice webhook answered" in done.stdout
    assert "talk to a person" in gw.bot.messages()
    recording = wav.read(heard)
    assert (recording.sample_rate, recording.channels, recording.encoding) == (8000, 1, "pcm")
    assert recording.duration > synthesized_seconds(gw, *REPLY_SENTENCES)
    assert mulaw.rms(recording.data) > 300
