"""PocketsphinxSpeechToText on real audio: the fixtures, fed 20 ms at a time like Twilio does."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from app.config import EspeakSettings, PocketsphinxSettings
from audio import wav
from streaming.ports import SpeechError, Transcript
from streaming.stt.pocketsphinx import (
    MAX_BEHIND_BYTES,
    PocketsphinxRecognitionStream,
    PocketsphinxSpeechToText,
)
from streaming.tts.espeak import EspeakTextToSpeech
from tests.support.engines import configured

FIXTURES = Path(__file__).parent / "fixtures"
PHRASES = (
    "Block my card", "I lost my credit card", "my card was stolen", "talk to a person",
    "transfer me to an agent", "check my balance", "cancel my card", "yes", "no", "help",
)


def audio(name: str) -> bytes:
    return wav.read_mulaw_8k(FIXTURES / f"{name}.wav")


@pytest.fixture(scope="module")
def engine() -> Iterator[PocketsphinxSpeechToText]:
    engine = configured(PocketsphinxSpeechToText, PocketsphinxSettings, phrases=PHRASES,
                        workers=1)
    yield engine
    asyncio.run(engine.aclose())


async def recognize(stream: PocketsphinxRecognitionStream, mulaw: bytes,
                    finals: int) -> list[Transcript]:
    """Feed 20 ms frames, collect until `finals` final transcripts arrived, then close."""
    seen: list[Transcript] = []

    async def collect(results: AsyncIterator[Transcript]) -> None:
        async for transcript in results:
            seen.append(transcript)
            if sum(t.is_final for t in seen) == finals:
                return

    collector = asyncio.create_task(collect(stream.results()))
    for offset in range(0, len(mulaw), 160):
        stream.feed(mulaw[offset:offset + 160])
    try:
        async with asyncio.timeout(30):  # a safety net, not a speed requirement
            await collector
    finally:
        collector.cancel()
        await stream.close()
    return seen


def finals(transcripts: list[Transcript]) -> list[str]:
    return [t.text for t in transcripts if t.is_final]


@pytest.mark.parametrize(("name", "phrase"), [
    ("block_my_card", "Block my card"),
    ("i_lost_my_credit_card", "I lost my credit card"),
    ("my_card_was_stolen", "my card was stolen"),
    ("talk_to_a_person", "talk to a person"),
    ("yes", "yes"),
    ("no", "no"),
])
async def test_fixture_decodes_to_its_phrase_as_configured(
    engine: PocketsphinxSpeechToText, name: str, phrase: str
) -> None:
    mulaw = audio(name)
    heard = await recognize(engine.open("en-US"), mulaw, finals=1)
    assert finals(heard) == [phrase]
    final = heard[-1]
    # Each fixture has 0.5 s of line noise before the speech and 0.8 s after it.
    assert final.start_ms is not None and final.end_ms is not None
    assert 300 <= final.start_ms <= 700
    assert final.start_ms + 200 < final.end_ms <= len(mulaw) // 8 - 500


async def test_utterances_of_one_call_come_in_order_with_growing_times(
    engine: PocketsphinxSpeechToText,
) -> None:
    mulaw = audio("yes") + audio("block_my_card") + audio("no")
    heard = [t for t in await recognize(engine.open("en-US"), mulaw, finals=3) if t.is_final]
    assert [t.text for t in heard] == ["yes", "Block my card", "no"]
    ends = [0] + [t.end_ms for t in heard]
    starts = [t.start_ms for t in heard]
    assert all(e < s for e, s in zip(ends, starts))  # type: ignore[operator]
    assert 2210 < heard[1].start_ms < 2210 + 700  # type: ignore[operator]  # yes.wav is 2.21 s


@pytest.mark.parametrize("name", ["weather", "spanish_bloquear", "noise", "silence"])
async def test_speech_outside_the_grammar_and_noise_give_no_final(
    engine: PocketsphinxSpeechToText, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "streaming.stt.pocketsphinx")
    # "yes" afterwards proves the first part was fully processed and produced nothing. The
    # silence between keeps the endpointer from joining loud noise and "yes" in one utterance.
    mulaw = audio(name) + audio("silence") + audio("yes")
    heard = await recognize(engine.open("en-US"), mulaw, finals=1)
    assert finals(heard) == ["yes"]
    assert all(t.text != "" for t in heard)
    if name in ("weather", "spanish_bloquear"):
        assert any(getattr(r, "event", "") == "stt_rejected" for r in caplog.records)


async def test_interim_results_come_before_the_final_of_the_same_utterance(
    engine: PocketsphinxSpeechToText,
) -> None:
    stream = engine.open("en-US")
    seen: list[Transcript] = []

    async def collect() -> None:
        async for transcript in stream.results():
            seen.append(transcript)
            if transcript.is_final:
                return

    collector = asyncio.create_task(collect())
    mulaw = audio("i_lost_my_credit_card")
    for offset in range(0, len(mulaw), 160):  # in real time, as a caller speaks
        stream.feed(mulaw[offset:offset + 160])
        await asyncio.sleep(0.02)
    async with asyncio.timeout(30):
        await collector
    await stream.close()
    interims, final = seen[:-1], seen[-1]
    assert final.text == "I lost my credit card" and final.is_final
    assert interims and not any(t.is_final for t in interims)
    assert all(t.start_ms == final.start_ms for t in interims)
    assert all(t.end_ms <= final.end_ms for t in interims)  # type: ignore[operator]


async def test_espeak_speech_round_trips_through_the_recognizer(
    engine: PocketsphinxSpeechToText,
) -> None:
    """Our own synthesizer's mu-law (header stripped, resampled) is what the recognizer hears."""
    tts = configured(EspeakTextToSpeech, EspeakSettings, words_per_minute=140)
    spoken = b"".join([chunk async for chunk in tts.synthesize("i lost my credit card", "en-US")])
    silence = audio("silence")
    heard = await recognize(engine.open("en-US"), silence + spoken + silence, finals=1)
    assert finals(heard) == ["I lost my credit card"]


