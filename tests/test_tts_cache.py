"""CachedTextToSpeech in front of the real Google engine and a local TextToSpeech server.

The cache streams what its engine yields while the engine is still at work; to hold a synthesis
between two chunks, BOTH is synthesized as its two sentences, one Google request each (as espeak
streams a long text, and as the session asks for one sentence after the other)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest
from prometheus_client import REGISTRY

from app.config import GoogleTtsSettings
from streaming.ports import SynthesisError
from streaming.tts.cache import CachedTextToSpeech
from streaming.tts.google import GoogleTextToSpeech
from tests.support.engines import configured
from tests.support.google_fakes import FakeTextToSpeechServer

FIRST = "Buenas tardes, le atiende el asistente virtual."
SECOND = "¿En qué puedo ayudarle hoy?"
BOTH = f"{FIRST} {SECOND}"


class Counts:
    """Deltas of the cache counters since creation (the registry is process-wide)."""

    def __init__(self) -> None:
        self.start = self._now()

    @staticmethod
    def _now() -> tuple[float, float]:
        labels = {"engine": "google"}
        return (
            REGISTRY.get_sample_value("tts_cache_hits_total", labels) or 0.0,
            REGISTRY.get_sample_value("tts_cache_misses_total", labels) or 0.0,
        )

    def delta(self) -> tuple[float, float]:
        now = self._now()
        return now[0] - self.start[0], now[1] - self.start[1]


@pytest.fixture
async def server() -> AsyncIterator[FakeTextToSpeechServer]:
    async with FakeTextToSpeechServer(audio_for=audio) as fake:
        yield fake


class TwoSentences:
    """The Google engine, BOTH being two requests in turn: audio while the rest is being made."""

    name = "google"

    def __init__(self, google: TwoSentences) -> None:
        self.google = google

    async def synthesize(self, text: str, language: str) -> AsyncIterator[bytes]:
        for sentence in (FIRST, SECOND) if text == BOTH else (text,):
            async for chunk in self.google.synthesize(sentence, language):
                yield chunk

    async def aclose(self) -> None:
        await self.google.aclose()


@pytest.fixture
async def google(server: FakeTextToSpeechServer) -> AsyncIterator[TwoSentences]:
    tts = TwoSentences(configured(GoogleTextToSpeech, GoogleTtsSettings,
                                  endpoint=server.address, insecure=True, timeout_seconds=5))
    yield tts
    await tts.aclose()


def audio(text: str) -> bytes:
    return text.encode() * 10


async def say(tts: CachedTextToSpeech, text: str, language: str = "es-ES") -> bytes:
    return b"".join([chunk async for chunk in tts.synthesize(text, language)])


def flight_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if "_fill" in repr(t.get_coro())]


async def test_second_request_is_served_from_memory(
    server: FakeTextToSpeechServer, google: TwoSentences
) -> None:
    cache = CachedTextToSpeech(google, size=8)
    counts = Counts()
    assert await say(cache, BOTH) == audio(FIRST) + audio(SECOND)
    assert await say(cache, BOTH) == audio(FIRST) + audio(SECOND)
    assert server.texts() == [FIRST, SECOND]
    assert counts.delta() == (1, 1)
    assert await say(cache, BOTH, "es-US") == audio(FIRST) + audio(SECOND)  # other language
    assert server.texts() == [FIRST, SECOND, FIRST, SECOND]
    assert counts.delta() == (1, 2)
    assert len(cache) == 2 and cache.cached_bytes == 2 * len(audio(FIRST) + audio(SECOND))


async def test_least_recently_used_entry_is_evicted(
    server: FakeTextToSpeechServer, google: TwoSentences
) -> None:
    cache = CachedTextToSpeech(google, size=2)
    for text in ("Primera respuesta.", "Segunda respuesta.", "Primera respuesta."):
        await say(cache, text)
    await say(cache, "Tercera respuesta.")  # evicts "Segunda", used least recently
    server.requests.clear()
    await say(cache, "Primera respuesta.")
    await say(cache, "Tercera respuesta.")
    assert server.texts() == []
    await say(cache, "Segunda respuesta.")
    assert server.texts() == ["Segunda respuesta."]
    assert len(cache) == 2


async def test_bytes_are_bounded_too(
    server: FakeTextToSpeechServer, google: TwoSentences
) -> None:
    texts = ["Primera respuesta.", "Segunda respuesta.", "Tercera respuesta."]
    one = len(audio(texts[0]))
    cache = CachedTextToSpeech(google, size=100, max_bytes=int(2.5 * one))
    for text in texts:
        await say(cache, text)
    assert len(cache) == 2 and cache.cached_bytes == 2 * one
    await say(cache, "Una respuesta mucho más larga que todo lo que cabe en la caché.")
    assert len(cache) == 2  # too big to keep: nothing evicted for it, nothing stored


async def test_size_zero_caches_nothing(
    server: FakeTextToSpeechServer, google: TwoSentences
) -> None:
    cache = CachedTextToSpeech(google, size=0)
    await say(cache, FIRST)
    await say(cache, FIRST)
    assert server.texts() == [FIRST, FIRST] and len(cache) == 0


async def test_concurrent_requests_share_one_synthesis(
    server: FakeTextToSpeechServer, google: TwoSentences
) -> None:
    cache = CachedTextToSpeech(google, size=8)
    counts = Counts()
    release = server.gate(SECOND)
    heard_first: list[bytes] = []

    async def listener() -> bytes:
        chunks = cache.synthesize(BOTH, "es-ES")
        heard_first.append(await anext(chunks))
        return heard_first[-1] + b"".join([chunk async for chunk in chunks])

    listeners = [asyncio.create_task(listener()) for _ in range(3)]
    async with asyncio.timeout(10):
        while len(heard_first) < 3:  # everyone hears the first sentence before the second exists
            await asyncio.sleep(0.01)
        release.set()
        results = await asyncio.gather(*listeners)
    assert results == [audio(FIRST) + audio(SECOND)] * 3
    assert server.texts() == [FIRST, SECOND]
    assert counts.delta() == (2, 1)
    assert await say(cache, BOTH) == results[0] and counts.delta() == (3, 1)


async def test_errors_are_not_cached(
    server: FakeTextToSpeechServer, google: TwoSentences
) -> None:
    cache = CachedTextToSpeech(google, size=8)
    server.fail.add(FIRST)
    with pytest.raises(SynthesisError):
        await say(cache, FIRST)
    server.fail.clear()
    assert await say(cache, FIRST) == audio(FIRST)
    assert server.texts() == [FIRST, FIRST]


async def test_shared_error_reaches_every_listener(
    server: FakeTextToSpeechServer, google: TwoSentences
) -> None:
    cache = CachedTextToSpeech(google, size=8)
    server.fail.add(FIRST)
    release = server.gate(FIRST)
    listeners = [asyncio.create_task(say(cache, FIRST)) for _ in range(2)]
    await asyncio.wait_for(server.arrival(FIRST).wait(), 10)
    release.set()
    outcomes = await asyncio.gather(*listeners, return_exceptions=True)
    assert all(isinstance(outcome, SynthesisError) for outcome in outcomes)
    assert server.texts() == [FIRST] and len(cache) == 0


async def test_abandoned_synthesis_is_cancelled_and_not_cached(
    server: FakeTextToSpeechServer, google: TwoSentences
) -> None:
    cache = CachedTextToSpeech(google, size=8)
    release = server.gate(SECOND)
    chunks = cache.synthesize(BOTH, "es-ES")
    assert await asyncio.wait_for(anext(chunks), 10) == audio(FIRST)
    await asyncio.wait_for(server.arrival(SECOND).wait(), 10)
    await chunks.aclose()  # the caller barged in
    assert flight_tasks() == [] and len(cache) == 0
    release.set()
    assert await say(cache, BOTH) == audio(FIRST) + audio(SECOND)
    assert server.texts() == [FIRST, SECOND, FIRST, SECOND]


async def test_request_arriving_while_an_abandoned_synthesis_stops_gets_its_own(
    server: FakeTextToSpeechServer, google: TwoSentences
) -> None:
    """The last listener left (barge-in); another call asks for the same text before the
    abandoned synthesis has finished stopping: it must not inherit that synthesis' cancellation."""
    cache = CachedTextToSpeech(google, size=8)
    release = server.gate(SECOND)
    chunks = cache.synthesize(BOTH, "es-ES")
    assert await asyncio.wait_for(anext(chunks), 10) == audio(FIRST)
    leaving = asyncio.create_task(chunks.aclose())
    await asyncio.sleep(0)  # the synthesis is being cancelled, not stopped yet
    assert not leaving.done()
    arriving = asyncio.create_task(say(cache, BOTH))
    await leaving
    release.set()
    assert await asyncio.wait_for(arriving, 10) == audio(FIRST) + audio(SECOND)


