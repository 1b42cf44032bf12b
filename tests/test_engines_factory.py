"""build_stt / build_tts pick and configure the engines named in the settings."""

from __future__ import annotations

import pytest

from app.config import Settings
from app.engines import build_stt, build_tts
from streaming.stt.google import GoogleSpeechToText
from streaming.stt.null import NullSpeechToText
from streaming.stt.pocketsphinx import PocketsphinxSpeechToText
from streaming.tts.cache import CachedTextToSpeech
from streaming.tts.espeak import EspeakTextToSpeech
from streaming.tts.google import GoogleTextToSpeech
from streaming.tts.null import NullTextToSpeech


async def test_pocketsphinx_with_its_options() -> None:
    settings = Settings().replace(stt={"engine": "pocketsphinx", "pocketsphinx": {
        "phrases": ["Block my card", "yes"], "workers": 1}})
    stt = build_stt(settings)
    try:
        assert isinstance(stt, PocketsphinxSpeechToText)
        assert stt.language == "en-US"
        assert stt.phrases == {"block my card": "Block my card", "yes": "yes"}
        assert len(stt.worker_pids()) == 1
    finally:
        await stt.aclose()


def test_pocketsphinx_settings_errors_surface_at_startup() -> None:
    with pytest.raises(ValueError, match="es-ES"):
        build_stt(Settings().replace(stt={"engine": "pocketsphinx",
                                          "pocketsphinx": {"language": "es-ES"}}))
    with pytest.raises(ValueError, match="zzyzzx"):
        build_stt(Settings().replace(stt={"engine": "pocketsphinx",
                                          "pocketsphinx": {"phrases": ["zzyzzx"]}}))


async def test_google_stt_gets_the_google_settings_and_the_shared_hints() -> None:
    settings = Settings().replace(stt={"engine": "google", "phrase_hints": ["ejecutivo"], "google": {
        "model": "latest_short", "restart_seconds": 120,
        "endpoint": "127.0.0.1:1", "insecure": True, "interim_results": False}})
    stt = build_stt(settings)
    assert isinstance(stt, GoogleSpeechToText)
    assert (stt.model, stt.phrase_hints) == ("latest_short", ("ejecutivo",))
    assert stt.restart_seconds == 120
    assert (stt.endpoint, stt.insecure, stt.interim_results) == ("127.0.0.1:1", True, False)
    await stt.aclose()


async def test_null_stt() -> None:
    stt = build_stt(Settings().replace(stt={"engine": "null"}))
    assert isinstance(stt, NullSpeechToText)
    await stt.aclose()


async def test_espeak_behind_the_cache_with_its_options() -> None:
    settings = Settings().replace(tts={"cache_size": 7, "espeak": {
        "voice": "es-419", "words_per_minute": 150, "pitch": 40}})
    tts = build_tts(settings)
    assert isinstance(tts, CachedTextToSpeech) and tts.size == 7
    inner = tts.inner
    assert isinstance(inner, EspeakTextToSpeech)
    assert (inner.voice, inner.words_per_minute, inner.pitch) == ("es-419", 150, 40)
    await tts.aclose()


async def test_cache_size_zero_leaves_the_engine_bare() -> None:
    tts = build_tts(Settings().replace(tts={"cache_size": 0}))
    assert isinstance(tts, EspeakTextToSpeech)
    await tts.aclose()


async def test_google_tts_gets_the_google_settings() -> None:
    settings = Settings().replace(tts={"engine": "google", "cache_size": 0, "google": {
        "voice_name": "es-US-Standard-B", "endpoint": "127.0.0.1:1", "insecure": True}})
    tts = build_tts(settings)
    assert isinstance(tts, GoogleTextToSpeech)
    assert (tts.voice_name, tts.endpoint, tts.insecure) == ("es-US-Standard-B", "127.0.0.1:1", True)
    await tts.aclose()


async def test_null_tts_is_cached_like_any_other() -> None:
    tts = build_tts(Settings().replace(tts={"engine": "null"}))
    assert isinstance(tts, CachedTextToSpeech) and isinstance(tts.inner, NullTextToSpeech)
    await tts.aclose()
