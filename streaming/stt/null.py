"""A recognizer that costs nothing: for load tests that measure the gateway, not recognition.

It never listens to the audio. It emits a final transcript (`text`, "hola" by default):
- when a fed batch contains a marker: 10 ms or more of mu-law byte 0x00 (full-scale negative,
  which no real audio holds that long). A load generator sends one 20 ms frame of 0x00 bytes
  where the caller "stops talking"; the turn latency is then measured from that frame;
- and, if `every_ms` > 0, each time another `every_ms` of audio has been fed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from audio.framing import BYTES_PER_MS
from streaming.ports import Transcript
from streaming.stt.results import TranscriptQueue


MARKER = b"\x00" * 80


class NullSpeechToText:
    name = "null"

    def __init__(self, *, text: str = "hola", every_ms: int = 0, marker: bool = True) -> None:
        self.text = text
        self.every_bytes = every_ms * BYTES_PER_MS
        self.marker = marker

    def open(self, language: str) -> NullRecognitionStream:
        return NullRecognitionStream(self)

    async def aclose(self) -> None:
        return None


class NullRecognitionStream:
    def __init__(self, engine: NullSpeechToText) -> None:
        self._engine = engine
        self._fed = 0  # bytes = samples at 8 kHz
        self._armed = True  # a marker split over two batches counts once
        self._transcripts = TranscriptQueue()
        self._closed = False

    def feed(self, mulaw: bytes) -> None:
        if self._closed:
            return
        engine, before = self._engine, self._fed
        self._fed += len(mulaw)
        if engine.marker:
            marked = MARKER in mulaw
            if marked and self._armed:
                self._final(before)
            self._armed = not marked
        every = engine.every_bytes
        if every and self._fed // every > before // every:
            self._final(self._fed - every)

    def _final(self, start: int) -> None:
        text = self._engine.text
        self._transcripts.put(Transcript(text, True, 1.0, max(start, 0) // BYTES_PER_MS,
                                         self._fed // BYTES_PER_MS))

    def results(self) -> AsyncIterator[Transcript]:
        return self._transcripts.results()

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._transcripts.close()
