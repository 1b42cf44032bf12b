"""Replies played to the caller: synthesized sentence by sentence, marked, paced, interrupted.

A reply is played sentence by sentence, each followed by a mark named `g{generation}-s{sequence}`.
Every barge-in (`clear`) starts a new generation; Twilio echoes the marks still pending when it
clears, so only marks of the current playback prove that the caller heard a sentence. The marks
also pace synthesis: the session synthesizes at most a few sentences beyond what the caller has
heard, so a barge-in leaves the rest unsynthesized (and unpaid for, with a cloud engine). When
marks stop coming, each sentence is waited for as long as its audio lasts, plus a margin.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from time import monotonic
from typing import Any, Literal, Protocol

from audio.framing import SAMPLE_RATE, Rechunker
from streaming import metrics
from streaming.ports import BargeIn, CallEvents, TextToSpeech
from streaming.protocol import clear_message, mark_message, media_message


class FirstAudio(Protocol):
    """Told about a reply's first audio (streaming/turns.py): at stage boundaries, not per chunk."""

    def synthesized(self, seconds: float) -> None:
        """The synthesizer took `seconds` to the first audio of the first sentence."""

    def sent(self, at: float) -> None:
        """That audio's first message was handed to the socket at monotonic time `at`."""


# What goes to the socket: a message, and with a reply's first audio, who is told it was sent.
Outgoing = tuple[str, FirstAudio | None]

logger = logging.getLogger("streaming.session")

_SENTENCE_END = re.compile(r"(?<=[.!?…;:])\s+")


def split_sentences(text: str) -> list[str]:
    """Sentences are synthesized and marked one by one so the first one plays early."""
    return [part for part in (p.strip() for p in _SENTENCE_END.split(text)) if part]


@dataclass(slots=True)
class Playback:
    """One reply being played: its sentences, the marks that came back, how it ended."""

    sentences: list[str]
    # One per sentence: True once its mark came back, False if cleared or its mark never came.
    heard: list[asyncio.Future[bool]]
    marks: dict[str, int] = field(default_factory=dict)  # mark name -> sentence index
    deadlines: list[float] = field(default_factory=list)  # per sentence: give up on its mark
    played: int = 0  # sentences confirmed heard, in order
    play_end: float = 0.0  # monotonic time Twilio should finish playing what was sent
    # The caller's audio position (ms) when the reply began, and when it was settled.
    began_ms: int = 0
    ended_ms: int | None = None
    interrupted: bool = False
    marks_lost: bool = False

    @property
    def over(self) -> bool:
        """Every sentence is settled: heard, or cleared by a barge-in."""
        return self.heard[-1].done()

    def sent(self, audio_bytes: int) -> None:
        """Audio went out: Twilio plays what it gets in order, from when it gets it."""
        self.play_end = max(self.play_end, monotonic()) + audio_bytes / SAMPLE_RATE

    def settle(self, upto: int, heard: bool) -> None:
        """Sentences before `upto` not settled yet are heard (a mark) or not (a clear)."""
        for future in self.heard[:upto]:
            if not future.done():
                future.set_result(heard)


