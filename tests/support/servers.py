"""Real servers on loopback ports for the tests: the gateway itself and other ASGI apps."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerThread:
    """Runs an ASGI app with uvicorn in a background thread with its own event loop."""

    def __init__(self, app: Any, port: int | None = None, sock: socket.socket | None = None,
                 **config: Any) -> None:
        """`sock`: serve on this bound socket (listening from when the server starts)."""
        self.port = sock.getsockname()[1] if sock else port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None,
                           lifespan="on", **config)
        )
        self._thread = threading.Thread(target=self._server.run, daemon=True,
                                        kwargs={"sockets": [sock]} if sock else {})
        self.loop: asyncio.AbstractEventLoop | None = None

    def start(self, timeout: float = 15.0) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server on port {self.port} did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)


@contextmanager
def running(app: Any, **config: Any) -> Iterator[ServerThread]:
    server = ServerThread(app, **config).start()
    try:
        yield server
    finally:
        server.stop()
