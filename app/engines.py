"""Speech engines chosen by `stt.engine` and `tts.engine`, built from the settings.

Each engine module is imported only when chosen: a gateway on Google never loads pocketsphinx,
an offline one never loads the Google clients. Engines take plain arguments, never `Settings`.
"""

from __future__ import annotations

from app.config import Settings
from streaming.ports import SpeechToText, TextToSpeech


def build_stt(settings: Settings) -> SpeechToText:
    stt = settings.stt
    if stt.engine == "pocketsphinx":
        from streaming.stt.pocketsphinx import PocketsphinxSpeechToText

        options = stt.pocketsphinx
        return PocketsphinxSpeechToText(
            phrases=options.phrases, language=options.language, workers=options.workers
        )
    if stt.engine == "google":
        from streaming.stt.google import GoogleSpeechToText

        google = stt.google
        return GoogleSpeechToText(
            model=google.model,
            use_enhanced=google.use_enhanced,
            interim_results=google.interim_results,
            phrase_hints=google.phrase_hints,
            restart_seconds=google.restart_seconds,
            endpoint=google.endpoint,
            insecure=google.insecure,
            timeout_seconds=google.timeout_seconds,
        )
    if stt.engine == "null":
        from streaming.stt.null import NullSpeechToText

        return NullSpeechToText()
    raise ValueError(f"stt.engine: unknown engine {stt.engine!r}")


def build_tts(settings: Settings) -> TextToSpeech:
    """The configured synthesizer, behind the LRU cache when `tts.cache_size` > 0."""
    engine = _synthesizer(settings)
    if settings.tts.cache_size > 0:
        from streaming.tts.cache import CachedTextToSpeech

        return CachedTextToSpeech(engine, settings.tts.cache_size)
    return engine


def _synthesizer(settings: Settings) -> TextToSpeech:
    tts = settings.tts
    if tts.engine == "espeak":
        from streaming.tts.espeak import EspeakTextToSpeech

        espeak = tts.espeak
        return EspeakTextToSpeech(
            voice=espeak.voice, words_per_minute=espeak.words_per_minute, pitch=espeak.pitch
        )
    if tts.engine == "google":
        from streaming.tts.google import GoogleTextToSpeech

        google = tts.google
        return GoogleTextToSpeech(
            voice_name=google.voice_name,
            ssml_gender=google.ssml_gender,
            speaking_rate=google.speaking_rate,
            pitch=google.pitch,
            volume_gain_db=google.volume_gain_db,
            endpoint=google.endpoint,
            insecure=google.insecure,
            timeout_seconds=google.timeout_seconds,
        )
    if tts.engine == "null":
        from streaming.tts.null import NullTextToSpeech

        return NullTextToSpeech()
    raise ValueError(f"tts.engine: unknown engine {tts.engine!r}")
