"""Call control end to end: the real gateway, a Twilio-side websocket, the local Twilio Calls API.

The test plays Twilio twice over: the media stream's far end (it echoes marks the way Twilio does
once audio has played, or holds them to stand for audio still playing) and the REST API that
receives the live-call updates (tests/support/twilio_api.py).
"""

from __future__ import annotations

import asyncio
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from app.config import Settings
from app.prompts import greeting_text
from streaming.twilio_side import TwilioSide
from tests.support.gateway import ACCOUNT_SID, AUTH_TOKEN, RunningGateway, running_gateway
from tests.support.google_fakes import FakeSpeechServer
from tests.support.rasa_bot import RasaBot
from tests.support.servers import ServerThread, running
from tests.support.twilio_api import TwilioApi
from tests.support.twilio_sign import answered, asigned_post, call_params, signed_headers
from tests.support.caller_audio import SILENT_FRAME, frames, tone

CALL = "CA" + "e2e1" * 8
AGENT = "+34911234567"
GOODBYE = "Gracias por llamar. Adiós."
# Mark names follow the session's g{generation}-s{sequence}; only their order matters here.


@pytest.fixture(scope="module")
def twilio() -> Iterator[tuple[TwilioApi, ServerThread]]:
    api = TwilioApi(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN)
    with running(api.app()) as server:
        yield api, server


@pytest.fixture
def api(twilio: tuple[TwilioApi, ServerThread]) -> TwilioApi:
    api = twilio[0]
    api.mode = "ok"
    api.requests.clear()
    api.ended.clear()
    return api


def sections(twilio: tuple[TwilioApi, ServerThread], **changes: Any) -> dict[str, Any]:
    """Settings.replace sections: Twilio's API is the local one, null engines unless changed."""
    return {
        "twilio": {"api_base_url": twilio[1].url, "fallback_phone_number": AGENT},
        "stt": {"engine": "null"},
        "tts": {"engine": "null"},
        **changes,
    }


class TwilioLeg:
    """Twilio's end of one media stream. Marks are echoed at once unless `hold` is set, which
    stands for audio still playing: held marks go back on `release` (or on a `clear`)."""

    def __init__(self, ws: ClientConnection, stream: TwilioSide) -> None:
        self.ws, self.stream = ws, stream
        self.marks: list[str] = []
        self.held: list[str] = []
        self.hold = False
        self.closed = asyncio.Event()

    async def receive(self) -> None:
        try:
            async for data in self.ws:
                message = self.stream.read(data)
                if message["event"] == "mark":
                    name = message["mark"]["name"]
                    self.marks.append(name)
                    if self.hold:
                        self.held.append(name)
                    else:
                        await self.ws.send(self.stream.mark(name))
                elif message["event"] == "clear":
                    await self.release()
        finally:
            self.closed.set()

    async def release(self, count: int | None = None) -> None:
        names = self.held[:count]
        del self.held[:len(names)]
        for name in names:
            await self.ws.send(self.stream.mark(name))

    async def wait_marks(self, count: int, timeout: float = 15.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.marks) < count:
                await asyncio.sleep(0.01)

    async def play(self, audio: bytes) -> None:
        """Send caller audio as Twilio does: one 20 ms frame every 20 ms."""
        for frame in frames(audio):
            await self.ws.send(self.stream.media(frame))
            await asyncio.sleep(0.02)

    async def press(self, keys: str) -> None:
        for key in keys:
            await self.ws.send(self.stream.dtmf(key))

    async def stop(self) -> None:
        """What Twilio does once a REST update took the call away from the stream."""
        await self.ws.send(self.stream.stop())
        await self.ws.close()


@asynccontextmanager
async def stream_call(gw: RunningGateway) -> AsyncIterator[TwilioLeg]:
    url = gw.url.replace("http://", "ws://") + "/webhook/twilio/stream"
    stream = answered(TwilioSide(call_sid=CALL, account_sid=ACCOUNT_SID), AUTH_TOKEN)
    async with connect(url, additional_headers=signed_headers(url, token=AUTH_TOKEN),
                       proxy=None) as ws:
        leg = TwilioLeg(ws, stream)
        receiver = asyncio.create_task(leg.receive())
        try:
            await ws.send(stream.connected())
            await ws.send(stream.start())
            yield leg
        finally:
            receiver.cancel()
            await asyncio.gather(receiver, return_exceptions=True)


async def greeted(leg: TwilioLeg, settings: Settings) -> int:
    """Wait until the greeting has played (its marks came back); the number of marks so far."""
    assert greeting_text(settings).endswith(". ¿En qué puedo ayudarle?")  # the default text
    count = 2  # its two sentences, one mark each
    await leg.wait_marks(count)
    return count


async def no_live_calls(gw: RunningGateway) -> None:
    deadline = time.monotonic() + 10
    while gw.gateway.calls:
        assert time.monotonic() < deadline, f"calls still live: {list(gw.gateway.calls)}"
        await asyncio.sleep(0.05)


