"""Spanish calls through the real gateway with its default offline recognizer (Whisper base):
the simulator plays Twilio with the Spanish fixtures, a Rasa-compatible bot converses, espeak
answers, Twilio's REST API is a local server.

The simulator runs in fast mode (caller audio sent as fast as possible, the gateway waited for in
real time): these tests check what reaches Rasa, not how fast (bench/whisper.py measures that).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from app.simulate import SimulationResult, Turn, load_wav, simulate_call
from tests.support.gateway import ACCOUNT_SID, AUTH_TOKEN, RunningGateway, running_gateway
from tests.support.rasa_bot import RasaBot
from tests.support.servers import running
from tests.support.twilio_api import TwilioApi
from tests.test_engines_offline_whisper import says

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures"
REPLY = "Entendido."


def caller(name: str) -> bytes:
    return load_wav(FIXTURES / f"{name}.wav")


def settings(**whisper: Any) -> Settings:
    """The defaults (stt.engine whisper, tts.engine espeak), with a one-word greeting."""
    return Settings().replace(greeting={"text": "{salutation}."},
                              stt={"whisper": {"max_queue_seconds": 60, **whisper}})


@pytest.fixture(scope="module")
def twilio() -> Iterator[tuple[TwilioApi, str]]:
    api = TwilioApi(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN)
    with running(api.app()) as server:
        yield api, server.url


@pytest.fixture(scope="module")
def gw(twilio: tuple[TwilioApi, str]) -> Iterator[RunningGateway]:
    bot = RasaBot(reply=lambda text: [{"recipient_id": "x", "text": REPLY}])
    with running_gateway(settings(), bot, twilio={"api_base_url": twilio[1]}) as gateway:
        assert gateway.gateway.stt.name == "whisper"
        yield gateway


async def call(gw: RunningGateway, *turns: Turn, **options: Any) -> SimulationResult:
    options = {"auth_token": AUTH_TOKEN, "realtime": False, "tail": 15, **options}
    return await simulate_call(gw.url, turns, **options)


def messages_of(gw: RunningGateway, result: SimulationResult) -> list[str]:
    return [r["message"] for r in gw.bot.requests if r["sender"] == result.call_sid]


async def test_a_spanish_request_reaches_rasa_with_its_words(gw: RunningGateway) -> None:
    result = await call(gw, Turn(audio=caller("spanish_bloquear")))
    (message,) = messages_of(gw, result)
    assert says(message, "quiero", "bloquear", "tarjeta", "credito"), message
    (request,) = [r for r in gw.bot.requests if r["sender"] == result.call_sid]
    assert request["metadata"]["channel"] == "twilio_voice_stream"
    assert result.latencies[0] is not None  # the reply was heard after the request
    assert result.protocol_errors == [] and result.close_code is None


async def test_noise_music_and_silence_reach_rasa_as_nothing(gw: RunningGateway) -> None:
    result = await call(gw, Turn(audio=caller("noise") + caller("silence") + caller("music")
                                 + caller("silence") + caller("hum") + caller("silence")
                                 + caller("es_echo") + caller("silence") * 3),
                        Turn(audio=caller("es_si_por_favor"), when="now"))
    (message,) = messages_of(gw, result)  # only the request after them
    assert says(message, "favor"), message


async def test_the_bots_own_echo_during_a_reply_is_no_turn(gw: RunningGateway) -> None:
    """A speakerphone sends the bot's voice back quietly while the reply plays: it interrupts
    nothing and reaches Rasa as nothing; the request after it does."""
    result = await call(gw, Turn(audio=caller("es_bloquear_tarjeta")),
                        Turn(audio=caller("es_echo"), when="bot_speaking"),
                        Turn(audio=caller("silence") + caller("es_si_por_favor")))
    messages = messages_of(gw, result)
    assert len(messages) == 2, messages  # nothing between the two requests
    assert says(messages[0], "bloquear") and says(messages[1], "favor"), messages
    assert result.clears == []
    assert result.protocol_errors == [] and result.close_code is None


def test_the_cli_simulator_speaks_spanish_to_the_gateway(gw: RunningGateway) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "app", "simulate", "--url", gw.url, "--auth-token", AUTH_TOKEN,
         "--wav", str(FIXTURES / "es_hablar_ejecutivo.wav"), "--fast", "--tail", "15"],
        cwd=ROOT, capture_output=True, text=True, timeout=90,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "turn latencies (end of caller speech -> first bot audio): " in done.stdout
    assert any(says(message, "hablar") for message in gw.bot.messages()), gw.bot.messages()


async def test_a_decoder_falling_behind_moves_the_call_to_gather(
    twilio: tuple[TwilioApi, str],
) -> None:
    """One decoder, and an utterance may wait 0.2 s for it: three requests at once (fast mode)
    make the second wait for the first's decode, and the call is degraded, not answered late."""
    api, url = twilio
    with running_gateway(settings(workers=1, max_queue_seconds=0.2), RasaBot(),
                         twilio={"api_base_url": url}) as gw:
        speech = caller("es_si_por_favor") + caller("es_no_gracias") + caller("es_perdi_credito")
        result = await call(gw, Turn(audio=speech, when="now"), tail=3)
        (update,) = await api.wait_for_updates(call_sid=result.call_sid)
        assert update.params["Url"] == f"{gw.url}/webhook/twilio/speech?degraded=1"
        assert len(messages_of(gw, result)) <= 1  # at most the first, decoded in time
