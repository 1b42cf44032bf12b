"""The zero-cost engines the load benchmark runs with."""

from __future__ import annotations

import asyncio

from streaming.ports import Transcript
from streaming.stt.null import NullSpeechToText
from streaming.tts.null import NullTextToSpeech

SPEECH = bytes(range(1, 161)) * 5  # 100 ms that holds no marker
MARK = b"\x00" * 160  # one 20 ms frame of the marker


async def fed(stream_batches: list[bytes], engine: NullSpeechToText) -> list[Transcript]:
    stream = engine.open("es-ES")
    for batch in stream_batches:
        stream.feed(batch)
    await stream.close()
    return [t async for t in stream.results()]


async def test_plain_audio_is_never_recognized() -> None:
    assert await fed([SPEECH] * 50, NullSpeechToText()) == []


async def test_a_marker_frame_gives_one_final_with_its_time() -> None:
    heard = await fed([SPEECH, SPEECH[:400] + MARK + SPEECH[:240], SPEECH], NullSpeechToText())
    assert heard == [Transcript("hola", True, 1.0, 100, 200)]


async def test_a_marker_split_over_two_batches_counts_once() -> None:
    batches = [SPEECH[:720] + MARK[:80], MARK[80:] + SPEECH[:720], SPEECH, MARK + SPEECH[:640]]
    heard = await fed(batches, NullSpeechToText(text="bloquear tarjeta"))
    assert [t.text for t in heard] == ["bloquear tarjeta", "bloquear tarjeta"]
    assert [t.start_ms for t in heard] == [0, 300]


async def test_every_ms_gives_a_final_per_period_of_audio() -> None:
    heard = await fed([SPEECH] * 25, NullSpeechToText(every_ms=1000, marker=False))
    assert [(t.start_ms, t.end_ms) for t in heard] == [(0, 1000), (1000, 2000)]


async def test_close_ends_results_for_every_reader() -> None:
    stream = NullSpeechToText().open("es-ES")
    reader = asyncio.create_task(anext(stream.results(), None))
    await asyncio.sleep(0)
    await stream.close()
    await stream.close()
    assert await reader is None
    assert [t async for t in stream.results()] == []
    stream.feed(MARK)  # ignored once closed


async def test_null_tts_is_silence_as_long_as_the_text_takes() -> None:
    tts = NullTextToSpeech()
    text = "Le paso con un ejecutivo. Un momento, por favor."
    chunks = [chunk async for chunk in tts.synthesize(text, "es-ES")]
    audio = b"".join(chunks)
    assert len(audio) == len(text) * 60 * 8  # 60 ms per character at 8 kHz
    assert set(audio) == {0xFF}
    assert all(len(chunk) <= 8000 for chunk in chunks) and len(chunks) == 3
    assert [c async for c in tts.synthesize(" ", "es-ES")] == []
    await tts.aclose()