async def test_the_goodbye_is_heard_before_the_hang_up_request(
    twilio: tuple[TwilioApi, ServerThread], api: TwilioApi
) -> None:
    bot = RasaBot(reply=lambda text: [{"text": GOODBYE}, {"custom": {"action": "hangup"}}])
    with running_gateway(bot=bot, **sections(twilio)) as gw:
        async with stream_call(gw) as leg:
            before = await greeted(leg, gw.settings)
            leg.hold = True  # from now on, audio takes time to play
            await leg.press("1#")
            sentences = 2  # "Gracias por llamar." and "Adiós.", one mark each
            await leg.wait_marks(before + sentences)
            assert bot.messages() == ["1"]

            await asyncio.sleep(0.5)
            assert api.requests == [], "hung up while the goodbye was still playing"
            await leg.release(1)
            await asyncio.sleep(0.5)
            assert api.requests == [], "hung up before the goodbye's last sentence played"
            echoed_at = time.monotonic()
            await leg.release()

            [update] = await api.wait_for_updates(call_sid=CALL)
            assert update.params == {"Status": "completed"}
            assert update.received_at > echoed_at
            await leg.stop()
        await no_live_calls(gw)


async def test_a_transfer_payload_dials_that_number_with_the_observed_base_url(
    twilio: tuple[TwilioApi, ServerThread], api: TwilioApi
) -> None:
    bot = RasaBot(reply=lambda text: [{"custom": {"action": "transfer", "number": "+34600999888"}}])
    with running_gateway(bot=bot, **sections(twilio)) as gw:
        async with stream_call(gw) as leg:
            await greeted(leg, gw.settings)
            await leg.press("2#")
            [update] = await api.wait_for_updates(call_sid=CALL)
            await leg.stop()
        await no_live_calls(gw)

    root = ET.fromstring(update.twiml or "")
    say, dial = list(root)
    assert say.text == gw.settings.prompts.transfer
    assert [(n.tag, n.text) for n in dial] == [("Number", "+34600999888")]
    # public_url is empty: the action is built on the base URL the websocket request came to.
    assert dial.get("action") == f"{gw.url}/webhook/twilio/fallback?dialed=1"


async def test_an_stt_failure_moves_the_call_to_gather_and_the_conversation_goes_on(
    twilio: tuple[TwilioApi, ServerThread], api: TwilioApi
) -> None:
    # Stream 0 delivers one final for the first 500 ms of audio, then breaks on its next request;
    # the engine reconnects once, and the new stream breaks before any result: the STT is down.
    speech = FakeSpeechServer(final_every=4000, fail_after={0: 6, 1: 1})
    address = await speech.start()
    stt = {"engine": "google",
           "google": {"endpoint": address, "insecure": True, "timeout_seconds": 5}}
    try:
        with running_gateway(bot=RasaBot(), **sections(twilio, stt=stt)) as gw:
            async with stream_call(gw) as leg:
                marks = await greeted(leg, gw.settings)
                await leg.play(tone(500))
                async with asyncio.timeout(10):
                    while not gw.bot.requests:
                        await asyncio.sleep(0.01)
                stream_turn = gw.bot.requests[0]
                assert stream_turn["metadata"]["channel"] == "twilio_voice_stream"
                # The echo reply plays through, then the recognizer breaks mid-call.
                await leg.wait_marks(marks + 1)
                assert api.requests == []
                await leg.play(SILENT_FRAME * 15)

                [update] = await api.wait_for_updates(call_sid=CALL)
                await leg.stop()
            await no_live_calls(gw)

            assert update.params == {
                "Url": f"{gw.url}/webhook/twilio/speech?degraded=1", "Method": "POST"}
            async with httpx.AsyncClient(timeout=10) as http:
                params = call_params(CALL, AccountSid=ACCOUNT_SID)
                resumed = await asigned_post(http, update.url or "", params, token=AUTH_TOKEN)
                assert resumed.status_code == 200, resumed.text
                gather = ET.fromstring(resumed.text).find("Gather")
                assert gather is not None
                assert gather.findtext("Say") == gw.settings.prompts.degraded
                turn = await asigned_post(http, gather.get("action", ""),
                                          {**params, "SpeechResult": "quiero bloquear mi tarjeta",
                                           "Confidence": "0.91"}, token=AUTH_TOKEN)
                assert turn.status_code == 200, turn.text
    finally:
        await speech.stop()

    senders = {request["sender"] for request in gw.bot.requests}
    assert senders == {CALL}
    last = gw.bot.requests[-1]
    assert last["message"] == "quiero bloquear mi tarjeta"
    assert last["metadata"]["channel"] == "twilio_voice_gather"
    assert "Ha dicho: quiero bloquear mi tarjeta" in turn.text
