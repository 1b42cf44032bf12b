"""The ASGI application factory and the production server entry point."""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import os
import signal
import socket
import time
import typing
from collections.abc import AsyncIterator
from types import FrameType
from typing import Any

import uvicorn
from starlette.applications import Starlette
from uvicorn.config import STARTUP_FAILURE

from app import media, metrics, security, softphone, twiml, webhooks
from app.config import Settings, load_settings
from app.gateway import Gateway
from app.logs import configure_logging

logger = logging.getLogger("app.server")


def create_app(settings: Settings | None = None) -> Starlette:
    """Build the gateway. Without settings they are loaded from config.yaml and the environment."""
    settings = settings or load_settings()
    configure_logging(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        metrics.create_known_series(
            statuses=[*sorted(webhooks.KNOWN_STATUSES), "other"],
            signed_paths=[twiml.VOICE_PATH, twiml.SPEECH_PATH, twiml.RESUME_PATH,
                          twiml.FALLBACK_PATH, twiml.STATUS_PATH, twiml.STREAM_PATH],
            stream_path=twiml.STREAM_PATH,
            stream_refusals=typing.get_args(security.StreamRefusal))
        gateway = Gateway.build(settings)
        app.state.gateway = gateway
        await webhooks.on_startup(gateway)
        gateway.start_warming()
        # What exists now (modules, settings, engines) lives as long as the process: frozen, the
        # garbage collector stops walking it on every collection (~2% CPU under load). Garbage
        # is collected first, or it would be kept forever.
        gc.collect()
        gc.freeze()
        try:
            yield {"gateway": gateway}  # lifespan state: how DrainingServer finds the gateway
        finally:
            await gateway.aclose()

    return Starlette(
        debug=settings.server.debug,
        routes=[*webhooks.routes, *media.routes, *softphone.routes(settings)],
        lifespan=lifespan,
    )


# After the drain, seconds uvicorn gives connections to close before cancelling their tasks.
CLOSE_SECONDS = 10


class DrainingServer(uvicorn.Server):
    """uvicorn that drains on SIGTERM/SIGINT instead of closing its listener at once.

    The first signal marks the gateway draining: /ready answers 503 and new calls go to the
    Gather path, while the listener keeps answering. The server stops once no call is live or
    `drain_timeout` passed (uvicorn then closes the remaining websockets, so Twilio follows the
    <Redirect> after </Connect>). A second signal stops at once, a third forces the exit.
    """

    def __init__(self, config: uvicorn.Config, drain_timeout: float) -> None:
        super().__init__(config)
        self.drain_timeout = drain_timeout
        self.drain_deadline: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Replaces uvicorn's handler, which also re-raises the signal after shutdown: exit 143, not 0.
        lifespan = getattr(self, "lifespan", None)
        gateway: Gateway | None = lifespan.state.get("gateway") if lifespan else None
        if self.should_exit:
            self.force_exit = True
        elif gateway is None or self.drain_deadline is not None:
            self.should_exit = True
        else:
            gateway.draining = True
            self.drain_deadline = time.monotonic() + self.drain_timeout

    async def on_tick(self, counter: int) -> bool:
        if self.drain_deadline is not None and not self.should_exit:
            calls = len(self.lifespan.state["gateway"].calls)
            if counter % 50 == 0 or not calls:
                logger.info("draining: %d live calls", calls,
                            extra={"event": "draining", "live_calls": calls})
            if not calls or time.monotonic() >= self.drain_deadline:
                self.should_exit = True
        return await super().on_tick(counter)


def serve(settings: Settings, config_path: str | None = None,
          factory: str = "app.server:create_app") -> int:
    """Run the gateway with `server.workers` processes; each worker builds its own app (`factory`
    is its import string: bench/ wraps the gateway) and drains on SIGTERM. Returns the exit code:
    0 after a drain."""
    configure_logging(settings)
    # Startup warnings are logged by each worker (webhooks.on_startup), not here as well.
    if config_path:
        os.environ["GATEWAY_CONFIG"] = config_path
    os.environ["PORT"] = str(settings.server.port)
    config = uvicorn.Config(
        factory,
        factory=True,
        host=settings.server.host,
        port=settings.server.port,
        workers=settings.server.workers,
        log_config=None,
        proxy_headers=True,
        forwarded_allow_ips="*",
        timeout_graceful_shutdown=CLOSE_SECONDS,
    )
    drain = settings.server.drain_timeout_seconds
    if config.workers > 1:
        return _supervise(config, drain)
    server = DrainingServer(config, drain)
    server.run()
    return 0 if server.started else STARTUP_FAILURE


# Workers are spawned, not forked (the parent may already run threads): each imports the app
# afresh, configures its own logging (create_app) and gets the shared socket pickled across.
_SPAWN = multiprocessing.get_context("spawn")


def _run_worker(config: uvicorn.Config, drain_timeout: float, sockets: list[socket.socket]) -> None:
    """A worker process's main: serve on the supervisor's socket until drained."""
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C reaches the workers too: no traceback
        DrainingServer(config, drain_timeout).run(sockets=sockets)


def _supervise(config: uvicorn.Config, drain_timeout: float) -> int:
    """Workers share one listening socket, one metrics directory (app/metrics.py) and one of
    used stream tokens (app/security.py). Unlike
    uvicorn's supervisor, which expects workers gone soon after SIGTERM, this one forwards signals
    and waits out each worker's drain. A worker that dies on its own drains the others and fails
    the instance: the process manager restarts it."""
    sock = config.bind_socket()
    with metrics.shared_between_workers() as path, security.shared_used_tokens():
        logger.info("workers share their metrics in %s", path,
                    extra={"event": "metrics_shared", "path": path})
        code = _run_workers(config, drain_timeout, sock)
    sock.close()
    return code


def _run_workers(config: uvicorn.Config, drain_timeout: float, sock: socket.socket) -> int:
    workers = [_SPAWN.Process(target=_run_worker, args=(config, drain_timeout, [sock]))
               for _ in range(config.workers)]
    for worker in workers:
        worker.start()
    running = list(workers)
    stopping = False

    def stop(sig: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for worker in workers:
            if worker.exitcode is None:
                os.kill(worker.pid, sig)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    while running:
        time.sleep(0.2)
        exited = [worker for worker in running if worker.exitcode is not None]
        for worker in exited:
            running.remove(worker)
            metrics.worker_exited(worker.pid)
        if exited and not stopping:
            logger.error("a worker exited unexpectedly; draining the others",
                         extra={"event": "worker_died"})
            stop(signal.SIGTERM, None)
    return 0 if all(worker.exitcode == 0 for worker in workers) else 1
