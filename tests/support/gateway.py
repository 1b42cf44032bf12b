"""The real gateway (app.server.create_app) on a loopback port, talking to a scripted Rasa bot.

End-to-end tests drive it with app.simulate as the Twilio side, and look inside the server's event
loop (it runs in a thread) to prove that calls leave no task behind.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.types import Receive, Scope, Send

from app.config import Settings
from app.gateway import Gateway
from app.server import create_app
from tests.support.rasa_bot import RasaBot
from tests.support.servers import ServerThread, running

AUTH_TOKEN = "e2e-test-auth-token"
ACCOUNT_SID = "AC" + "e2e0" * 8

T = TypeVar("T")


class _LoopProbe:
    """ASGI wrapper that remembers the event loop the server runs the app on."""

    def __init__(self, app: Starlette) -> None:
        self.app = app
        self.loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.loop = asyncio.get_running_loop()
        await self.app(scope, receive, send)


@dataclass
class RunningGateway:
    url: str
    settings: Settings
    bot: RasaBot
    server: ServerThread
    app: Starlette
    loop: asyncio.AbstractEventLoop

    @property
    def gateway(self) -> Gateway:
        return self.app.state.gateway

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 10) -> T:
        """Run a coroutine on the server's event loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def tasks(self) -> set[asyncio.Task[Any]]:
        async def snapshot() -> set[asyncio.Task[Any]]:
            return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}

        return self.call(snapshot())

    def wait_settled(self, before: set[asyncio.Task[Any]], timeout: float = 5.0) -> list[str]:
        """Tasks started since `before` that are still running after `timeout`, and live calls."""
        deadline = time.monotonic() + timeout
        while True:
            extra = [t for t in self.tasks() - before if not t.done()]
            calls = list(self.gateway.calls)
            if (not extra and not calls) or time.monotonic() > deadline:
                return [repr(t) for t in extra] + [f"live call {sid}" for sid in calls]
            time.sleep(0.05)


@contextmanager
def running_gateway(
    settings: Settings | None = None,
    bot: RasaBot | None = None,
    **changes: Mapping[str, Any],
) -> Iterator[RunningGateway]:
    """Start a Rasa bot and the gateway wired to it; `changes` are Settings.replace sections.

    Unless `changes` say otherwise, signatures are validated with AUTH_TOKEN and there is no
    public URL (the simulator's defaults).
    """
    bot = bot or RasaBot()
    with running(bot.app()) as rasa:
        settings = (settings or Settings()).replace(
            twilio={"auth_token": AUTH_TOKEN, "account_sid": ACCOUNT_SID,
                    "validate_signatures": True},
            server={"public_url": "", "host": "127.0.0.1"},
        ).replace(**changes).replace(rasa={"url": f"{rasa.url}/webhooks/rest/webhook"})
        app = create_app(settings)
        probe = _LoopProbe(app)
        server = ServerThread(probe).start(timeout=60)
        try:
            assert probe.loop is not None  # the lifespan startup ran through the probe
            yield RunningGateway(server.url, settings, bot, server, app, probe.loop)
        finally:
            server.stop()


@contextmanager
def null_gateway() -> Iterator[RunningGateway]:
    """The real gateway with the zero-cost engines, calling a local Twilio API for call control."""
    from tests.support.twilio_api import TwilioApi

    api = TwilioApi(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN)
    with running(api.app()) as twilio_api, running_gateway(
        stt={"engine": "null"}, tts={"engine": "null"},
        twilio={"api_base_url": twilio_api.url},
    ) as gateway:
        yield gateway
