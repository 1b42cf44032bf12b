"""Interrupting the bot, in real time: the simulator sends 20 ms frames every 20 ms and plays the
gateway's audio on the wall clock, as Twilio and a phone would.

- Caller speech during a long Rasa reply makes the gateway send `clear` within 300 ms of the
  speech's onset (measured on the simulator's clock: onset of the caller's audio -> clear received).
- The end of the caller's own request (still "speech" for the VAD's hangover) does not clear a
  reply that starts quickly.
- Hanging up while the bot is speaking leaves no task behind on the server's event loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from app.simulate import Turn, simulate_call
from audio import mulaw
from tests.support.gateway import AUTH_TOKEN, RunningGateway, running_gateway
from tests.support.rasa_bot import RasaBot
from tests.support.servers import running
from tests.support.twilio_api import TwilioApi
from tests.test_e2e_call import caller, e2e_settings, synthesized_seconds

LONG_SENTENCES = ("Para bloquear su tarjeta necesito algunos datos.",
                  "Primero, dígame su nombre completo.")
LONG_REPLY = " ".join(LONG_SENTENCES)
SHORT_REPLY = "De acuerdo."


def reply(text: str) -> list[dict[str, Any]]:
    return [{"recipient_id": "x", "text": LONG_REPLY if text == "block my card" else SHORT_REPLY}]


@pytest.fixture(scope="module")
def gw() -> Iterator[RunningGateway]:
    api = TwilioApi()
    with running(api.app()) as twilio, running_gateway(
        e2e_settings(), RasaBot(reply=reply), twilio={"api_base_url": twilio.url}
    ) as gateway:
        gateway.twilio_api = api  # type: ignore[attr-defined]
        yield gateway


async def test_speech_during_a_reply_clears_it_within_300_ms(gw):
    result = await simulate_call(gw.url, [
        Turn(audio=caller("block_my_card")),
        Turn(audio=caller("no"), when="bot_speaking", delay=1.0),
    ], auth_token=AUTH_TOKEN, tail=10, speech_threshold=gw.settings.vad.energy_threshold)

    (clear,) = result.clears
    (delay,) = result.clear_delays()
    assert 0 < delay <= 0.3, result.timeline()
    # What was buffered is gone: silence right after the clear, until the next reply.
    heard = result.heard_pcm16()
    cut = int(clear * 16000)
    assert mulaw.rms(heard[cut - 3200:cut]) > 300 and mulaw.rms(heard[cut:cut + 3200]) < 50
    # The interrupting speech was recognized and answered.
    messages = [r["message"] for r in gw.bot.requests if r["sender"] == result.call_sid]
    assert messages == ["block my card", "no"]
    # The greeting, the interrupted reply, the answer to "no".
    assert len(result.times("bot_audio_start")) == 3, result.timeline()
    assert result.protocol_errors == []


async def test_a_prompt_reply_is_not_cleared_by_the_end_of_the_request():
    """The reply may start while the gateway's VAD is still in the hangover of the caller's
    request (the recognizer's final and Rasa can be faster than stt.endpoint_silence_ms): speech
    started before the reply must not interrupt it. A long hangover makes that race certain."""
    settings = e2e_settings().replace(stt={"endpoint_silence_ms": 1500})
    with running_gateway(settings, RasaBot(reply=reply)) as gw:
        result = await simulate_call(gw.url, [Turn(audio=caller("block_my_card"))],
                                     auth_token=AUTH_TOKEN, tail=10)
        reply_seconds = synthesized_seconds(gw, *LONG_SENTENCES)

    assert result.clears == [], result.timeline()
    assert gw.bot.messages() == ["block my card"]
    _, (start, stop) = zip(result.times("bot_audio_start"), result.times("bot_audio_stop"))
    assert stop - start == pytest.approx(reply_seconds, abs=0.2)


async def test_hanging_up_while_the_bot_speaks_leaves_no_task_running(gw):
    before = gw.tasks()
    result = await simulate_call(gw.url, [
        Turn(audio=caller("block_my_card")),
        Turn(when="bot_speaking", delay=0.5, hang_up=True),
    ], auth_token=AUTH_TOKEN)

    assert result.times("stop_sent")
    stop = result.times("stop_sent")[0]
    spans = list(zip(result.times("bot_audio_start"), result.times("bot_audio_stop")))
    assert len(spans) == 2, result.timeline()  # the greeting, and the reply cut by hanging up
    assert spans[1][0] < stop and spans[1][1] == pytest.approx(stop, abs=0.05)
    assert gw.wait_settled(before) == []
    assert gw.gateway.calls == {}
    assert gw.twilio_api.requests == []  # a caller hanging up needs no call control
