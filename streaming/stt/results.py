"""The transcripts a recognition stream hands to `results()`, and how that iteration ends.

Every engine's stream puts its transcripts here as they come; `close` ends the iteration, `fail`
ends it with a SpeechError. The end is final: nothing put after it is handed out, and an
iteration started later ends the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from streaming.ports import SpeechError, Transcript

_END = object()


class TranscriptQueue:
    def __init__(self) -> None:
        self._queue: asyncio.Queue[Transcript | SpeechError | object] = asyncio.Queue()
        self._ended = False

    @property
    def ended(self) -> bool:
        """`close` or `fail` was called: the stream is over."""
        return self._ended

    def put(self, transcript: Transcript) -> None:
        if not self._ended:
            self._queue.put_nowait(transcript)

    def fail(self, error: SpeechError) -> None:
        """Iterations end by raising `error`, once what came before it has been handed out."""
        self._end(error)

    def close(self) -> None:
        """Iterations end, once what came before has been handed out."""
        self._end(_END)

    def _end(self, item: object) -> None:
        if not self._ended:
            self._ended = True
            self._queue.put_nowait(item)

    async def results(self) -> AsyncIterator[Transcript]:
        """RecognitionStream.results: the transcripts in order, until the end."""
        while True:
            item = await self._queue.get()
            if isinstance(item, Transcript):
                yield item
                continue
            self._queue.put_nowait(item)  # later iterations end the same way
            if isinstance(item, SpeechError):
                raise item
            return
