"""Speech engines chosen by `stt.engine` and `tts.engine`, built from the settings.

Each engine module is imported only when chosen: a gateway on Google never loads pocketsphinx,
an offline one never loads the Google clients. Engines take plain arguments, never `Settings`:
an engine's settings section (`stt.google`, `tts.espeak`, ...) holds exactly its keyword arguments,
and the recognizers that declare them also get the settings several engines share (`SHARED_STT`).
The section's defaults are the only ones: an engine takes those arguments without a default.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from typing import Any

from app.config import Settings, SttSettings, TtsSettings
from streaming.ports import SpeechToText, TextToSpeech

_STT = {
    "whisper": "streaming.stt.whisper:WhisperSpeechToText",
    "pocketsphinx": "streaming.stt.pocketsphinx:PocketsphinxSpeechToText",
    "google": "streaming.stt.google:GoogleSpeechToText",
    "null": "streaming.stt.null:NullSpeechToText",
}
_TTS = {
    "espeak": "streaming.tts.espeak:EspeakTextToSpeech",
    "google": "streaming.tts.google:GoogleTextToSpeech",
    "null": "streaming.tts.null:NullTextToSpeech",
}


def shared_stt_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments any recognizer may take, from settings that are not its own section."""
    return {
        "phrase_hints": settings.stt.phrase_hints,
        "endpoint_silence_ms": settings.stt.endpoint_silence_ms,
        "energy_threshold": settings.vad.energy_threshold,
    }


def build_stt(settings: Settings) -> SpeechToText:
    """The configured recognizer. The Whisper engine raises ModelError when its model fails
    the integrity check (the command line turns it into a one-line message and exit code 2)."""
    engine: SpeechToText = _build("stt", settings.stt, _STT, shared_stt_options(settings))
    return engine


def build_tts(settings: Settings) -> TextToSpeech:
    """The configured synthesizer, behind the LRU cache when `tts.cache_size` > 0."""
    engine: TextToSpeech = _build("tts", settings.tts, _TTS)
    if settings.tts.cache_size > 0:
        from streaming.tts.cache import CachedTextToSpeech

        return CachedTextToSpeech(engine, settings.tts.cache_size)
    return engine


def _build(kind: str, section: SttSettings | TtsSettings, classes: dict[str, str],
           shared: dict[str, Any] | None = None) -> Any:
    name = section.engine
    if name not in classes:
        raise ValueError(f"{kind}.engine: unknown engine {name!r}")
    module, _, class_name = classes[name].partition(":")
    engine_class = getattr(importlib.import_module(module), class_name)
    section_options = getattr(section, name, None)  # the null engines have no settings
    options = dataclasses.asdict(section_options) if section_options is not None else {}
    accepted = inspect.signature(engine_class).parameters
    options.update({key: value for key, value in (shared or {}).items() if key in accepted})
    return engine_class(**options)
