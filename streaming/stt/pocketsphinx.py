"""Offline English recognition with CMU PocketSphinx, decoded in worker processes.

Why processes: the `pocketsphinx` bindings hold the GIL inside `process_raw`, so a decoding
thread would stall the event loop (measured: 2.4 s without a loop turn while one thread decoded).
Each worker is a single-process pool; a call stays on one worker, whose job queue keeps its
batches in order.

Per call, on the event loop: mu-law is decoded and run through pocketsphinx's `Endpointer`
(WebRTC-style VAD in C, ~2 µs per 30 ms frame). Only speech crosses to the worker, in batches of
`batch_ms` or more plus `padding_ms` of the surrounding audio, with the utterance's start and end.
A silent call costs no IPC. In the worker, audio is resampled 8 -> 16 kHz (the shipped model is
wideband) and decoded by a Decoder taken from a pool for that utterance only, so memory grows
with the callers speaking at the same moment, not with the calls.

With `phrases`, recognition is constrained to them by a finite-state grammar that also has a
"garbage" branch: a loop over the 39 English phones, each costing `garbage_probability`. Speech
that matches no phrase is cheaper to explain as phones, so it yields no final (logged as
`stt_rejected`); a final is always exactly one of the phrases, as configured. Without phrases the
generic English language model transcribes freely (much less accurate on phone audio).

The only model a registry package ships for it is US English; Spanish offline is `whisper.py`.

What runs inside the worker processes is streaming/stt/pocketsphinx_decoding.py.

Workers are spawned, so a script (not `python -m ...`) that builds this engine needs the usual
`if __name__ == "__main__":` guard: each worker imports the main script again.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import re
from collections import deque
from collections.abc import AsyncIterator, Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pocketsphinx

from audio import mulaw
from audio.framing import SAMPLE_RATE
from streaming.ports import SpeechError, Transcript
from streaming.stt.pocketsphinx_decoding import Op, Result, Spec, decode, forget, init_worker, warm
from streaming.stt.results import TranscriptQueue

logger = logging.getLogger(__name__)

# Speech waiting for a busy worker (16-bit PCM at 8 kHz) at which the call's recognition fails.
MAX_BEHIND_BYTES = 60 * SAMPLE_RATE * 2
_WORD = re.compile(r"[a-z']+")


def normalize(phrase: str) -> str:
    return " ".join(_WORD.findall(phrase.lower().replace("’", "'")))


def load_pronunciations(words: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """Pronunciations of `words` from the model's CMU dictionary; ValueError naming the unknown."""
    wanted = set(words)
    found: dict[str, list[str]] = {}
    path = Path(pocketsphinx.get_model_path("en-us/cmudict-en-us.dict"))
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            entry, _, phones = line.strip().partition(" ")
            word = entry.split("(", 1)[0]
            if word in wanted:
                found.setdefault(word, []).append(phones.strip())
    missing = sorted(wanted - found.keys())
    if missing:
        raise ValueError(
            "pocketsphinx phrases use words missing from the English dictionary: "
            + ", ".join(missing)
        )
    return {word: tuple(prons) for word, prons in found.items()}


