"""Speech engines chosen by `stt.engine` and `tts.engine`, built from the settings.

Each engine module is imported only when chosen: a gateway on Google never loads pocketsphinx,
an offline one never loads the Google clients. Engines take plain arguments, never `Settings`:
an engine's settings section (`stt.google`, `tts.espeak`, ...) holds exactly its keyword arguments.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from app.config import Settings, SttSettings, TtsSettings
from streaming.ports import SpeechToText, TextToSpeech

_STT = {
    "pocketsphinx": "streaming.stt.pocketsphinx:PocketsphinxSpeechToText",
    "google": "streaming.stt.google:GoogleSpeechToText",
    "null": "streaming.stt.null:NullSpeechToText",
}
_TTS = {
    "espeak": "streaming.tts.espeak:EspeakTextToSpeech",
    "google": "streaming.tts.google:GoogleTextToSpeech",
    "null": "streaming.tts.null:NullTextToSpeech",
}


def build_stt(settings: Settings) -> SpeechToText:
    return _build("stt", settings.stt, _STT)  # type: ignore[no-any-return]


def build_tts(settings: Settings) -> TextToSpeech:
    """The configured synthesizer, behind the LRU cache when `tts.cache_size` > 0."""
    engine: TextToSpeech = _build("tts", settings.tts, _TTS)
    if settings.tts.cache_size > 0:
        from streaming.tts.cache import CachedTextToSpeech

        return CachedTextToSpeech(engine, settings.tts.cache_size)
    return engine


def _build(kind: str, section: SttSettings | TtsSettings, classes: dict[str, str]) -> Any:
    name = section.engine
    if name not in classes:
        raise ValueError(f"{kind}.engine: unknown engine {name!r}")
    module, _, class_name = classes[name].partition(":")
    engine_class = getattr(importlib.import_module(module), class_name)
    options = getattr(section, name, None)  # the null engines have no settings
    return engine_class() if options is None else engine_class(**dataclasses.asdict(options))
