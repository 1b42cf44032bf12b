"""The Rasa REST channel client both call paths share: one pooled connection set per process."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from app import metrics
from app.config import RasaSettings
from streaming.ports import BotError, BotMessage
from streaming.tasks import cancel_and_wait

logger = logging.getLogger("app.rasa")


class RasaClient:
    """Implements streaming.ports.Bot over `POST rasa.url`; any unusable answer is a BotError."""

    def __init__(self, settings: RasaSettings, transport: httpx.AsyncBaseTransport | None = None):
        self.settings = settings
        parts = urlsplit(settings.url)
        self.health_url = f"{parts.scheme}://{parts.netloc}/"
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(
                settings.timeout_seconds, connect=settings.connect_timeout_seconds
            ),
            limits=httpx.Limits(
                max_connections=settings.max_connections,
                max_keepalive_connections=settings.max_connections,
            ),
            transport=transport,
        )
        self._reachable: bool | None = None
        self._checked_at = float("-inf")
        self._check_lock = asyncio.Lock()
        self._refresh: asyncio.Task[bool] | None = None

    async def send(
        self, sender: str, message: str, metadata: Mapping[str, Any]
    ) -> list[BotMessage]:
        body = {"sender": sender, "message": message, "metadata": dict(metadata)}
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.settings.timeout_seconds):
                response = await self._client.post(self.settings.url, json=body)
            return _parse(response)
        except _Unusable as exc:
            raise self._failed(sender, exc.kind, exc.detail) from None
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise self._failed(
                sender, "timeout", f"no answer within {self.settings.timeout_seconds} s"
            ) from exc
        except httpx.ConnectError as exc:
            raise self._failed(sender, "connect", str(exc) or type(exc).__name__) from exc
        except httpx.TransportError as exc:
            raise self._failed(sender, "transport", str(exc) or type(exc).__name__) from exc
        except httpx.DecodingError as exc:  # a body its Content-Encoding does not describe
            raise self._failed(sender, "invalid_reply", f"undecodable body: {exc}") from exc
        finally:
            metrics.RASA_SECONDS.observe(time.perf_counter() - started)

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
        await self._client.aclose()

    def _is_fresh(self) -> bool:
        return time.monotonic() - self._checked_at < self.settings.health_cache_seconds

    async def _probe(self) -> bool:
        timeout = min(self.settings.connect_timeout_seconds, 2.0)
        try:
            async with asyncio.timeout(timeout):
                response = await self._client.get(self.health_url, timeout=timeout)
        except (TimeoutError, httpx.HTTPError) as exc:
            logger.info(
                "Rasa health check failed: %s",
                str(exc) or type(exc).__name__,
                extra={"event": "rasa_unreachable"},
            )
            return False
        return response.status_code < 500


class _Unusable(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        self.kind, self.detail = kind, detail


def _parse(response: httpx.Response) -> list[BotMessage]:
    """The REST channel reply: a list of {"text"} / {"custom"} messages; buttons/images ignored."""
    if not response.is_success:
        raise _Unusable("http_status", f"HTTP {response.status_code}")
    try:
        data = response.json()
    except ValueError:
        raise _Unusable("invalid_json", f"not JSON: {response.text[:80]!r}") from None
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
