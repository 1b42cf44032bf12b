"""EspeakTextToSpeech: the real espeak-ng binary, its output checked as telephone audio."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from pathlib import Path

import numpy as np
import psutil
import pytest

from app.config import EspeakSettings
from audio import mulaw, wav
from streaming.ports import SynthesisError
from streaming.tts.espeak import EspeakTextToSpeech
from tests.support.engines import configured

GREETING = ("Buenos días, le atiende el asistente virtual de bloqueo de tarjetas. "
            "¿En qué puedo ayudarle?")
LONG_TEXT = " ".join(["Le paso con un ejecutivo, un momento por favor."] * 60)


@pytest.fixture(scope="module")
def tts() -> EspeakTextToSpeech:
    return configured(EspeakTextToSpeech, EspeakSettings)


async def synthesize(tts: EspeakTextToSpeech, text: str, language: str) -> list[bytes]:
    return [chunk async for chunk in tts.synthesize(text, language)]


def loudness(audio: bytes) -> float:
    """RMS of the 16-bit signal over the middle half (past leading and trailing silence)."""
    pcm = np.frombuffer(mulaw.decode(audio), np.int16).astype(np.float64)
    middle = pcm[len(pcm) // 4: 3 * len(pcm) // 4]
    return float(np.sqrt(np.mean(middle ** 2)))


@pytest.mark.parametrize(("text", "language"), [
    (GREETING, "es-ES"),
    (GREETING, "es-MX"),
    ("I lost my credit card, please block it.", "en-US"),
])
async def test_speech_is_audible_mulaw_of_plausible_duration(
    tts: EspeakTextToSpeech, text: str, language: str
) -> None:
    chunks = await synthesize(tts, text, language)
    audio = b"".join(chunks)
    assert len(chunks) > 1  # streamed while espeak speaks, not in one piece
    assert not audio.startswith(b"RIFF")
    seconds = len(audio) / 8000  # 8 kHz mu-law: one byte per sample
    words = len(text.split())
    expected = words / tts.words_per_minute * 60
    assert 0.6 * expected < seconds < 2.0 * expected
    assert loudness(audio) > 1000  # speech, not silence (silence decodes to 0)
    assert loudness(audio) < 20000  # and not clipping garbage


async def test_audio_matches_espeak_file_output_converted_offline(
    tts: EspeakTextToSpeech, tmp_path: Path
) -> None:
    """The streamed WAV's header is parsed, not played, and the samples are all there."""
    streamed = np.frombuffer(mulaw.decode(b"".join(await synthesize(tts, "yes", "en-US"))),
                             np.int16).astype(np.float64)
    subprocess.run([tts.binary, "-v", "en-us", "-s", str(tts.words_per_minute), "-p",
                    str(tts.pitch), "-w", str(tmp_path / "yes.wav"), "yes"], check=True)
    reference = np.frombuffer(mulaw.decode(wav.read_mulaw_8k(tmp_path / "yes.wav")),
                              np.int16).astype(np.float64)
    assert abs(len(streamed) - len(reference)) <= 2
    n = min(len(streamed), len(reference))
    assert np.corrcoef(streamed[:n], reference[:n])[0, 1] > 0.99


def test_voice_follows_the_language_unless_configured(tts: EspeakTextToSpeech) -> None:
    assert tts.voice_for("es-ES") == "es"
    assert tts.voice_for("es-MX") == "es-419"
    assert tts.voice_for("es-US") == "es-419"
    assert tts.voice_for("en-US") == "en-us"
    engine = configured(EspeakTextToSpeech, EspeakSettings, voice="es-419")
    assert engine.voice_for("es-ES") == "es-419"
    with pytest.raises(SynthesisError, match="xx-YY"):
        tts.voice_for("xx-YY")


async def test_text_is_never_read_as_options_or_shell(tts: EspeakTextToSpeech) -> None:
    hostile = "-v xx --help; echo pwned $(id)"
    audio = b"".join(await synthesize(tts, hostile, "en-US"))
    assert len(audio) / 8000 > 1.0  # all of it spoken, as text
    assert loudness(audio) > 1000


async def test_empty_text_yields_nothing(tts: EspeakTextToSpeech) -> None:
    assert await synthesize(tts, "  ", "es-ES") == []


async def test_unknown_voice_raises_synthesis_error() -> None:
    broken = configured(EspeakTextToSpeech, EspeakSettings, voice="xx-yy")
    with pytest.raises(SynthesisError, match="exit 1"):
        await synthesize(broken, "hola", "es-ES")


def test_missing_binary_fails_at_construction() -> None:
    with pytest.raises(FileNotFoundError, match="espeak-ng-missing"):
        configured(EspeakTextToSpeech, EspeakSettings, binary="espeak-ng-missing")


def espeak_children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children() if "espeak" in p.name()]


async def test_closing_the_generator_kills_and_reaps_espeak(tts: EspeakTextToSpeech) -> None:
    chunks = tts.synthesize(LONG_TEXT, "es-ES")
    await anext(chunks)
    (child,) = espeak_children()  # still speaking: minutes of audio, a full pipe
    await chunks.aclose()
    assert not child.is_running()  # killed and reaped: no zombie left
    assert espeak_children() == []


async def test_cancelling_the_consumer_kills_and_reaps_espeak(tts: EspeakTextToSpeech) -> None:
    started = asyncio.Event()

    async def listen() -> None:
        async with contextlib.aclosing(tts.synthesize(LONG_TEXT, "es-ES")) as chunks:
            async for _ in chunks:
                started.set()
                await asyncio.sleep(3600)  # a caller slowly listening

    task = asyncio.create_task(listen())
    await started.wait()
    (child,) = espeak_children()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not child.is_running()
    assert espeak_children() == []