async def test_close_mid_utterance_ends_results_and_the_engine_goes_on(
    engine: PocketsphinxSpeechToText,
) -> None:
    stream = engine.open("en-US")
    half = audio("i_lost_my_credit_card")[:12000]  # stops inside the phrase
    for offset in range(0, len(half), 160):
        stream.feed(half[offset:offset + 160])
    await stream.close()
    await stream.close()  # idempotent
    assert [t async for t in stream.results() if t.is_final] == []
    stream.feed(audio("yes"))  # ignored after close
    heard = await recognize(engine.open("en-US"), audio("no"), finals=1)
    assert finals(heard) == ["no"]


async def test_speech_piling_up_behind_a_busy_worker_raises_speech_error(
    engine: PocketsphinxSpeechToText,
) -> None:
    """`feed` is synchronous and bounds the backlog itself: here the first batch's job cannot
    finish (the loop never turns), so the rest of the speech piles up until the stream fails."""
    stream = engine.open("en-US")
    phrase = audio("i_lost_my_credit_card")
    for _ in range(MAX_BEHIND_BYTES // len(phrase) + 2):  # mu-law: at least 2x the bound in PCM
        for offset in range(0, len(phrase), 160):
            stream.feed(phrase[offset:offset + 160])
    with pytest.raises(SpeechError, match="fell behind"):
        async with asyncio.timeout(30):  # a safety net, not a speed requirement
            async for _ in stream.results():
                pass
    stream.feed(phrase)  # after the failure: ignored, nothing raised
    await stream.close()
    heard = await recognize(engine.open("en-US"), audio("yes"), finals=1)
    assert finals(heard) == ["yes"]  # the worker is still fine for other calls


async def test_a_call_in_spanish_logs_one_warning_per_language(
    engine: PocketsphinxSpeechToText, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "streaming.stt.pocketsphinx")
    streams = [engine.open("es-ES"), engine.open("es-ES"), engine.open("en-US")]
    for stream in streams:
        await stream.close()
    warnings = [r for r in caplog.records if getattr(r, "event", "") == "stt_language_unsupported"]
    assert len(warnings) == 1 and "es-ES" in warnings[0].getMessage()
    assert engine.language == "en-US"


def test_words_missing_from_the_dictionary_are_named_at_construction() -> None:
    with pytest.raises(ValueError, match="blorptastic"):
        configured(PocketsphinxSpeechToText, PocketsphinxSettings,
                   phrases=["block my blorptastic card"])


def test_only_the_english_model_exists() -> None:
    with pytest.raises(ValueError, match="es-ES"):
        configured(PocketsphinxSpeechToText, PocketsphinxSettings, language="es-ES")


async def test_free_dictation_without_phrases() -> None:
    engine = configured(PocketsphinxSpeechToText, PocketsphinxSettings, workers=1)
    try:
        heard = await recognize(engine.open("en-US"), audio("yes") + audio("no"), finals=2)
    finally:
        await engine.aclose()
    assert finals(heard) == ["yes", "no"]


async def test_a_crashed_worker_fails_its_calls_and_is_replaced() -> None:
    engine = configured(PocketsphinxSpeechToText, PocketsphinxSettings, phrases=PHRASES,
                        workers=1)
    try:
        first = engine.open("en-US")
        assert finals(await recognize(first, audio("yes"), finals=1)) == ["yes"]
        stream = engine.open("en-US")
        (pid,) = engine.worker_pids()
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(SpeechError):
            async with asyncio.timeout(30):
                await recognize(stream, audio("no"), finals=1)
        assert finals(await recognize(engine.open("en-US"), audio("no"), finals=1)) == ["no"]
        assert engine.worker_pids() != [pid]
    finally:
        await engine.aclose()
    assert engine.worker_pids() == []
