"""WhisperSpeechToText on the Spanish fixtures, fed 20 ms at a time as Twilio does.

One model for the whole test session (the `whisper_engine` fixture); engines built with other
options share it. The fixtures are espeak-ng voices through a telephone band: Whisper base does
not get every word of them right (bench/whisper.py measures the word error rate), so each test
asks for the words the bot's intents hang on.
"""

from __future__ import annotations

import asyncio
import logging
import unicodedata
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.config import Settings
from app.engines import build_stt
from audio import wav
from streaming.ports import SpeechError, Transcript
from streaming.stt.whisper import WhisperRecognitionStream, WhisperSpeechToText, token_budget

FIXTURES = Path(__file__).parent / "fixtures"
# fixture -> words its transcript must contain (compared without case, accents or punctuation)
SPANISH = {
    "spanish_bloquear": ("bloquear", "tarjeta", "credito"),
    "es_bloquear_tarjeta": ("bloquear", "tarjeta"),
    "es_robaron_debito": ("tarjeta", "debito"),
    "es_hablar_ejecutivo": ("hablar", "ejecutivo"),
    "es_si_por_favor": ("si", "por favor"),
    "es_perdi_credito": ("tarjeta", "credito"),
}


def engine_with(**whisper: object) -> WhisperSpeechToText:
    """The default recognizer with some `stt.whisper` settings changed (same loaded model)."""
    engine = build_stt(Settings().replace(stt={"whisper": whisper}))
    assert isinstance(engine, WhisperSpeechToText)
    return engine


def audio(name: str) -> bytes:
    return wav.read_mulaw_8k(FIXTURES / f"{name}.wav")


def plain(text: str) -> str:
    """Lower case words without accents or punctuation: "¿Sí, por favor?" -> "si por favor"."""
    letters = unicodedata.normalize("NFKD", text.lower())
    kept = "".join(c if c.isalnum() else " " for c in letters if not unicodedata.combining(c))
    return " ".join(kept.split())


def says(text: str, *words: str) -> bool:
    return all(f" {word} " in f" {plain(text)} " for word in words)


async def recognize(stream: WhisperRecognitionStream, mulaw: bytes, finals: int,
                    realtime: bool = False) -> list[Transcript]:
    """Feed 20 ms frames, collect until `finals` transcripts arrived, then close."""
    seen: list[Transcript] = []

    async def collect(results: AsyncIterator[Transcript]) -> None:
        async for transcript in results:
            seen.append(transcript)
            if len(seen) == finals:
                return

    collector = asyncio.create_task(collect(stream.results()))
    for offset in range(0, len(mulaw), 160):
        stream.feed(mulaw[offset:offset + 160])
        if realtime:
            await asyncio.sleep(0.02)
    try:
        async with asyncio.timeout(60):  # a safety net, not a speed requirement
            await collector
    finally:
        collector.cancel()
        await stream.close()
    return seen


@pytest.mark.parametrize(("name", "words"), SPANISH.items())
async def test_a_spanish_caller_is_understood(whisper_engine: WhisperSpeechToText, name: str,
                                              words: tuple[str, ...]) -> None:
    mulaw = audio(name)
    (final,) = await recognize(whisper_engine.open("es-ES"), mulaw, finals=1)
    assert final.is_final
    assert says(final.text, *words), final.text
    # 0.5 s of line noise before the speech (the pre-roll reaches back into it), 0.8 s after.
    assert final.start_ms is not None and final.end_ms is not None
    assert 100 <= final.start_ms <= 500
    assert final.start_ms + 300 < final.end_ms <= len(mulaw) // 8 - 500


@pytest.mark.parametrize("name", ["noise", "music", "hum", "silence", "es_echo"])
async def test_noise_music_silence_and_echo_give_no_transcript(
    whisper_engine: WhisperSpeechToText, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "streaming.stt.whisper")
    # The request after it proves the first part was fully processed and gave nothing.
    mulaw = audio(name) + audio("silence") + audio("es_bloquear_tarjeta")
    heard = await recognize(whisper_engine.open("es-ES"), mulaw, finals=1)
    assert len(heard) == 1 and says(heard[0].text, "bloquear")
    assert heard[0].start_ms > len(audio(name)) // 8  # type: ignore[operator]
    if name in ("noise", "music", "hum"):  # loud enough to be cut out and decoded, then dropped
        assert [r for r in caplog.records if getattr(r, "event", "") == "stt_rejected"]


async def test_utterances_of_one_call_come_in_order(whisper_engine: WhisperSpeechToText) -> None:
    names = ["es_si_por_favor", "es_hablar_ejecutivo", "es_bloquear_tarjeta"]
    mulaw = b"".join(audio(name) for name in names)
    heard = await recognize(whisper_engine.open("es-ES"), mulaw, finals=3)
    assert [says(t.text, word) for t, word in zip(heard, ["favor", "hablar", "bloquear"])] == [
        True, True, True]
    ends = [0] + [t.end_ms for t in heard]
    assert all(e < t.start_ms for e, t in zip(ends, heard))  # type: ignore[operator]