class PocketsphinxSpeechToText:
    """Shared worker processes for every call; `open` puts a call on the least busy worker."""

    name = "pocketsphinx"

    def __init__(
        self,
        *,
        phrases: Sequence[str],
        language: str,
        workers: int,
        batch_ms: int = 200,
        padding_ms: int = 200,
        interim_ms: int = 500,
        garbage_probability: float = 1e-12,
        max_idle_decoders: int = 4,
    ) -> None:
        if language.lower().split("-")[0] != "en":
            raise ValueError(
                f"pocketsphinx: no {language} model is available, only the shipped US English one"
            )
        if workers < 1:
            raise ValueError("pocketsphinx: workers must be at least 1")
        self.language = language
        self.batch_bytes = batch_ms * SAMPLE_RATE * 2 // 1000
        self.padding_ms = padding_ms
        self.phrases: dict[str, str] = {}  # normalized -> as configured
        for phrase in phrases:
            if normalize(phrase):
                self.phrases.setdefault(normalize(phrase), phrase.strip())
        words = {word for phrase in self.phrases for word in phrase.split()}
        self._spec = Spec(
            phrases=tuple(self.phrases),
            pronunciations=load_pronunciations(words) if words else {},
            garbage_probability=garbage_probability,
            max_idle_decoders=max_idle_decoders,
            interim_ms=interim_ms,
        )
        self._workers = [_Worker(self._spec) for _ in range(workers)]
        self._ids = itertools.count()
        self._warned: set[str] = set()
        self._closed = False

    def open(self, language: str) -> PocketsphinxRecognitionStream:
        if self._closed:
            raise SpeechError("pocketsphinx engine is closed")
        if language.lower().split("-")[0] != "en" and language not in self._warned:
            self._warned.add(language)
            logger.warning(
                "pocketsphinx recognizes %s only; calls in %s will not be understood "
                "(no registry package ships a model for it)", self.language, language,
                extra={"event": "stt_language_unsupported"},
            )
        for index, worker in enumerate(self._workers):
            if worker.broken and worker.started:  # one that never started would fail again
                logger.warning("replacing a crashed pocketsphinx worker",
                               extra={"event": "stt_worker_restarted"})
                worker.executor.shutdown(wait=False, cancel_futures=True)
                self._workers[index] = _Worker(self._spec)
        worker = min(self._workers, key=lambda w: w.streams)
        return PocketsphinxRecognitionStream(self, worker, next(self._ids))

    def worker_pids(self) -> list[int]:
        """Process ids of the running workers (for memory measurements and crash tests)."""
        return [pid for worker in self._workers for pid in worker.pids()]

    async def aclose(self) -> None:
        self._closed = True
        await asyncio.gather(*(asyncio.to_thread(w.shutdown) for w in self._workers))


class _Worker:
    """One decoder process. Spawned, not forked: the parent runs an event loop and threads."""

    def __init__(self, spec: Spec) -> None:
        self.streams = 0
        self.started = False
        self.broken = False
        self.executor = ProcessPoolExecutor(
            1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=init_worker,
            initargs=(spec,),
        )
        # Start the process and build a first decoder now, not on the first caller's words.
        self.executor.submit(warm).add_done_callback(self._warmed)

    def _warmed(self, future: Future[int]) -> None:
        if future.cancelled():
            return
        if future.exception() is None:
            self.started = True
        else:
            self.broken = True
            logger.error("pocketsphinx worker failed to start: %s", future.exception(),
                         extra={"event": "stt_worker_failed"})

    def pids(self) -> list[int]:
        return list(getattr(self.executor, "_processes", None) or {})

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