async def test_cancelled_listener_does_not_stop_the_others(
    server: FakeTextToSpeechServer, google: TwoSentences
) -> None:
    cache = CachedTextToSpeech(google, size=8)
    release = server.gate(SECOND)
    leaving = asyncio.create_task(say(cache, BOTH))
    staying = asyncio.create_task(say(cache, BOTH))
    await asyncio.wait_for(server.arrival(SECOND).wait(), 10)
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    release.set()
    assert await asyncio.wait_for(staying, 10) == audio(FIRST) + audio(SECOND)
    assert len(cache) == 1 and server.texts() == [FIRST, SECOND]


async def test_warm_presynthesizes_and_logs_failures(
    server: FakeTextToSpeechServer, google: TwoSentences, caplog: pytest.LogCaptureFixture
) -> None:
    cache = CachedTextToSpeech(google, size=8)
    server.fail.add("Esto falla siempre.")
    with caplog.at_level(logging.WARNING, logger="streaming.tts.cache"):
        warmed = await cache.warm([FIRST, SECOND, FIRST, "Esto falla siempre."], "es-ES")
    assert warmed == 2 and len(cache) == 2
    assert [r.event for r in caplog.records] == ["tts_warm_failed"]  # type: ignore[attr-defined]
    server.requests.clear()
    assert await say(cache, FIRST) == audio(FIRST)
    assert server.texts() == []


async def test_aclose_cancels_running_syntheses(
    server: FakeTextToSpeechServer, google: TwoSentences
) -> None:
    cache = CachedTextToSpeech(google, size=8)
    server.gate(FIRST)
    listener = asyncio.create_task(say(cache, FIRST))
    await asyncio.wait_for(server.arrival(FIRST).wait(), 10)
    await cache.aclose()
    with pytest.raises(SynthesisError, match="cancelled"):
        await asyncio.wait_for(listener, 10)
    assert flight_tasks() == []
