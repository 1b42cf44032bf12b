"""The Rasa REST channel client both call paths share: one pooled connection set per process.

It is built on aiohttp, the HTTP client the twilio library already runs in this process, rather
than httpx: under load a Rasa request through httpx cost ~1 ms of CPU in the gateway, 7% of
everything a conversation costs, and aiohttp does the same request for a quarter of that
(bench/README.md, "Where the gateway's CPU goes").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from app import metrics
from app.config import RasaSettings
from streaming.ports import BotError, BotMessage
from streaming.tasks import cancel_and_wait

logger = logging.getLogger("app.rasa")

JSON_HEADERS = {"Content-Type": "application/json"}
# What aiohttp raises while it connects (refused, unreachable, DNS, TLS handshake, sock_connect
# timeout), before a byte of the request is written: Rasa cannot have seen the turn. Anything
# later (ServerDisconnectedError, a reset, a read timeout), even on a pooled keep-alive connection
# that turned out dead, may follow a request Rasa read.
NOT_SENT = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)


class RasaClient:
    """Implements streaming.ports.Bot over `POST rasa.url`; any unusable answer is a BotError."""

    def __init__(self, settings: RasaSettings) -> None:
        self.settings = settings
        parts = urlsplit(settings.url)
        self.health_url = f"{parts.scheme}://{parts.netloc}/"
        self._timeout = aiohttp.ClientTimeout(
            total=settings.timeout_seconds, sock_connect=settings.connect_timeout_seconds
        )
        self._session: aiohttp.ClientSession | None = None  # opened on first use, in the loop
        self._reachable: bool | None = None
        self._checked_at = float("-inf")
        self._check_lock = asyncio.Lock()
        self._refresh: asyncio.Task[bool] | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                # Idle connections are dropped before the 5 s after which Rasa's server (Sanic)
                # closes them, so a request never goes out on a connection being closed.
                connector=aiohttp.TCPConnector(
                    limit=self.settings.max_connections, keepalive_timeout=4.0
                ),
                timeout=self._timeout,
                # A Rasa reply is never a cookie jar's business; skipping it saves CPU per request.
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def send(
        self, sender: str, message: str, metadata: Mapping[str, Any]
    ) -> list[BotMessage]:
        """One turn. A request that could not connect is sent again once, at once; one that may
        have reached Rasa never is: Rasa would take the turn twice."""
        body = orjson.dumps({"sender": sender, "message": message, "metadata": dict(metadata)})
        started = time.perf_counter()
        try:
            try:
                return await self._post(body, self._timeout)
            except NOT_SENT as exc:
                remaining = self.settings.timeout_seconds - (time.perf_counter() - started)
                if remaining <= 0:
                    raise
                metrics.RASA_RETRIES.inc()
                logger.info("Rasa connection failed (%s); sending again on a new one",
                            str(exc) or type(exc).__name__,
                            extra={"event": "rasa_retry", "call_sid": sender})
                return await self._post(body, aiohttp.ClientTimeout(
                    total=remaining, sock_connect=self.settings.connect_timeout_seconds))
        except _Unusable as exc:
            raise self._failed(sender, exc.kind, exc.detail) from None
        except aiohttp.ConnectionTimeoutError as exc:
            raise self._failed(
                sender, "connect", f"no connection within {self.settings.connect_timeout_seconds} s"
            ) from exc
        except TimeoutError as exc:  # aiohttp's timeouts are TimeoutErrors too
            raise self._failed(
                sender, "timeout", f"no answer within {self.settings.timeout_seconds} s"
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            raise self._failed(sender, "connect", str(exc) or type(exc).__name__) from exc
        except aiohttp.ClientPayloadError as exc:  # a body its Content-Encoding does not describe
            raise self._failed(sender, "invalid_reply", f"undecodable body: {exc}") from exc
        except aiohttp.ClientError as exc:
            raise self._failed(sender, "transport", str(exc) or type(exc).__name__) from exc
        finally:
            metrics.RASA_SECONDS.observe(time.perf_counter() - started)

    async def _post(self, body: bytes, timeout: aiohttp.ClientTimeout) -> list[BotMessage]:
        async with self._http().post(self.settings.url, data=body, headers=JSON_HEADERS,
                                     timeout=timeout) as response:
            return _parse(response.status, await response.read())

    def _failed(self, sender: str, kind: str, detail: str) -> BotError:
        metrics.RASA_ERRORS.labels(kind).inc()
        logger.warning(
            "Rasa gave no usable reply (%s): %s",
            kind,
            detail,
            extra={"event": "rasa_error", "call_sid": sender, "kind": kind},
        )
        return BotError(f"Rasa {kind}: {detail}")

    async def is_reachable(self) -> bool:
        """Whether Rasa answers on its base URL; the answer is reused for health_cache_seconds."""
        if self._is_fresh():
            return bool(self._reachable)
        async with self._check_lock:
            if not self._is_fresh():
                self._reachable = await self._probe()
                self._checked_at = time.monotonic()
                metrics.RASA_REACHABLE.set(1 if self._reachable else 0)
        return bool(self._reachable)

    @property
    def last_known_reachable(self) -> bool | None:
        """The cached answer without any I/O; None before the first check."""
        return self._reachable

    def refresh_soon(self) -> None:
        """Re-check reachability in the background when the cached answer is stale.

        Health probes call this and read `last_known_reachable`, so they never wait on Rasa.
        """
        if self._is_fresh() or (self._refresh is not None and not self._refresh.done()):
            return
        self._refresh = asyncio.get_running_loop().create_task(self.is_reachable())

    async def aclose(self) -> None:
        if self._refresh is not None:
            await cancel_and_wait(self._refresh)
        if self._session is not None:
            await self._session.close()

    def _is_fresh(self) -> bool:
        return time.monotonic() - self._checked_at < self.settings.health_cache_seconds

    async def _probe(self) -> bool:
        timeout = min(self.settings.connect_timeout_seconds, 2.0)
        try:
            async with self._http().get(
                self.health_url, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as response:
                return response.status < 500
        except (TimeoutError, aiohttp.ClientError) as exc:
            logger.info(
                "Rasa health check failed: %s",
                str(exc) or type(exc).__name__,
                extra={"event": "rasa_unreachable"},
            )
            return False


class _Unusable(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        self.kind, self.detail = kind, detail


def _parse(status: int, body: bytes) -> list[BotMessage]:
    """The REST channel reply: a list of {"text"} / {"custom"} messages; buttons/images ignored."""
    if not 200 <= status < 300:
        raise _Unusable("http_status", f"HTTP {status}")
    try:
        data = orjson.loads(body)
    except ValueError:
        raise _Unusable("invalid_json", f"not JSON: {body[:80]!r}") from None
    if not isinstance(data, list):
        raise _Unusable("invalid_reply", f"expected a list, got {type(data).__name__}")
    messages = []
    for item in data:
        if not isinstance(item, dict):
            continue
        text = item.get("text") if isinstance(item.get("text"), str) else None
        custom = item.get("custom") if isinstance(item.get("custom"), dict) else None
        if text or custom is not None:
            messages.append(BotMessage(text=text, custom=custom))
    return messages
