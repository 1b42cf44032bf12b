"""The transcript queue every recognition stream hands to `results()`: order, and sticky ends."""

from __future__ import annotations

import pytest

from streaming.ports import SpeechError, Transcript
from streaming.stt.results import TranscriptQueue


async def collect(queue: TranscriptQueue) -> list[str]:
    return [t.text async for t in queue.results()]


async def test_transcripts_in_order_until_close_and_every_later_iteration_ends_too() -> None:
    queue = TranscriptQueue()
    queue.put(Transcript("uno", False))
    queue.put(Transcript("uno dos", True))
    queue.close()
    queue.put(Transcript("after the end", True))
    assert await collect(queue) == ["uno", "uno dos"]
    assert await collect(queue) == []


async def test_a_failure_ends_every_iteration_with_the_error() -> None:
    queue = TranscriptQueue()
    queue.put(Transcript("hola", True))
    queue.fail(SpeechError("engine broke"))
    seen = []
    with pytest.raises(SpeechError, match="engine broke"):
        async for transcript in queue.results():
            seen.append(transcript.text)
    assert seen == ["hola"]
    with pytest.raises(SpeechError, match="engine broke"):
        await collect(queue)
