"""Event-loop lag inside a benchmarked server: how long a frame that has arrived waits for the loop.

A timer asks to wake every PERIOD; how late it wakes is how long any ready callback (a socket
read carrying a media frame included) waits behind the work already queued. bench/load.py runs
the gateway with it in its solo runs and reads the histogram from GET /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib

from prometheus_client import Histogram
from starlette.types import ASGIApp, Receive, Scope, Send

PERIOD = 0.02
LAG = Histogram(
    "bench_event_loop_lag_seconds",
    "How late a 20 ms timer fires: the wait of a ready frame behind queued work.",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02,
             0.03, 0.05, 0.1, 0.25, 0.5, 1.0),
)


async def watch_loop(period: float = PERIOD) -> None:
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + period
        await asyncio.sleep(period)
        LAG.observe(max(0.0, loop.time() - due))


def probed(app: ASGIApp) -> ASGIApp:
    """`app` with the lag probe running for as long as its lifespan does."""

    async def wrapper(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return
        task = asyncio.create_task(watch_loop())
        try:
            await app(scope, receive, send)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return wrapper


def gateway_app() -> ASGIApp:
    """The real gateway (settings from config.yaml and the environment), probed."""
    from app.server import create_app

    return probed(create_app())
