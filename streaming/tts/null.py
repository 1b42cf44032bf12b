"""A synthesizer that costs nothing: silence as long as the text would take to say, at once."""

from __future__ import annotations

from collections.abc import AsyncIterator

from audio import mulaw
from audio.framing import SAMPLE_RATE, chunk_size

_SECOND = mulaw.silence(SAMPLE_RATE)


class NullTextToSpeech:
    name = "null"

    def __init__(self, *, ms_per_char: int = 60, chunk_ms: int = 1000) -> None:
        self.ms_per_char = ms_per_char  # ~16 characters a second, a calm speaking rate
        self.chunk_bytes = chunk_size(max(1, min(chunk_ms, 1000)))

    async def synthesize(self, text: str, language: str) -> AsyncIterator[bytes]:
        remaining = chunk_size(len(text.strip()) * self.ms_per_char)
        while remaining > 0:
            size = min(remaining, self.chunk_bytes)
            yield _SECOND[:size]
            remaining -= size

    async def aclose(self) -> None:
        return None
