"""GoogleSpeechToText against a local gRPC StreamingRecognize server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from google.cloud.speech_v1.types import RecognitionConfig
from prometheus_client import REGISTRY

from app.config import GoogleSttSettings
from streaming.ports import SpeechError, Transcript
from streaming.stt.google import GoogleSpeechToText
from streaming.stt.google_stream import MAX_BEHIND_BYTES, GoogleRecognitionStream
from tests.support.engines import configured
from tests.support.google_fakes import FakeSpeechServer, transcript_for
from tests.support.servers import free_port

HINTS = ("bloquear tarjeta", "ejecutivo")


def audio(size: int) -> bytes:
    """Random bytes: any lost, repeated or reordered byte changes a transcript."""
    return random.Random(size).randbytes(size)


async def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def feed_frames(stream: GoogleRecognitionStream, data: bytes, pause_every: int = 0) -> None:
    """Feed like Twilio does: 160-byte (20 ms) frames, optionally pausing every N frames."""
    for n, i in enumerate(range(0, len(data), 160), start=1):
        stream.feed(data[i : i + 160])
        if pause_every and n % pause_every == 0:
            await asyncio.sleep(0.05)


class Collector:
    """Consumes `results()` in a task, like the session does."""

    def __init__(self, stream: GoogleRecognitionStream) -> None:
        self.items: list[Transcript] = []
        self.error: BaseException | None = None
        self.task = asyncio.create_task(self._run(stream.results()))

    async def _run(self, results: AsyncIterator[Transcript]) -> None:
        try:
            async for item in results:
                self.items.append(item)
        except SpeechError as exc:
            self.error = exc

    @property
    def finals(self) -> list[Transcript]:
        return [t for t in self.items if t.is_final]


def interim_since(collector: Collector, start_ms: int = 0) -> bool:
    """An interim result arrived for audio from `start_ms` on: the stream may be cut."""
    return any(not t.is_final and (t.start_ms or 0) >= start_ms for t in collector.items)


def make_engine(address: str, **overrides: object) -> GoogleSpeechToText:
    options: dict[str, object] = dict(
        model="phone_call", use_enhanced=True, interim_results=True, phrase_hints=HINTS,
        restart_seconds=60, endpoint=address, insecure=True, timeout_seconds=5,
        early_finalization=True,
    )
    options.update(overrides)
    return GoogleSpeechToText(**options)  # type: ignore[arg-type]


def restarts(reason: str) -> float:
    return REGISTRY.get_sample_value("stt_google_stream_restarts_total", {"reason": reason}) or 0.0


SpeechFactory = Callable[..., Awaitable[FakeSpeechServer]]


@pytest.fixture
async def start_speech() -> AsyncIterator[SpeechFactory]:
    """Start fake Speech servers (scripted by keyword arguments); all stop at teardown."""
    async with contextlib.AsyncExitStack() as servers:

        async def start(**script: Any) -> FakeSpeechServer:
            return await servers.enter_async_context(FakeSpeechServer(**script))

        yield start


@pytest.fixture
async def speech(start_speech: SpeechFactory) -> FakeSpeechServer:
    return await start_speech()


async def test_config_first_then_mulaw_in_100ms_requests(speech: FakeSpeechServer) -> None:
    engine = make_engine(speech.address)
    stream = engine.open("es-US")
    fed = audio(3300)
    await feed_frames(stream, fed)
    await eventually(lambda: bool(speech.streams) and len(speech.streams[0].audio) >= 3200)
    await asyncio.sleep(0.05)  # the incomplete last 100 ms must stay unsent
    await stream.close()
    await engine.aclose()

    recorded = speech.streams[0]
    assert recorded.config is not None and not recorded.first_request_had_audio
    assert recorded.configs_after_first == 0
    config = recorded.config.config
    assert config.encoding == RecognitionConfig.AudioEncoding.MULAW
    assert config.sample_rate_hertz == 8000
    assert config.language_code == "es-US"
    assert config.model == "phone_call" and config.use_enhanced
    assert list(config.speech_contexts[0].phrases) == list(HINTS)
    assert recorded.config.interim_results and not recorded.config.single_utterance
    assert recorded.request_sizes == [800, 800, 800, 800]
    assert bytes(recorded.audio) == fed[:3200]


async def test_interim_and_final_results_with_times_and_confidence(
    speech: FakeSpeechServer,
) -> None:
    engine = make_engine(speech.address)
    stream = engine.open("es-ES")
    collector = Collector(stream)
    fed = audio(8000)
    await feed_frames(stream, fed)
    await eventually(lambda: len(collector.finals) == 2)
    await stream.close()
    await collector.task
    await engine.aclose()

    interims = [t for t in collector.items if not t.is_final]
    assert interims[:2] == [
        Transcript("partial 1", False, None, 0, 200),
        Transcript("partial 2", False, None, 0, 400),
    ]
    assert collector.finals == [
        Transcript(transcript_for(fed[:4000]), True, 0.875, 0, 500),
        Transcript(transcript_for(fed[4000:]), True, 0.875, 500, 1000),
    ]
    assert collector.error is None


@pytest.mark.parametrize(
    ("fail_after", "resent_from"),
    [(3, 0), (6, 4000)],  # before any final / after the first final (4000 bytes)
)
async def test_error_mid_stream_reconnects_once_without_losing_audio(
    start_speech: SpeechFactory, fail_after: int, resent_from: int
) -> None:
    speech = await start_speech(fail_after={0: fail_after})
    engine = make_engine(speech.address)
    stream = engine.open("es-ES")
    collector = Collector(stream)
    before = restarts("error")
    fed = audio(12000)
    await feed_frames(stream, fed)
    await eventually(lambda: len(collector.finals) == 3)
    await stream.close()
    await collector.task
    await engine.aclose()

    assert len(speech.streams) == 2
    assert bytes(speech.streams[0].audio) == fed[: fail_after * 800]
    # The new stream gets everything after the last final, byte for byte: nothing lost.
    assert bytes(speech.streams[1].audio) == fed[resent_from:]
    assert [t.text for t in collector.finals] == [
        transcript_for(fed[i : i + 4000]) for i in range(0, 12000, 4000)
    ]
    assert [t.end_ms for t in collector.finals] == [500, 1000, 1500]
    assert collector.error is None
    assert restarts("error") == before + 1


async def test_second_consecutive_error_raises_speech_error(start_speech: SpeechFactory) -> None:
    speech = await start_speech(final_every=10**6, fail_after={0: 2, 1: 2})
    engine = make_engine(speech.address)
    stream = engine.open("es-ES")
    collector = Collector(stream)
    await feed_frames(stream, audio(8000))
    await asyncio.wait_for(collector.task, 10)
    assert isinstance(collector.error, SpeechError)
    assert len(speech.streams) == 2
    stream.feed(audio(800))  # after the failure: ignored, nothing raised
    await stream.close()
    await engine.aclose()


async def test_audio_piling_up_unsent_raises_speech_error() -> None:
    """`feed` is synchronous and bounds the backlog itself: a writer that never runs fails."""
    engine = make_engine(f"127.0.0.1:{free_port()}")
    stream = engine.open("es-ES")
    collector = Collector(stream)
    backlog = audio(MAX_BEHIND_BYTES + 50 * 8000)  # + the 40 s of carried-over audio allowed
    for i in range(0, len(backlog), 800):
        stream.feed(backlog[i : i + 800])  # no await: the writer task never gets to run
    await asyncio.wait_for(collector.task, 10)
    assert isinstance(collector.error, SpeechError)
    assert "fell behind" in str(collector.error)
    stream.feed(audio(800))  # after the failure: ignored, nothing raised
    await stream.close()
    await engine.aclose()


async def test_unreachable_endpoint_raises_speech_error() -> None:
    engine = make_engine(f"127.0.0.1:{free_port()}")
    stream = engine.open("es-ES")
    collector = Collector(stream)
    stream.feed(audio(1600))
    await asyncio.wait_for(collector.task, 10)
    assert isinstance(collector.error, SpeechError)
    await stream.close()
    await engine.aclose()


async def test_missing_credentials_raise_speech_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", os.devnull + "/missing.json")
    engine = configured(GoogleSpeechToText, GoogleSttSettings, restart_seconds=60,
                        timeout_seconds=5)  # Google's endpoint, ADC
    stream = engine.open("es-ES")
    collector = Collector(stream)
    await asyncio.wait_for(collector.task, 10)
    assert isinstance(collector.error, SpeechError)
    assert "credentials" in str(collector.error)
    await stream.close()
    await engine.aclose()


async def test_restart_before_the_limit_carries_only_the_unfinalized_tail(
    start_speech: SpeechFactory,
) -> None:
    """Streams are replaced every 0.8 s while audio flows at 4x real time.

    Guarantee: each new stream starts with the audio right after the last final result the
    recognizer emitted (the fake may have a final in flight when the old stream is cancelled,
    so that is the last or the second-to-last final the old stream sent), the finals cover every
    byte exactly once, and no timestamp goes backwards.
    """
    block = 4000
    speech = await start_speech(final_every=block, interim_every=1600)
    engine = make_engine(speech.address, restart_seconds=0.8)
    stream = engine.open("es-ES")
    collector = Collector(stream)
    before = restarts("limit")
    fed = audio(20 * block)  # 10 s of audio
    await feed_frames(stream, fed, pause_every=10)  # 200 ms of audio per 50 ms
    await eventually(lambda: len(collector.finals) == 20)
    await stream.close()
    await collector.task
    await engine.aclose()

    assert [t.text for t in collector.finals] == [
        transcript_for(fed[i : i + block]) for i in range(0, len(fed), block)
    ]
    assert [(t.start_ms, t.end_ms) for t in collector.finals] == [
        (i * 500, (i + 1) * 500) for i in range(20)
    ]
    ends = [t.end_ms for t in collector.finals]
    assert ends == sorted(ends)

    assert len(speech.streams) >= 3 and restarts("limit") >= before + 2
    start = 0
    for previous, current in zip(speech.streams, speech.streams[1:]):
        new_start = fed.find(bytes(current.audio[:block]))
        assert bytes(current.audio) == fed[new_start : new_start + len(current.audio)]
        assert new_start - start in ([0] + previous.finals_sent)[-2:]
        start = new_start
    assert start + len(speech.streams[-1].audio) == len(fed)


async def test_close_ends_results_and_leaves_no_task(speech: FakeSpeechServer) -> None:
    engine = make_engine(speech.address)
    stream = engine.open("es-ES")
    collector = Collector(stream)
    await feed_frames(stream, audio(2400))
    await eventually(lambda: bool(speech.streams) and len(speech.streams[0].audio) == 2400)
    await stream.close()
    await stream.close()  # idempotent
    await asyncio.wait_for(collector.task, 5)
    ours = [t for t in asyncio.all_tasks() if "GoogleRecognitionStream" in repr(t.get_coro())]
    assert ours == []
    assert [item async for item in stream.results()] == []
    await engine.aclose()


async def test_closed_engine_fails_streams_cleanly(speech: FakeSpeechServer) -> None:
    engine = make_engine(speech.address)
    await engine.aclose()
    stream = engine.open("es-ES")
    collector = Collector(stream)
    stream.feed(audio(800))
    await asyncio.wait_for(collector.task, 5)
    assert isinstance(collector.error, SpeechError) and speech.streams == []
    await stream.close()


async def test_carried_audio_is_bounded_when_no_final_comes(start_speech: SpeechFactory) -> None:
    """With no final for 12 s, a reconnect resends the newest audio only (in 10 s drop steps)."""
    speech = await start_speech(final_every=10**6, fail_after={0: 120})
    engine = make_engine(speech.address, max_carry_seconds=0.5)
    stream = engine.open("es-ES")
    collector = Collector(stream)
    fed = audio(96000)
    await feed_frames(stream, fed)
    # 4000 bytes may be carried; at 84000 sent the oldest 80000 were dropped in one step.
    await eventually(lambda: len(speech.streams) == 2 and len(speech.streams[1].audio) == 16000)
    await stream.close()
    await collector.task
    await engine.aclose()
    assert bytes(speech.streams[1].audio) == fed[80000:]
    assert collector.error is None


# -- early finalization: the session's VAD says the caller stopped ---------------------------

QUIET = b"\xff"  # mu-law silence: quiet frames for the fake's endpointer


@contextlib.asynccontextmanager
async def recognizing(
    start_speech: SpeechFactory, *, early: bool = True, interim: bool = True, **script: Any
) -> AsyncIterator[tuple[FakeSpeechServer, GoogleRecognitionStream, Collector]]:
    """A fake that finalizes only like Google (its endpointer, a half-close), and a stream on
    it whose results are collected; closed (and the results ended) after the block."""
    speech = await start_speech(final_every=None, **script)
    engine = make_engine(speech.address, early_finalization=early, interim_results=interim)
    stream = engine.open("es-ES")
    collector = Collector(stream)
    try:
        yield speech, stream, collector
    finally:
        await stream.close()
        await collector.task
        await engine.aclose()


async def test_the_end_of_speech_half_closes_the_stream_and_a_new_one_takes_over(
    start_speech: SpeechFactory,
) -> None:
    async with recognizing(start_speech, endpoint_ms=1500) as (speech, stream, collector):
        first = audio(6400) + QUIET * 3200  # 800 ms of speech, 400 ms quiet: no final of its own
        await feed_frames(stream, first)
        await eventually(lambda: bool(speech.streams) and len(speech.streams[0].audio) == 9600)
        await eventually(lambda: interim_since(collector))
        stream.speech_ended()
        await eventually(lambda: len(collector.finals) == 1)
        await eventually(lambda: len(speech.streams) == 2)  # opened at the cut, before audio
        second = QUIET * 2400 + audio(4000) + QUIET * 3200
        await feed_frames(stream, second)
        await eventually(lambda: interim_since(collector, 1200))
        stream.speech_ended()
        await eventually(lambda: len(collector.finals) == 2 and len(speech.streams) == 3)

    assert [(t.text, t.start_ms, t.end_ms) for t in collector.finals] == [
        (transcript_for(first), 0, 1200), (transcript_for(second), 1200, 2400)]
    # Each stream got its utterance, byte for byte: nothing lost, nothing recognized twice.
    assert [bytes(s.audio) for s in speech.streams] == [first, second, b""]
    assert [s.final_causes for s in speech.streams] == [["half_close"], ["half_close"], []]


async def test_audio_fed_before_the_next_stream_connects_is_recognized_once(
    start_speech: SpeechFactory,
) -> None:
    """The caller goes on at once after the cut: the next utterance's audio is fed in the same
    loop pass as the end of speech, before the new Google stream can have connected. It goes
    to the new stream only, whole: nothing lost, nothing sent to the cut stream as well."""
    async with recognizing(start_speech, endpoint_ms=1500) as (speech, stream, collector):
        first = audio(6400) + QUIET * 3200
        await feed_frames(stream, first)
        await eventually(lambda: bool(speech.streams) and len(speech.streams[0].audio) == 9600)
        await eventually(lambda: interim_since(collector))
        second = audio(4000) + QUIET * 3200
        stream.speech_ended()
        assert len(speech.streams) == 1  # no await since the cut: the next is not connected
        await feed_frames(stream, second)
        await eventually(lambda: interim_since(collector, 1200))
        stream.speech_ended()
        await eventually(lambda: len(collector.finals) == 2 and len(speech.streams) == 3)

    assert [(t.text, t.start_ms, t.end_ms) for t in collector.finals] == [
        (transcript_for(first), 0, 1200), (transcript_for(second), 1200, 2100)]
    assert [bytes(s.audio) for s in speech.streams] == [first, second, b""]
    assert [s.final_causes for s in speech.streams] == [["half_close"], ["half_close"], []]


def half_closes() -> float:
    return REGISTRY.get_sample_value("stt_google_half_closes_total") or 0.0


async def test_an_end_of_speech_google_heard_nothing_of_does_not_cut_the_stream(
    start_speech: SpeechFactory,
) -> None:
    """A noise burst the VAD took for speech, with no interim result from Google: cutting there
    would spend a stream on nothing. Speech with interims after it is still cut at its end."""
    before = half_closes()
    async with recognizing(start_speech, endpoint_ms=1500, interim_every=9600) as (
            speech, stream, collector):
        burst = audio(4800) + QUIET * 3200  # under interim_every: Google says nothing of it
        await feed_frames(stream, burst)
        await eventually(lambda: bool(speech.streams) and len(speech.streams[0].audio) == 8000)
        stream.speech_ended()
        await asyncio.sleep(0.2)
        assert len(speech.streams) == 1 and half_closes() == before
        stream.speech_started()
        words = audio(6400) + QUIET * 3200  # an interim at 9600 bytes of the stream's audio
        await feed_frames(stream, words)
        await eventually(lambda: interim_since(collector))
        stream.speech_ended()
        await eventually(lambda: len(collector.finals) == 1 and len(speech.streams) == 2)

    assert half_closes() == before + 1
    [final] = collector.finals
    assert final.text == transcript_for(burst + words)
    assert bytes(speech.streams[0].audio) == burst + words
    assert speech.streams[0].final_causes == ["half_close"]


async def test_without_interim_results_every_end_of_speech_cuts(
    start_speech: SpeechFactory,
) -> None:
    """Interim results off: nothing tells speech from a burst before the final, so the end of
    speech cuts as before."""
    async with recognizing(start_speech, interim=False, endpoint_ms=1500,
                           interim_every=9600) as (speech, stream, collector):
        fed = audio(4800) + QUIET * 3200
        await feed_frames(stream, fed)
        await eventually(lambda: bool(speech.streams) and len(speech.streams[0].audio) == 8000)
        stream.speech_ended()
        await eventually(lambda: len(collector.finals) == 1 and len(speech.streams) == 2)

    assert collector.finals[0].text == transcript_for(fed)
    assert speech.streams[0].final_causes == ["half_close"]


async def test_googles_own_final_still_counts_and_a_burst_after_it_is_not_cut(
    start_speech: SpeechFactory,
) -> None:
    """Google's endpointer finalizes before the VAD ends the speech: the end of speech finds
    nothing Google heard since (no cut), and neither does a noise burst after it."""
    before = half_closes()
    async with recognizing(start_speech, endpoint_ms=200, interim_every=4800) as (
            speech, stream, collector):
        fed = audio(6400) + QUIET * 3200  # an interim at 4800 bytes, the final at 8000
        await feed_frames(stream, fed)
        await eventually(lambda: len(collector.finals) == 1)
        stream.speech_ended()  # only quiet is left since Google's final
        stream.speech_started()
        burst = audio(1600) + QUIET * 800  # 4000 bytes since the final: no interim
        await feed_frames(stream, burst)
        await eventually(lambda: sum(len(s.audio) for s in speech.streams) == 12000)
        stream.speech_ended()
        await asyncio.sleep(0.2)
        assert len(speech.streams) == 1 and half_closes() == before
        # (checked before the close: the fake takes its cancel for a half-close of the burst)
        assert speech.streams[0].final_causes == ["endpointer"]

    assert [(t.text, t.start_ms, t.end_ms) for t in collector.finals] == [
        (transcript_for(fed[:8000]), 0, 1000)]
    assert bytes(speech.streams[0].audio) == fed + burst


async def test_an_interim_that_comes_after_the_end_of_speech_still_cuts(
    start_speech: SpeechFactory,
) -> None:
    """A short answer: Google's first interim comes only after the VAD ended the speech. The
    cut waits for it instead of being dropped (Google's endpointer would take 1.5 s)."""
    before = half_closes()
    async with recognizing(start_speech, endpoint_ms=1500, interim_every=9600) as (
            speech, stream, collector):
        short = audio(4800) + QUIET * 3200  # 600 ms of speech, 400 ms quiet: no interim yet
        await feed_frames(stream, short)
        await eventually(lambda: bool(speech.streams) and len(speech.streams[0].audio) == 8000)
        stream.speech_ended()
        await asyncio.sleep(0.1)
        assert len(speech.streams) == 1 and half_closes() == before
        await feed_frames(stream, QUIET * 1600)  # Google's interim, at 9600 bytes
        await eventually(lambda: len(collector.finals) == 1 and len(speech.streams) == 2)

    assert [(t.text, t.start_ms, t.end_ms) for t in collector.finals] == [
        (transcript_for(short + QUIET * 1600), 0, 1200)]
    assert speech.streams[0].final_causes == ["half_close"]
    assert half_closes() == before + 1


async def test_a_waiting_cut_is_dropped_when_the_caller_speaks_again(
    start_speech: SpeechFactory,
) -> None:
    """The caller speaks again before Google's first interim: cutting then would split the new
    speech, so the cut waits for the end of that speech."""
    async with recognizing(start_speech, endpoint_ms=1500, interim_every=9600) as (
            speech, stream, collector):
        short = audio(4800) + QUIET * 3200
        await feed_frames(stream, short)
        await eventually(lambda: bool(speech.streams) and len(speech.streams[0].audio) == 8000)
        stream.speech_ended()
        stream.speech_started()
        more = audio(3200)  # the interim comes at 9600 bytes, inside this speech
        await feed_frames(stream, more)
        await eventually(lambda: interim_since(collector))
        await asyncio.sleep(0.1)
        assert len(speech.streams) == 1 and collector.finals == []
        tail = QUIET * 3200
        await feed_frames(stream, tail)
        await eventually(lambda: len(speech.streams[0].audio) == 14400)
        stream.speech_ended()
        await eventually(lambda: len(collector.finals) == 1 and len(speech.streams) == 2)

    assert [(t.text, t.start_ms, t.end_ms) for t in collector.finals] == [
        (transcript_for(short + more + tail), 0, 1800)]
    assert speech.streams[0].final_causes == ["half_close"]


async def test_a_googles_final_before_the_first_interim_makes_a_waiting_cut_moot(
    start_speech: SpeechFactory,
) -> None:
    """Google finalized the speech itself while the cut waited for an interim: a later interim
    (of audio after that final) does not cut."""
    async with recognizing(start_speech, endpoint_ms=600, interim_every=9600) as (
            speech, stream, collector):
        fed = audio(4800) + QUIET * 3200  # 400 ms quiet: no final yet, no interim
        await feed_frames(stream, fed)
        await eventually(lambda: bool(speech.streams) and len(speech.streams[0].audio) == 8000)
        stream.speech_ended()
        fed += QUIET * 1600  # the endpointer's final at 9600 bytes
        await feed_frames(stream, QUIET * 1600)
        await eventually(lambda: len(collector.finals) == 1)
        await feed_frames(stream, QUIET * 9600)  # an interim at 19200 bytes, after the final
        await eventually(lambda: interim_since(collector, 1200))
        await asyncio.sleep(0.2)
        assert len(speech.streams) == 1

    assert [(t.text, t.start_ms, t.end_ms) for t in collector.finals] == [
        (transcript_for(fed), 0, 1200)]
    assert speech.streams[0].final_causes == ["endpointer"]


async def test_without_early_finalization_googles_endpointer_decides(
    start_speech: SpeechFactory,
) -> None:
    async with recognizing(start_speech, early=False, endpoint_ms=1500) as (speech, stream,
                                                                           collector):
        fed = audio(6400) + QUIET * 3200
        await feed_frames(stream, fed)
        stream.speech_ended()
        await asyncio.sleep(0.2)
        assert collector.finals == [] and len(speech.streams) == 1
        await feed_frames(stream, QUIET * 8800)  # 1.5 s of quiet in all
        await eventually(lambda: len(collector.finals) == 1)

    assert collector.finals[0].text == transcript_for(fed + QUIET * 8800)
    assert speech.streams[0].final_causes == ["endpointer"]


async def test_a_cut_stream_that_breaks_before_its_final_is_resent_once(
    start_speech: SpeechFactory,
) -> None:
    before = restarts("error")
    # 1250 ms: 12 whole requests while the caller talks, the 13th (400 bytes) only at the cut,
    # and the stream breaks on it, before the half-close.
    async with recognizing(start_speech, fail_after={0: 13}) as (speech, stream, collector):
        fed = audio(6400) + QUIET * 3600
        await feed_frames(stream, fed)
        await eventually(lambda: bool(speech.streams) and len(speech.streams[0].audio) == 9600)
        await eventually(lambda: interim_since(collector))
        stream.speech_ended()
        await eventually(lambda: len(collector.finals) == 1)

    assert [(t.text, t.start_ms, t.end_ms) for t in collector.finals] == [
        (transcript_for(fed), 0, 1250)]
    [resent] = [s for s in speech.streams[1:] if s.final_causes]
    assert bytes(resent.audio) == fed and resent.final_causes == ["half_close"]
    assert collector.error is None
    assert restarts("error") == before + 1


async def test_a_cut_streams_late_final_ends_within_its_own_speech(
    start_speech: SpeechFactory,
) -> None:
    """The caller speaks again at once and the next stream's interims arrive before the cut
    stream's final: that final still ends where its own speech did (1200 ms), not inside the
    next speech, so the turn it answers is timed from its own end."""
    async with recognizing(start_speech, endpoint_ms=1500) as (speech, stream, collector):
        gate = speech.half_close_gate(0)
        first = audio(6400) + QUIET * 3200
        await feed_frames(stream, first)
        await eventually(lambda: bool(speech.streams) and len(speech.streams[0].audio) == 9600)
        await eventually(lambda: interim_since(collector))
        stream.speech_ended()
        stream.speech_started()
        await feed_frames(stream, audio(4000))  # its interims at 1400 ms and 1600 ms
        await eventually(lambda: interim_since(collector, 1200))
        assert collector.finals == []
        gate.set()
        await eventually(lambda: len(collector.finals) == 1)

    assert [(t.text, t.start_ms, t.end_ms) for t in collector.finals] == [
        (transcript_for(first), 0, 1200)]
