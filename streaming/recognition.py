"""One call's speech recognizer as the session uses it: opened once, fed in batches, told when
the caller stopped, its final transcripts read, closed once; an engine that fails is reported,
never raised into the call.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from streaming import metrics
from streaming.ports import RecognitionStream, SpeechToText, Transcript

logger = logging.getLogger("streaming.session")


class Recognition:
    """`stream` is None when the engine could not open one: the session then degrades the call.
    `on_broken` is told (once) when `feed` raised: an engine bug must not break the frame path."""

    def __init__(self, stt: SpeechToText, language: str, log: Mapping[str, Any],
                 on_broken: Callable[[BaseException], None]) -> None:
        self._log, self._on_broken = log, on_broken
        self.stream: RecognitionStream | None = None
        try:
            self.stream = stt.open(language)
        except Exception as exc:
            logger.error("speech recognizer could not open: %s", exc,
                         extra={"event": "stt_failed", **log})
        self._feed = self.stream.feed if self.stream is not None else None
        # Optional (streaming.ports.RecognitionStream): engines that can finalize on demand.
        self._speech_ended = getattr(self.stream, "speech_ended", None)
        self._speech_started = getattr(self.stream, "speech_started", None)

    def feed(self, audio: bytes) -> None:
        """One batch of audio (>= 100 ms: never a single 20 ms frame)."""
        feed = self._feed
        if feed is None:
            return
        try:
            feed(audio)
        except Exception as exc:
            self._broken(exc)

    def speech_ended(self) -> None:
        """The session's VAD saw the caller stop (once per utterance, after the audio up to
        there was fed): an engine that can finalize now does."""
        self._tell(self._speech_ended)

    def speech_started(self) -> None:
        """The session's VAD heard the caller begin to speak (once per utterance)."""
        self._tell(self._speech_started)

    def _tell(self, hook: Callable[[], None] | None) -> None:
        """Call one of the engine's optional hooks, unless it has none or is broken already."""
        if hook is None or self._feed is None:
            return
        try:
            hook()
        except Exception as exc:
            self._broken(exc)

    def _broken(self, exc: Exception) -> None:
        self._feed = None
        metrics.STT_FEED_ERRORS.inc()
        logger.error("speech recognizer rejected audio: %r", exc,
                     extra={"event": "stt_feed_failed", **self._log})
        self._on_broken(exc)

    async def finals(self) -> AsyncIterator[Transcript]:
        """Final transcripts, text stripped and non-empty; raises what the engine raises
        (SpeechError)."""
        assert self.stream is not None
        async for transcript in self.stream.results():
            text = transcript.text.strip()
            if transcript.is_final and text:
                yield dataclasses.replace(transcript, text=text)

    async def close(self) -> None:
        if self.stream is None:
            return
        try:
            await self.stream.close()
        except Exception as exc:
            logger.warning("speech recognizer did not close cleanly: %s", exc,
                           extra={"event": "stt_close_failed", **self._log})
