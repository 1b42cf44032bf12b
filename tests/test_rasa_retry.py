"""The Rasa client sends a turn again only when Rasa cannot have seen it: the first attempt failed
to connect. Once a request may have reached Rasa, it is never resent. Real sockets throughout."""

from __future__ import annotations

import logging
import socket
import time

import pytest

from app.rasa import RasaClient
from streaming.ports import BotError, BotMessage
from tests.support.rasa_bot import RasaBot
from tests.support.rasa_client import DroppingRasa, rasa_errors, rasa_retries, rasa_settings
from tests.support.servers import ServerThread


class _ComesUpOnRetry(logging.Handler):
    """Starts listening the moment the client says it will send again, as a restarted Rasa
    (or another replica behind the same address) would be up by then."""

    def __init__(self, sock: socket.socket, server: ServerThread) -> None:
        super().__init__()
        self.sock, self.server = sock, server

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "event", None) == "rasa_retry":
            self.sock.listen(16)  # the retry's connection waits in the backlog for the server
            self.server.start()


async def test_a_refused_connection_is_sent_again_at_once_and_rasa_gets_it_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bot = RasaBot()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound but not listening: every connection is refused
    server = ServerThread(bot.app(), sock=sock)
    handler = _ComesUpOnRetry(sock, server)
    caplog.set_level(logging.INFO, logger="app.rasa")
    logging.getLogger("app.rasa").addHandler(handler)
    client = RasaClient(rasa_settings(server.url))
    before_retries, before_errors = rasa_retries(), rasa_errors("connect")
    try:
        assert await client.send("CA1", "hola", {}) == [BotMessage(text="Ha dicho: hola")]
    finally:
        logging.getLogger("app.rasa").removeHandler(handler)
        await client.aclose()
        server.stop()
        sock.close()
    assert [r["message"] for r in bot.requests] == ["hola"]
    assert rasa_retries() == before_retries + 1
    assert rasa_errors("connect") == before_errors
    assert [r.event for r in caplog.records if hasattr(r, "event")] == ["rasa_retry"]


async def test_refused_twice_is_a_connect_error_after_one_retry() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    client = RasaClient(rasa_settings(f"http://127.0.0.1:{sock.getsockname()[1]}"))
    before_retries, before_errors = rasa_retries(), rasa_errors("connect")
    try:
        with pytest.raises(BotError, match="connect"):
            await client.send("CA1", "hola", {})
    finally:
        await client.aclose()
        sock.close()
    assert rasa_retries() == before_retries + 1
    assert rasa_errors("connect") == before_errors + 1


async def test_connect_timeouts_are_retried_within_the_turns_timeout() -> None:
    """A full accept queue drops the SYN: the connection never completes."""
    with socket.socket() as rasa, socket.socket() as queued:
        rasa.bind(("127.0.0.1", 0))
        rasa.listen(0)
        queued.connect(rasa.getsockname())  # fills the queue; nobody accepts
        client = RasaClient(rasa_settings(f"http://127.0.0.1:{rasa.getsockname()[1]}",
                                          connect_timeout_seconds=0.3, timeout_seconds=5))
        before_retries, before_errors = rasa_retries(), rasa_errors("connect")
        started = time.monotonic()
        try:
            with pytest.raises(BotError, match="no connection within 0.3 s"):
                await client.send("CA1", "hola", {})
        finally:
            await client.aclose()
    assert 0.5 < time.monotonic() - started < 3
    assert rasa_retries() == before_retries + 1
    assert rasa_errors("connect") == before_errors + 1


@pytest.mark.parametrize("how", ["close", "reset", "unread"])
async def test_a_request_that_may_have_reached_rasa_is_never_sent_again(how: str) -> None:
    rasa = DroppingRasa(how)
    async with rasa.serving() as url:
        client = RasaClient(rasa_settings(url))
        before = rasa_retries()
        try:
            with pytest.raises(BotError, match="transport"):
                await client.send("CA1", "hola", {})
        finally:
            await client.aclose()
    assert rasa.connections == 1
    assert [r["message"] for r in rasa.requests] == ([] if how == "unread" else ["hola"])
    assert rasa_retries() == before


async def test_a_pooled_connection_dropped_after_the_request_is_not_sent_again() -> None:
    """The stale keep-alive case: the second turn goes out on the connection the first used, Rasa
    reads it and the connection dies. Rasa may have taken the turn, so it is not resent."""
    rasa = DroppingRasa("close", answered=1)
    async with rasa.serving() as url:
        client = RasaClient(rasa_settings(url))
        before = rasa_retries()
        try:
            assert await client.send("CA1", "uno", {}) == [BotMessage(text="hola")]
            with pytest.raises(BotError, match="transport"):
                await client.send("CA1", "dos", {})
        finally:
            await client.aclose()
    assert rasa.connections == 1
    assert [r["message"] for r in rasa.requests] == ["uno", "dos"]
    assert rasa_retries() == before
