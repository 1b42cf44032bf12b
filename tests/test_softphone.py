"""The softphone's server side on the real app: the page and its websocket behind the token, the
Twilio media-stream loop behind it, the timeline and the endings the page is told about.

Driven with the `websockets` client speaking what the page speaks; the page itself runs in a real
browser in tests/test_softphone_browser.py. Null engines: the null recognizer "hears" a sentence
where a frame of 0x00 bytes is sent.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from streaming.twilio_side import TwilioSide
from tests.support.caller_audio import SILENT_FRAME
from tests.support.gateway import AUTH_TOKEN, RunningGateway, running_gateway
from tests.support.rasa_bot import RasaBot
from tests.support.gateway_process import LiveCall
from tests.support.twilio_sign import answered, signed_headers

TOKEN = "softphone-test-token-0123456789"
AGENT = "+34911234567"
END_OF_SENTENCE = [SILENT_FRAME] * 5 + [b"\x00" * 160] + [SILENT_FRAME] * 5
SOFTPHONE_EVENTS = {"timeline", "call_ended"}


@pytest.fixture(scope="module")
def gw() -> Iterator[RunningGateway]:
    with running_gateway(
        stt={"engine": "null"}, tts={"engine": "null"},
        server={"softphone": {"enabled": True, "token": TOKEN}},
        twilio={"fallback_phone_number": AGENT, "api_base_url": "http://127.0.0.1:9"},
        greeting={"text": "{salutation}."},
    ) as gateway:
        yield gateway


@pytest.fixture
def bot(gw: RunningGateway) -> RasaBot:
    gw.bot.reply = RasaBot.reply
    gw.bot.requests.clear()
    return gw.bot


def ws_url(gw: RunningGateway, path: str = "/softphone/stream") -> str:
    return gw.url.replace("http://", "ws://") + path


def open_softphone(gw: RunningGateway, subprotocols: list[str] | None = None,
                   **options: Any) -> Any:
    offered = ["softphone", f"token.{TOKEN}"] if subprotocols is None else subprotocols
    return connect(ws_url(gw, options.pop("path", "/softphone/stream")), proxy=None,
                   open_timeout=10, max_queue=None, subprotocols=offered or None, **options)


async def closed_with(ws: ClientConnection) -> tuple[int | None, str]:
    with pytest.raises(ConnectionClosed) as info:
        while True:
            await asyncio.wait_for(ws.recv(), 5)
    received = info.value.rcvd
    return (received.code, received.reason) if received else (None, "")


class Page:
    """What tests/test_softphone_browser.py's page does on the wire: Twilio's messages out, marks
    echoed as soon as they come (the audio "plays" at once), everything received kept."""

    def __init__(self, ws: ClientConnection, call_sid: str) -> None:
        self.ws = ws
        self.twilio = TwilioSide(call_sid=call_sid, stream_sid="MZ" + call_sid[-32:],
                                   from_number="softphone", to_number="softphone")
        self.received: list[dict[str, Any]] = []

    async def start(self) -> None:
        await self.ws.send(self.twilio.connected())
        await self.ws.send(self.twilio.start())

    async def greeted(self) -> None:
        """The one-sentence greeting has played (its mark echoed): the caller may speak."""
        if not any(m["event"] == "mark" for m in self.received):
            await self.until(lambda m: m["event"] == "mark")

    async def say_something(self) -> None:
        for frame in END_OF_SENTENCE:
            await self.ws.send(self.twilio.media(frame))

    async def until(self, wanted: Callable[[dict[str, Any]], bool],
                    timeout: float = 10) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                message = self.twilio.read(await self.ws.recv(), SOFTPHONE_EVENTS)
                self.received.append(message)
                if message["event"] == "mark":
                    await self.ws.send(self.twilio.mark(message["mark"]["name"]))
                if wanted(message):
                    return message

    async def timeline(self, kind: str) -> dict[str, Any]:
        message = await self.until(lambda m: m["event"] == "timeline"
                                   and m["timeline"]["kind"] == kind)
        return message["timeline"]

    async def ended(self) -> dict[str, Any]:
        return (await self.until(lambda m: m["event"] == "call_ended"))["call_ended"]

    async def hang_up(self) -> None:
        await self.ws.send(self.twilio.stop())


def reply(*messages: dict[str, Any]) -> Callable[[str], list[dict[str, Any]]]:
    return lambda text: [{"recipient_id": "x", **message} for message in messages]


async def wait_no_calls(gw: RunningGateway, before: set[asyncio.Task[Any]]) -> None:
    assert await asyncio.to_thread(gw.wait_settled, before) == []


def test_off_by_default() -> None:
    with running_gateway(stt={"engine": "null"}, tts={"engine": "null"}) as gateway:
        for path in ("/softphone", "/softphone/static/softphone.js"):
            assert httpx.get(f"{gateway.url}{path}?token={TOKEN}").status_code == 404

        async def upgrade() -> None:
            with pytest.raises(InvalidStatus):
                async with connect(ws_url(gateway), proxy=None,
                                   subprotocols=["softphone", f"token.{TOKEN}"]):
                    pass

        asyncio.run(upgrade())


def test_the_page_requires_the_token(gw: RunningGateway) -> None:
    for query in ("", "?token=", "?token=wrong-token-0123456789", f"?token={TOKEN}x"):
        response = httpx.get(f"{gw.url}/softphone{query}")
        assert response.status_code == 403, query
        assert "token" in response.text
    page = httpx.get(f"{gw.url}/softphone", params={"token": TOKEN})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert 'src="softphone/static/softphone.js"' in page.text
    # The scripts are the same for everyone and hold nothing: served without the token.
    for asset in ("softphone.js", "capture-worklet.js", "g711.js", "softphone.css"):
        response = httpx.get(f"{gw.url}/softphone/static/{asset}")
        assert response.status_code == 200, asset
    assert "javascript" in httpx.get(f"{gw.url}/softphone/static/g711.js").headers["content-type"]


@pytest.mark.parametrize("offered", [
    [],                                                  # nothing offered
    ["softphone"],                                       # no token
    ["softphone", "token.wrong-token-0123456789"],       # wrong token
    ["softphone", f"token.{TOKEN[:-1]}"],                # a prefix of the token
])
async def test_the_websocket_requires_the_token(gw: RunningGateway, offered: list[str]) -> None:
    before = gw.tasks()
    async with open_softphone(gw, offered) as ws:
        assert ws.subprotocol == ("softphone" if offered else None)
        assert await closed_with(ws) == (1008, "missing or wrong softphone token")
    assert gw.gateway.calls == {}
    await wait_no_calls(gw, before)


async def test_a_twilio_signature_is_not_a_softphone_token_and_vice_versa(
        gw: RunningGateway) -> None:
    url = ws_url(gw)
    async with connect(url, proxy=None, additional_headers=signed_headers(url, token=AUTH_TOKEN),
                       subprotocols=["softphone"]) as ws:
        assert (await closed_with(ws))[0] == 1008
    async with open_softphone(gw, path="/webhook/twilio/stream") as ws:
        assert await closed_with(ws) == (1008, "invalid X-Twilio-Signature")


async def test_a_call_tells_the_page_its_timeline_and_ends_on_hang_up(
        gw: RunningGateway, bot: RasaBot) -> None:
    bot.reply = reply({"text": "Ha dicho hola."}, {"custom": {"action": "hangup"}})
    before = gw.tasks()
    async with open_softphone(gw) as ws:
        page = Page(ws, "softphone-" + "a1" * 16)
        await page.start()
        assert await page.timeline("prompt") == {"kind": "prompt", "name": "greeting",
                                                 "text": gw.gateway.calls[page.twilio.call_sid]
                                                 .config.greeting}
        await page.greeted()
        await page.say_something()
        said = await page.timeline("caller_input")
        assert said == {"kind": "caller_input", "text": "hola", "source": "speech"}
        assert (await page.timeline("bot_reply"))["messages"] == [
            {"text": "Ha dicho hola.", "custom": None},
            {"text": None, "custom": {"action": "hangup"}}]
        request = bot.requests[0]
        assert (request["sender"], request["message"]) == (page.twilio.call_sid, "hola")
        assert request["metadata"]["from"] == "softphone"
        latency = await page.timeline("turn_latency")
        assert latency["total_ms"] >= latency["bot_ms"] > 0
        # the hang-up comes once the reply has played (its mark was echoed)
        assert await page.ended() == {"action": "hang_up"}
        kinds = [m["event"] for m in page.received]
        assert kinds.index("call_ended") > max(i for i, k in enumerate(kinds) if k == "mark")
        await page.hang_up()
        assert (await closed_with(ws))[0] == 1000
    await wait_no_calls(gw, before)


@pytest.mark.parametrize("custom, number", [
    ({"action": "transfer", "number": "+34919876543"}, "+34919876543"),
    ({"action": "transfer"}, AGENT),  # twilio.fallback_phone_number
])
async def test_a_transfer_ends_the_call_on_the_page(gw: RunningGateway, bot: RasaBot,
                                                    custom: dict[str, str], number: str) -> None:
    bot.reply = reply({"text": "Le paso."}, {"custom": custom})
    before = gw.tasks()
    async with open_softphone(gw) as ws:
        page = Page(ws, "softphone-" + "b2" * 16)
        await page.start()
        await page.greeted()
        await page.say_something()
        assert await page.ended() == {"action": "transfer", "number": number}
        await page.hang_up()
        assert (await closed_with(ws))[0] == 1000
    await wait_no_calls(gw, before)


async def test_card_numbers_reach_rasa_but_only_masked_reach_the_page(
        gw: RunningGateway, bot: RasaBot) -> None:
    pan = "4539148803436467"
    async with open_softphone(gw) as ws:
        page = Page(ws, "softphone-" + "c3" * 16)
        await page.start()
        for digit in pan + "#":
            await ws.send(page.twilio.dtmf(digit))
        said = await page.timeline("caller_input")
        assert said == {"kind": "caller_input", "text": "************6467", "source": "dtmf"}
        answer = await page.timeline("bot_reply")  # the test bot repeats what it was sent
        assert answer["messages"][0]["text"] == "Ha dicho: ************6467"
        assert bot.requests[0]["message"] == pan  # the bot needs the number itself
        assert pan not in json.dumps(page.received)
        await page.hang_up()


async def test_twilio_streams_get_no_softphone_messages(gw: RunningGateway,
                                                        bot: RasaBot) -> None:
    url = ws_url(gw, "/webhook/twilio/stream")
    async with connect(url, proxy=None, max_queue=None,
                       additional_headers=signed_headers(url, token=AUTH_TOKEN)) as ws:
        page = Page(ws, "CA" + "d4" * 16)  # the same messages Twilio sends
        answered(page.twilio, AUTH_TOKEN)  # with the parameters of our TwiML
        await page.start()
        await page.greeted()
        await page.say_something()
        async with asyncio.timeout(10):
            while not bot.requests:
                await asyncio.sleep(0.02)
        with pytest.raises(TimeoutError):  # everything the call sends, until it goes quiet
            await page.until(lambda m: False, timeout=1.5)
        await page.hang_up()
    kinds = {m["event"] for m in page.received}
    assert kinds and kinds <= {"media", "mark", "clear"}
    assert not kinds & SOFTPHONE_EVENTS


async def test_a_softphone_call_never_replaces_a_phone_calls_session(gw: RunningGateway,
                                                                     bot: RasaBot) -> None:
    """The softphone's CallSids live in their own namespace: a page naming a live phone call's
    CallSid gets a call of its own, and the phone call's session is left alone."""
    phone_sid = "CA" + "e7" * 16
    before = gw.tasks()
    async with LiveCall.open(ws_url(gw, "/webhook/twilio/stream"), phone_sid,
                             token=AUTH_TOKEN) as phone:
        async with asyncio.timeout(5):
            while phone_sid not in gw.gateway.calls:
                await asyncio.sleep(0.01)
        phone_session = gw.gateway.calls[phone_sid]
        async with open_softphone(gw) as ws:
            page = Page(ws, phone_sid)
            await page.start()
            await page.greeted()
            assert sorted(gw.gateway.calls) == [phone_sid, "softphone-" + phone_sid]
            assert gw.gateway.calls[phone_sid] is phone_session and not phone_session.closed
            await page.say_something()
            await page.timeline("bot_reply")
            assert [r["sender"] for r in bot.requests] == ["softphone-" + phone_sid]
            await page.hang_up()
            assert (await closed_with(ws))[0] == 1000
        await phone.turn(bot)  # the phone call goes on, its own conversation
        assert [r["sender"] for r in bot.requests][-1] == phone_sid
        await phone.ws.send(phone.twilio.stop())
        assert await phone.closed_with() == 1000
    await wait_no_calls(gw, before)