class PocketsphinxRecognitionStream:
    """One call: endpointing on the event loop, decoding in the call's worker process."""

    def __init__(self, engine: PocketsphinxSpeechToText, worker: _Worker, stream_id: int) -> None:
        self._engine = engine
        self._worker = worker
        self._id = stream_id
        worker.streams += 1
        self._endpointer = pocketsphinx.Endpointer(sample_rate=SAMPLE_RATE)
        self._frame = self._endpointer.frame_bytes // 2  # mu-law bytes per endpointer frame
        frame_ms = self._endpointer.frame_length * 1000
        self._pad_frames = round(engine.padding_ms / frame_ms)
        window_frames = round(pocketsphinx.Endpointer.DEFAULT_WINDOW * 1000 / frame_ms)
        # Recent frames by index: padding comes from here (speech is reported a window late).
        self._recent: deque[tuple[int, bytes]] = deque(
            maxlen=window_frames + 2 * self._pad_frames + 4
        )
        self._frames = 0
        self._mulaw = bytearray()
        self._in_speech = False
        self._ops: list[Op] = []
        self._audio: list[bytes] = []
        self._audio_bytes = 0
        self._job: asyncio.Future[list[Result]] | None = None
        self._touched = False  # the worker holds state for this stream
        self._transcripts = TranscriptQueue()
        self._closed = False
        self._failed = False

    def feed(self, mulaw_audio: bytes) -> None:
        if self._closed or self._failed:
            return
        self._mulaw += mulaw_audio
        usable = len(self._mulaw) - len(self._mulaw) % self._frame
        if not usable:
            return
        pcm = mulaw.decode(self._mulaw[:usable])
        del self._mulaw[:usable]
        size = self._frame * 2
        for offset in range(0, len(pcm), size):
            self._endpoint(pcm[offset:offset + size])
        if self._audio_bytes > MAX_BEHIND_BYTES:
            self._ops.clear()
            self._audio.clear()
            self._fail(RuntimeError("the worker fell behind the call's speech"))
            return
        self._submit()

    def _endpoint(self, frame: bytes) -> None:
        index = self._frames
        self._frames += 1
        self._recent.append((index, frame))
        endpointer = self._endpointer
        speech = endpointer.process(frame)
        if speech is None:
            return
        length = endpointer.frame_length
        if not self._in_speech:
            self._in_speech = True
            start = round(endpointer.speech_start / length)
            self._flush_audio()
            self._ops.append(("start", round(endpointer.speech_start * 1000)))
            self._add_audio(f for i, f in self._recent if start - self._pad_frames <= i < start)
        self._add_audio((speech,))
        if not endpointer.in_speech:
            self._in_speech = False
            end = round(endpointer.speech_end / length)
            self._add_audio(f for i, f in self._recent if end <= i < end + self._pad_frames)
            self._flush_audio()
            self._ops.append(("end", round(endpointer.speech_end * 1000)))

    def _add_audio(self, frames: Iterable[bytes]) -> None:
        for frame in frames:
            self._audio.append(frame)
            self._audio_bytes += len(frame)

    def _flush_audio(self) -> None:
        if self._audio:
            self._ops.append(("audio", b"".join(self._audio)))
            self._audio.clear()

    def _submit(self) -> None:
        if self._job is not None or self._closed or self._failed:
            return
        ended = any(kind == "end" for kind, _ in self._ops)
        if not ended and self._audio_bytes < self._engine.batch_bytes:
            return
        self._flush_audio()
        if not self._ops:
            return
        ops, self._ops, self._audio_bytes = self._ops, [], 0
        self._touched = True
        try:
            self._job = asyncio.get_running_loop().run_in_executor(
                self._worker.executor, decode, self._id, ops
            )
        except RuntimeError as exc:  # the executor was shut down or broke
            self._fail(exc)
            return
        self._job.add_done_callback(self._decoded)

    def _decoded(self, job: asyncio.Future[list[Result]]) -> None:
        self._job = None
        if job.cancelled():
            return
        exc = job.exception()
        if exc is not None:
            self._fail(exc)
            return
        for kind, text, start_ms, end_ms in job.result():
            if kind == "rejected":
                logger.info("speech matched no phrase", extra={
                    "event": "stt_rejected", "start_ms": start_ms, "end_ms": end_ms})
                continue
            text = self._engine.phrases.get(text, text)  # a phrase as configured
            self._transcripts.put(Transcript(text, kind == "final", None, start_ms, end_ms))
        self._submit()

    def _fail(self, exc: BaseException) -> None:
        if self._failed:
            return
        self._failed = True
        if isinstance(exc, BrokenProcessPool):
            self._worker.broken = True
        logger.error("pocketsphinx recognition failed: %r", exc, extra={"event": "stt_failed"})
        self._transcripts.fail(SpeechError(f"pocketsphinx recognition failed: {exc!r}"))

    def results(self) -> AsyncIterator[Transcript]:
        return self._transcripts.results()

    async def close(self) -> None:
        """Ends `results`; speech still in progress is dropped (the caller is gone)."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._job is not None:
                await asyncio.wait([self._job])
            if self._touched and not self._failed and not self._worker.broken:
                await asyncio.get_running_loop().run_in_executor(
                    self._worker.executor, forget, self._id
                )
        except (RuntimeError, BrokenProcessPool):
            pass  # the worker is gone and its decoders with it
        finally:
            self._worker.streams -= 1
            self._ops.clear()
            self._audio.clear()
            self._transcripts.close()
