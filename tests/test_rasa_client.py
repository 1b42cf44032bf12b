"""The Rasa client against a real Rasa-compatible HTTP server on loopback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from app.rasa import RasaClient
from streaming.ports import BotError, BotMessage
from tests.support.rasa_bot import RasaBot
from tests.support.rasa_client import rasa_errors, rasa_settings
from tests.support.servers import free_port, running


@pytest.fixture
def blackhole() -> Iterator[str]:
    """A port that accepts TCP connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


async def test_send_posts_the_rest_channel_body(bot: RasaBot, bot_server: tuple) -> None:
    client = RasaClient(rasa_settings(bot_server[1].url))
    try:
        metadata = {
            "from": "+34600111222",
            "to": "+34910000000",
            "call_sid": "CA1",
            "channel": "twilio_voice_stream",
            "input": "speech",
        }
        replies = await client.send("CA1", "quiero bloquear mi tarjeta", metadata)
    finally:
        await client.aclose()
    assert replies == [BotMessage(text="Ha dicho: quiero bloquear mi tarjeta")]
    assert bot.requests == [
        {"sender": "CA1", "message": "quiero bloquear mi tarjeta", "metadata": metadata}
    ]


async def test_reply_parsing(bot: RasaBot, bot_server: tuple) -> None:
    bot.reply = lambda text: [
        {"recipient_id": "CA1", "text": "Elija una opción", "buttons": [{"title": "Sí"}]},
        {"recipient_id": "CA1", "custom": {"action": "transfer"}},
        {"recipient_id": "CA1", "image": "https://example.invalid/a.png"},
        {"recipient_id": "CA1", "text": 5},
        "not a message",
        {"recipient_id": "CA1", "text": "Adiós", "custom": {"action": "hangup"}},
    ]
    client = RasaClient(rasa_settings(bot_server[1].url))
    try:
        replies = await client.send("CA1", "hola", {})
    finally:
        await client.aclose()
    assert replies == [
        BotMessage(text="Elija una opción"),
        BotMessage(custom={"action": "transfer"}),
        BotMessage(text="Adiós", custom={"action": "hangup"}),
    ]


@pytest.mark.parametrize(
    ("mode", "kind"),
    [
        ("error", "http_status"),
        ("garbage", "invalid_json"),
        ("not_a_list", "invalid_reply"),
        ("bad_gzip", "invalid_reply"),
        ("slow", "timeout"),
    ],
)
async def test_unusable_answers_raise_bot_error(
    bot: RasaBot, bot_server: tuple, mode: str, kind: str
) -> None:
    bot.mode = mode
    bot.delay_seconds = 2.0 if mode == "slow" else 0.0
    client = RasaClient(rasa_settings(bot_server[1].url, timeout_seconds=0.3))
    before = rasa_errors(kind)
    try:
        with pytest.raises(BotError, match=kind):
            await client.send("CA1", "hola", {})
    finally:
        await client.aclose()
    assert rasa_errors(kind) == before + 1


async def test_connection_refused_raises_bot_error() -> None:
    client = RasaClient(rasa_settings(f"http://127.0.0.1:{free_port()}"))
    before = rasa_errors("connect")
    try:
        with pytest.raises(BotError, match="connect"):
            await client.send("CA1", "hola", {})
        assert await client.is_reachable() is False
        assert client.last_known_reachable is False
    finally:
        await client.aclose()
    assert rasa_errors("connect") == before + 1


async def test_total_timeout_bounds_a_server_that_never_answers(blackhole: str) -> None:
    client = RasaClient(rasa_settings(blackhole, timeout_seconds=0.3, connect_timeout_seconds=0.3))
    try:
        with pytest.raises(BotError, match="timeout"):
            await client.send("CA1", "hola", {})
    finally:
        await client.aclose()


async def test_reachability_is_cached() -> None:
    bot = RasaBot()
    with running(bot.app()) as server:
        cached = RasaClient(rasa_settings(server.url, health_cache_seconds=3600))
        fresh = RasaClient(rasa_settings(server.url, health_cache_seconds=0.001))
        assert cached.last_known_reachable is None
        assert cached.health_url == f"{server.url}/"
        assert await cached.is_reachable() is True
        assert await fresh.is_reachable() is True
    try:
        assert await cached.is_reachable() is True  # within the cache window: no new request
        await asyncio.sleep(0.01)
        assert await fresh.is_reachable() is False
        assert REGISTRY.get_sample_value("gateway_rasa_reachable") == 0
    finally:
        await cached.aclose()
        await fresh.aclose()


async def test_refresh_runs_in_background_and_aclose_cancels_it(blackhole: str) -> None:
    client = RasaClient(rasa_settings(blackhole, connect_timeout_seconds=30))
    client.refresh_soon()
    client.refresh_soon()  # one check at a time
    await asyncio.sleep(0.05)
    assert client.last_known_reachable is None  # still waiting on the silent server
    others = {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}
    assert len(others) == 1
    await client.aclose()
    assert all(t.done() for t in others)


async def test_background_refresh_learns_reachability(bot_server: tuple) -> None:
    client = RasaClient(rasa_settings(bot_server[1].url))
    try:
        client.refresh_soon()
        for _ in range(200):
            if client.last_known_reachable is not None:
                break
            await asyncio.sleep(0.01)
        assert client.last_known_reachable is True
    finally:
        await client.aclose()


async def test_a_connection_rasa_closed_while_idle_is_not_reused() -> None:
    """Rasa's server closes idle keep-alive connections (Sanic: after 5 s); the next request must
    open a new one rather than fail on the closed one."""
    bot = RasaBot()
    with running(bot.app(), timeout_keep_alive=0.2) as server:
        client = RasaClient(rasa_settings(server.url))
        before = sum(rasa_errors(kind) for kind in ("connect", "transport", "timeout"))
        try:
            for _ in range(3):
                assert await client.send("CA1", "hola", {}) == [BotMessage(text="Ha dicho: hola")]
                await asyncio.sleep(0.5)  # the server has closed the connection by now
        finally:
            await client.aclose()
    assert sum(rasa_errors(kind) for kind in ("connect", "transport", "timeout")) == before
    assert len(bot.requests) == 3
