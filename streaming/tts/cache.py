"""An in-memory LRU of synthesized audio in front of any TextToSpeech.

Greetings, reprompts and many bot lines repeat across calls; serving them from memory removes a
synthesis round trip from the caller's wait. Requests for a text already being synthesized share
that synthesis (and hear its audio as it arrives). Only complete syntheses are kept: errors and
syntheses everyone stopped listening to are not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable

from prometheus_client import Counter

from streaming.ports import SynthesisError, TextToSpeech
from streaming.tasks import cancel_and_wait

logger = logging.getLogger(__name__)

CACHE_HITS = Counter(
    "tts_cache_hits_total",
    "Syntheses served without asking the engine (cached, or joining one in progress).",
    ["engine"],
)
CACHE_MISSES = Counter("tts_cache_misses_total", "Syntheses the engine had to do.", ["engine"])

_Key = tuple[str, str, str]  # engine, language, text


class _Flight:
    """One synthesis in progress, read by every request for the same text meanwhile."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.done = False
        self.error: SynthesisError | None = None
        self.readers = 0
        self.task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    def notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed(self) -> None:
        await self._changed.wait()


class CachedTextToSpeech:
    """LRU bounded by `size` entries and `max_bytes` of audio (8 KB per second of speech)."""

    def __init__(self, inner: TextToSpeech, size: int, max_bytes: int = 32 * 1024 * 1024) -> None:
        self.inner = inner
        self.name = inner.name
        self.size = size
        self.max_bytes = max_bytes
        self._entries: OrderedDict[_Key, tuple[bytes, ...]] = OrderedDict()
        self._bytes = 0
        self._flights: dict[_Key, _Flight] = {}
        self._hits = CACHE_HITS.labels(inner.name)
        self._misses = CACHE_MISSES.labels(inner.name)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def cached_bytes(self) -> int:
        return self._bytes

    async def synthesize(self, text: str, language: str) -> AsyncIterator[bytes]:
        key = (self.name, language, text)
        cached = self._entries.get(key)
        if cached is not None:
            self._entries.move_to_end(key)
            self._hits.inc()
            for chunk in cached:
                yield chunk
            return
        flight = self._flights.get(key)
        if flight is None:
            self._misses.inc()
            flight = self._flights[key] = _Flight()
            flight.task = asyncio.get_running_loop().create_task(
                self._fill(key, flight, text, language)
            )
        else:
            self._hits.inc()
        flight.readers += 1
        try:
            seen = 0
            while True:
                while seen < len(flight.chunks):
                    seen += 1
                    yield flight.chunks[seen - 1]
                if flight.done:
                    break
                await flight.changed()
            if flight.error is not None:
                raise SynthesisError(str(flight.error)) from flight.error
        finally:
            flight.readers -= 1
            if flight.readers == 0 and flight.task is not None and not flight.task.done():
                # Nobody listens any more: stop the synthesis and keep nothing partial. It is
                # forgotten first: a request arriving while it stops must not join it.
                if self._flights.get(key) is flight:
                    del self._flights[key]
                await cancel_and_wait(flight.task)

    async def _fill(self, key: _Key, flight: _Flight, text: str, language: str) -> None:
        complete = False
        try:
            async with contextlib.aclosing(self.inner.synthesize(text, language)) as chunks:
                async for chunk in chunks:
                    flight.chunks.append(chunk)
                    flight.notify()
            complete = True
            self._store(key, tuple(flight.chunks))
        except SynthesisError as exc:
            flight.error = exc
        except Exception as exc:
            logger.exception("%s synthesis crashed", self.name, extra={"event": "tts_failed"})
            flight.error = SynthesisError(f"{self.name} synthesis crashed: {exc}")
        finally:
            if not complete and flight.error is None:
                flight.error = SynthesisError("synthesis cancelled")
            flight.done = True
            flight.notify()
            if self._flights.get(key) is flight:
                del self._flights[key]

    def _store(self, key: _Key, chunks: tuple[bytes, ...]) -> None:
        size = sum(map(len, chunks))
        if self.size <= 0 or size > self.max_bytes:
            return
        if key in self._entries:
            self._bytes -= sum(map(len, self._entries.pop(key)))
        self._entries[key] = chunks
        self._bytes += size
        while len(self._entries) > self.size or self._bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= sum(map(len, evicted))

    async def warm(self, texts: Iterable[str], language: str) -> int:
        """Synthesize texts ahead of the calls; failures are logged, not raised. Returns successes."""

        async def one(text: str) -> bool:
            try:
                async for _ in self.synthesize(text, language):
                    pass
            except SynthesisError as exc:
                logger.warning(
                    "could not pre-synthesize %r: %s", text[:60], exc,
                    extra={"event": "tts_warm_failed"},
                )
                return False
            return True

        results = await asyncio.gather(*(one(text) for text in dict.fromkeys(texts)))
        return sum(results)

    async def aclose(self) -> None:
        for flight in list(self._flights.values()):
            if flight.task is not None:
                await cancel_and_wait(flight.task)
        self._entries.clear()
        self._bytes = 0
        await self.inner.aclose()
