"""The Rasa client sends a turn again only when Rasa cannot have seen it: the first attempt failed
to connect. Once a request may have reached Rasa, it is never resent. Real sockets throughout."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from prometheus_client import REGISTRY

from app.rasa import RasaClient
from streaming.ports import BotError, BotMessage
from tests.support.rasa_bot import RasaBot
from tests.support.servers import ServerThread
from tests.test_rasa_client import errors, rasa_settings

REPLY = b'[{"recipient_id": "CA1", "text": "hola"}]'


def retries() -> float:
    return REGISTRY.get_sample_value("gateway_rasa_retries_total") or 0.0


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
    before_retries, before_errors = retries(), errors("connect")
    try:
        assert await client.send("CA1", "hola", {}) == [BotMessage(text="Ha dicho: hola")]
    finally:
        logging.getLogger("app.rasa").removeHandler(handler)
        await client.aclose()
        server.stop()
        sock.close()
    assert [r["message"] for r in bot.requests] == ["hola"]
    assert retries() == before_retries + 1
    assert errors("connect") == before_errors
    assert [r.event for r in caplog.records if hasattr(r, "event")] == ["rasa_retry"]


async def test_refused_twice_is_a_connect_error_after_one_retry() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    client = RasaClient(rasa_settings(f"http://127.0.0.1:{sock.getsockname()[1]}"))
    before_retries, before_errors = retries(), errors("connect")
    try:
        with pytest.raises(BotError, match="connect"):
            await client.send("CA1", "hola", {})
    finally:
        await client.aclose()
        sock.close()
    assert retries() == before_retries + 1
    assert errors("connect") == before_errors + 1


async def test_connect_timeouts_are_retried_within_the_turns_timeout() -> None:
    """A full accept queue drops the SYN: the connection never completes."""
    with socket.socket() as rasa, socket.socket() as queued:
        rasa.bind(("127.0.0.1", 0))
        rasa.listen(0)
        queued.connect(rasa.getsockname())  # fills the queue; nobody accepts
        client = RasaClient(rasa_settings(f"http://127.0.0.1:{rasa.getsockname()[1]}",
                                          connect_timeout_seconds=0.3, timeout_seconds=5))
        before_retries, before_errors = retries(), errors("connect")
        started = time.monotonic()
        try:
            with pytest.raises(BotError, match="no connection within 0.3 s"):
                await client.send("CA1", "hola", {})
        finally:
            await client.aclose()
    assert 0.5 < time.monotonic() - started < 3
    assert retries() == before_retries + 1
    assert errors("connect") == before_errors + 1


class _DroppingRasa:
    """Reads whole HTTP requests (headers and body) and records them; answers the first
    `answered` on the same keep-alive connection, then drops the connection after reading the
    next one (`how`: "close" sends a FIN, "reset" an RST, "unread" closes before reading)."""

    def __init__(self, how: str, answered: int = 0) -> None:
        self.how, self.answered = how, answered
        self.connections = 0
        self.requests: list[dict[str, object]] = []

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        try:
            yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        finally:
            server.close()
            await server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while self.how != "unread":
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length: *(\d+)", head)[1])
                self.requests.append(json.loads(await reader.readexactly(length)))
                if len(self.requests) > self.answered:
                    break
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(REPLY), REPLY))
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        if self.how == "reset":  # SO_LINGER 0: close() sends an RST
            writer.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()


@pytest.mark.parametrize("how", ["close", "reset", "unread"])
async def test_a_request_that_may_have_reached_rasa_is_never_sent_again(how: str) -> None:
    rasa = _DroppingRasa(how)
    async with rasa.serving() as url:
        client = RasaClient(rasa_settings(url))
        before = retries()
        try:
            with pytest.raises(BotError, match="transport"):
                await client.send("CA1", "hola", {})
        finally:
            await client.aclose()
    assert rasa.connections == 1
    assert [r["message"] for r in rasa.requests] == ([] if how == "unread" else ["hola"])
    assert retries() == before


async def test_a_pooled_connection_dropped_after_the_request_is_not_sent_again() -> None:
    """The stale keep-alive case: the second turn goes out on the connection the first used, Rasa
    reads it and the connection dies. Rasa may have taken the turn, so it is not resent."""
    rasa = _DroppingRasa("close", answered=1)
    async with rasa.serving() as url:
        client = RasaClient(rasa_settings(url))
        before = retries()
        try:
            assert await client.send("CA1", "uno", {}) == [BotMessage(text="hola")]
            with pytest.raises(BotError, match="transport"):
                await client.send("CA1", "dos", {})
        finally:
            await client.aclose()
    assert rasa.connections == 1
    assert [r["message"] for r in rasa.requests] == ["uno", "dos"]
    assert retries() == before
