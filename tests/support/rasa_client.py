"""What the Rasa client tests share: the client's settings for a bot at a base URL, its
counters as the registry holds them, and a raw HTTP "Rasa" that drops connections on purpose."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from prometheus_client import REGISTRY

from app.config import RasaSettings, Settings

REPLY = b'[{"recipient_id": "CA1", "text": "hola"}]'


def rasa_settings(base: str, **changes: object) -> RasaSettings:
    return Settings().replace(rasa={"url": f"{base}/webhooks/rest/webhook", **changes}).rasa


def rasa_errors(kind: str) -> float:
    return REGISTRY.get_sample_value("gateway_rasa_errors_total", {"kind": kind}) or 0.0


def rasa_retries() -> float:
    return REGISTRY.get_sample_value("gateway_rasa_retries_total") or 0.0


class DroppingRasa:
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
