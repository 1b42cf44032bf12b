"""A TCP load balancer on a loopback port, as the one in front of several gateway instances.

Each new connection goes to one backend and its bytes are copied both ways until either side
closes: `first` takes the first backend that accepts the connection (a dead instance refuses and is
skipped, as a balancer's health check would), `round_robin` the next one in turn (so consecutive
requests of one call land on different instances). `cut()` resets every connection it carries, as
a network cut does; the backends themselves live on. It runs on a thread with its own event loop,
so it routes whatever the test's loop is doing.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from tests.support.servers import free_port

Policy = Literal["first", "round_robin"]
T = TypeVar("T")


class Balancer:
    def __init__(self, policy: Policy = "first") -> None:
        """Its URL is known at once (the instances' public URL); `route_to` gives the backends."""
        self.backends: list[tuple[str, int]] = []
        self.policy = policy
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.routed: list[int] = []  # per connection: the index of the backend it went to
        self._turn = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def route_to(self, urls: list[str]) -> None:
        """The backends, by base URL like http://127.0.0.1:5001, in order."""
        self.backends = [(urlsplit(url).hostname or "", urlsplit(url).port or 80) for url in urls]

    def start(self) -> Balancer:
        self._thread.start()
        self._server = self._run(asyncio.start_server(self._route, "127.0.0.1", self.port))
        return self

    def stop(self) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            self._abort_all()

        self._run(close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def cut(self) -> None:
        """Reset every connection carried now (new ones are routed as before)."""

        async def cut() -> None:
            self._abort_all()

        self._run(cut())

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def _abort_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def _order(self) -> list[int]:
        count = len(self.backends)
        if self.policy == "first":
            return list(range(count))
        start, self._turn = self._turn % count, self._turn + 1
        return [(start + i) % count for i in range(count)]

    async def _route(self, client_reader: asyncio.StreamReader,
                     client_writer: asyncio.StreamWriter) -> None:
        for index in self._order():
            try:
                reader, writer = await asyncio.open_connection(*self.backends[index])
            except OSError:  # refused: that instance is dead
                continue
            self.routed.append(index)
            self._writers |= {client_writer, writer}
            await asyncio.gather(self._pipe(client_reader, writer),
                                 self._pipe(reader, client_writer))
            return
        client_writer.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy until EOF, then close the other side (the peer sees what this side saw)."""
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        self._writers.discard(writer)
        writer.close()


@contextmanager
def balancing(policy: Policy = "first") -> Iterator[Balancer]:
    balancer = Balancer(policy).start()
    try:
        yield balancer
    finally:
        balancer.stop()