class ReplyPlayer:
    """Plays one reply at a time into the call's outbox. `armed` is true while an interruptible
    reply plays: the frame path reads it 50 times a second, so it is a plain attribute.

    `audio_ms` tells the caller's audio position (ms received since the call's start: the
    recognizer's timeline): the player keeps where its latest replies began and ended on it."""

    def __init__(self, tts: TextToSpeech, language: str, stream_sid: str,
                 outbox: asyncio.Queue[Outgoing], *, chunk_bytes: int, sentences_ahead: int,
                 mark_timeout_seconds: float, log: dict[str, Any], events: CallEvents,
                 audio_ms: Callable[[], int]) -> None:
        self._tts, self._language, self._sid = tts, language, stream_sid
        self._outbox, self._put = outbox, outbox.put_nowait
        self._chunk_bytes = chunk_bytes
        self._ahead = max(1, sentences_ahead)
        self._mark_timeout = mark_timeout_seconds
        self._log, self._events = log, events
        self._audio_ms = audio_ms
        # (start, end) in the caller's audio of the latest replies; an interrupted reply ends at
        # the barge-in, so the speech that interrupted it ends after it.
        self._spans: deque[tuple[int, int]] = deque(maxlen=8)
        self.current: Playback | None = None
        self.armed = False
        self._generation = 0
        self._sequence = 0

    @property
    def playing(self) -> bool:
        """A reply is on its way to the caller and not settled yet."""
        return self.current is not None and not self.current.over

    async def play(self, sentences: list[str], *, interruptible: bool,
                   first: FirstAudio | None = None) -> bool:
        """Synthesize sentence by sentence, each followed by a mark, at most `sentences_ahead`
        beyond the last one heard, and wait until the last mark comes back. Returns False when
        the caller barged in or marks stopped coming. `first` is told about the first audio."""
        loop = asyncio.get_running_loop()
        playback = self.current = Playback(sentences, [loop.create_future() for _ in sentences])
        playback.began_ms = self._audio_ms()
        self.armed = interruptible
        ahead = self._ahead
        try:
            for index, sentence in enumerate(sentences):
                if index >= ahead:
                    await self._until_heard(playback, index - ahead)
                    if playback.interrupted:
                        return False
                first = await self._speak(playback, sentence, first)
                if playback.interrupted:
                    return False
                self._put((mark_message(self._sid, self._mark(playback, index)), None))
            return await self._until_heard(playback, len(sentences) - 1)
        finally:
            self.armed = False
            if playback.ended_ms is None:  # marks stopped coming
                playback.ended_ms = self._audio_ms()
            self._spans.append((playback.began_ms, playback.ended_ms))
            if self.current is playback:
                self.current = None

    def spoken_over(self, end_ms: int | None) -> bool:
        """Speech that ended at `end_ms` (the caller's audio, as Transcript.end_ms) ended while a
        reply played, and did not interrupt it: a short burst or echo whose transcript came late
        (a recognizer may finalize one decode after the reply is over)."""
        if end_ms is None:
            return False
        spans = list(self._spans)
        current = self.current  # playing, or settled and play() has not returned yet
        if current is not None:
            ended = current.ended_ms
            spans.append((current.began_ms, self._audio_ms() if ended is None else ended))
        return any(start <= end_ms < end for start, end in spans)

    async def _speak(self, playback: Playback, sentence: str,
                     first: FirstAudio | None) -> FirstAudio | None:
        """Queue one sentence's audio in outbound-sized chunks; stops early on barge-in.
        Returns `first` until the reply's first audio has been queued."""
        sid, put = self._sid, self._put
        rechunker = Rechunker(self._chunk_bytes)
        asked = monotonic()
        async with _closing(self._tts.synthesize(sentence, self._language)) as audio:
            async for data in audio:
                if playback.interrupted:
                    return first
                if first is not None:
                    first.synthesized(monotonic() - asked)
                chunks = rechunker.push(data)
                for chunk in chunks:
                    put((media_message(sid, chunk), first))
                    first = None
                if chunks:
                    playback.sent(len(chunks) * rechunker.size)
        tail = rechunker.flush()
        if tail:
            put((media_message(sid, tail), first))
            first = None
            playback.sent(len(tail))
        return first

    def _mark(self, playback: Playback, index: int) -> str:
        """The name of the mark that follows sentence `index`, once all its audio was sent."""
        self._sequence += 1
        name = f"g{self._generation}-s{self._sequence}"
        playback.marks[name] = index
        playback.deadlines.append(playback.play_end + self._mark_timeout)
        return name

    def on_mark(self, name: str) -> None:
        """Twilio played everything sent before this mark (unless a clear flushed it)."""
        playback = self.current
        if playback is None or playback.interrupted:
            return
        index = playback.marks.get(name)
        if index is None:  # a mark of an earlier or cleared playback proves nothing
            return
        playback.played = max(playback.played, index + 1)
        playback.settle(index + 1, True)
        if playback.over:
            self.armed = False  # nothing left to interrupt
            playback.ended_ms = self._audio_ms()

    def interrupt(self, cause: Literal["speech", "dtmf"]) -> None:
        """The caller barged in: the interruptible reply playing now (if any) ends unheard, the
        audio queued behind it is dropped and Twilio told to `clear` what it buffered, and a new
        generation of marks begins. Counted, logged and told with what was heard and cut."""
        if not self.armed:
            return
        self.armed = False
        playback = self.current
        if playback is None or playback.over:  # pragma: no cover - armed implies neither
            return
        playback.interrupted = True
        playback.ended_ms = self._audio_ms()
        outbox = self._outbox
        while not outbox.empty():
            outbox.get_nowait()
        self._put((clear_message(self._sid), None))
        self._generation += 1
        playback.settle(len(playback.sentences), False)
        metrics.BARGE_INS.inc()
        played, cut = playback.sentences[:playback.played], playback.sentences[playback.played:]
        logger.info("caller interrupted the reply", extra={
            "event": "barge_in", **self._log, "cause": cause, "played": played,
            "interrupted": cut})
        self._events.emit(BargeIn(cause, tuple(played), tuple(cut)))

    async def _until_heard(self, playback: Playback, index: int) -> bool:
        """Wait for sentence `index`'s mark, at most until its deadline (its audio should have
        played by then): when marks stop coming, playback goes on at the audio's own pace."""
        future = playback.heard[index]
        if not future.done():
            # asyncio.wait, not wait_for: on 3.11 wait_for can swallow a cancellation that
            # races with the future completing, and aclose must always stop this task.
            await asyncio.wait((future,), timeout=max(0.0, playback.deadlines[index] - monotonic()))
        if future.done():
            return future.result()
        if not playback.marks_lost:
            playback.marks_lost = True
            metrics.MARK_TIMEOUTS.inc()
            logger.warning("playback marks did not come back", extra={
                "event": "mark_timeout", **self._log,
                "played": playback.sentences[:playback.played]})
        return False


@contextlib.asynccontextmanager
async def _closing(iterator: AsyncIterator[bytes]) -> AsyncIterator[AsyncIterator[bytes]]:
    """Close a synthesizer's generator when we stop early, so it stops working (barge-in)."""
    try:
        yield iterator
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()