async def test_speech_longer_than_the_limit_is_decoded_in_pieces(
    whisper_engine: WhisperSpeechToText,
) -> None:
    engine = engine_with(max_utterance_seconds=3, max_queue_seconds=120)
    assert engine.model is whisper_engine.model  # one model per process
    # 5 s of speech without a pause long enough to end it (the fixtures' padding cut off),
    # then a request after a silence, whose transcript says everything before was decoded.
    speech = b"".join(audio(name)[4000:-6400] for name in ("es_bloquear_tarjeta",
                                                           "es_hablar_ejecutivo"))
    stream = engine.open("es-ES")
    seen: list[Transcript] = []

    async def collect() -> None:
        async for transcript in stream.results():
            seen.append(transcript)
            if says(transcript.text, "favor"):
                return

    collector = asyncio.create_task(collect())
    stream.feed(speech + audio("silence") + audio("es_si_por_favor"))
    try:
        async with asyncio.timeout(60):
            await collector
    finally:
        await stream.close()
        await engine.aclose()
    pieces = seen[:-1]
    assert pieces, "the long speech gave no transcript"
    assert all(t.end_ms - t.start_ms <= 3000 for t in pieces)  # type: ignore[operator]
    assert pieces[-1].end_ms <= len(speech) // 8  # type: ignore[operator]


async def test_a_pool_that_falls_behind_fails_the_stream(
    whisper_engine: WhisperSpeechToText,
) -> None:
    """Three utterances at once for one decoder, which may let them wait 0.1 s at most: the
    second one finds the decoder still busy with the first, and the call's stream fails."""
    engine = engine_with(workers=1, max_queue_seconds=0.1)
    try:
        stream = engine.open("es-ES")
        for name in ("es_si_por_favor", "es_no_gracias", "es_bloquear_tarjeta"):
            stream.feed(audio(name))
        with pytest.raises(SpeechError, match="behind"):
            async with asyncio.timeout(60):
                async for _ in stream.results():
                    pass
        stream.feed(audio("es_si_por_favor"))  # after the failure: ignored, nothing raised
        await stream.close()
        # The engine itself is fine: the next call is heard.
        (final,) = await recognize(engine.open("es-ES"), audio("es_hablar_ejecutivo"), finals=1)
        assert says(final.text, "hablar")
    finally:
        await engine.aclose()


async def test_close_mid_utterance_and_mid_decode_ends_results(
    whisper_engine: WhisperSpeechToText,
) -> None:
    stream = whisper_engine.open("es-ES")
    stream.feed(audio("es_si_por_favor"))  # a decode starts
    stream.feed(audio("es_bloquear_tarjeta")[:12000])  # and speech is in progress
    await stream.close()
    await stream.close()  # idempotent
    assert [t async for t in stream.results()] == []
    stream.feed(audio("es_si_por_favor"))  # ignored after close
    (final,) = await recognize(whisper_engine.open("es-ES"), audio("es_hablar_ejecutivo"), finals=1)
    assert says(final.text, "hablar")


async def test_a_closed_engine_refuses_new_calls(whisper_engine: WhisperSpeechToText) -> None:
    engine = engine_with()
    await engine.aclose()
    with pytest.raises(SpeechError, match="closed"):
        engine.open("es-ES")


def test_the_token_bound_leaves_room_for_the_prompt() -> None:
    # Whisper's decoder holds 448 tokens, the prompt's included (CTranslate2 refuses more).
    assert token_budget(seconds=2.0, prompt_tokens=5) == 20
    assert token_budget(seconds=0.3, prompt_tokens=5) == 12
    assert token_budget(seconds=30.0, prompt_tokens=5) == 300
    assert token_budget(seconds=30.0, prompt_tokens=228) == 220
    assert token_budget(seconds=30.0, prompt_tokens=100, max_length=300) == 200


async def test_a_long_prompt_and_a_30_s_utterance_fit_the_decoder(
    whisper_engine: WhisperSpeechToText,
) -> None:
    """Phrase hints long enough for faster-whisper's longest prompt (223 tokens of them) and an
    utterance of the longest allowed length: 300 tokens for 30 s would overflow the decoder."""
    hints = [f"tarjeta número {n}" for n in range(120)]
    engine = build_stt(Settings().replace(stt={"phrase_hints": hints,
                                               "whisper": {"max_utterance_seconds": 30}}))
    assert isinstance(engine, WhisperSpeechToText)
    try:
        speech = audio("es_bloquear_tarjeta")
        thirty_seconds = (speech * (240000 // len(speech) + 1))[:240000]
        decoded = await asyncio.get_running_loop().run_in_executor(
            engine.pool, engine.decode, thirty_seconds, "es")
        assert decoded.text or decoded.rejected
    finally:
        await engine.aclose()
