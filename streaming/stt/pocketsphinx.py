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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pocketsphinx

from audio import mulaw
from audio.framing import SAMPLE_RATE
from audio.resample import StreamResampler
from streaming.ports import SpeechError, Transcript
from streaming.stt.results import TranscriptQueue

logger = logging.getLogger(__name__)

DECODER_RATE = 16000
# Speech waiting for a busy worker (16-bit PCM at 8 kHz) at which the call's recognition fails.
MAX_BEHIND_BYTES = 60 * SAMPLE_RATE * 2
PHONES = (
    "AA AE AH AO AW AY B CH D DH EH ER EY F G HH IH IY JH K L M N NG OW OY P R S SH T TH "
    "UH UW V W Y Z ZH"
).split()
# Cepstral mean to start a call's first utterance from. The model's default suits wideband
# audio; 8 kHz telephone audio upsampled to 16 kHz has nothing above 4 kHz and a very different
# mean: a fresh decoder recognized 18/80 test phrases with the default, 73/80 with this one.
# Measured as the mean over 124 English utterances of tests/fixtures' pipeline (espeak-ng voices
# through 8 kHz mu-law); each call then carries its own mean from one utterance to the next.
TELEPHONE_CMN = "45.2,22.6,-40.2,40.7,-30.3,0.1,9.8,-33.1,19.9,-16.8,3.0,8.2,-16.1"
_GARBAGE = "_"  # prefix of the phone "words"; phrase words are letters and apostrophes only
_WORD = re.compile(r"[a-z']+")

# ("start", ms) | ("audio", pcm16 at 8 kHz) | ("end", ms): what a worker is asked to do.
Op = tuple[str, Any]
# (kind, text, start_ms, end_ms) with kind "final", "interim" or "rejected".
Result = tuple[str, str, int, int]


@dataclass(frozen=True, slots=True)
class _Spec:
    """Everything a worker needs to build decoders; sent once to each worker process."""

    phrases: tuple[str, ...]  # normalized: lower case words separated by one space
    pronunciations: dict[str, tuple[str, ...]]
    garbage_probability: float
    max_idle_decoders: int
    interim_ms: int


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
        phrases: Sequence[str] = (),
        language: str = "en-US",
        workers: int = 2,
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
        self._spec = _Spec(
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

    def __init__(self, spec: _Spec) -> None:
        self.streams = 0
        self.started = False
        self.broken = False
        self.executor = ProcessPoolExecutor(
            1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(spec,),
        )
        # Start the process and build a first decoder now, not on the first caller's words.
        self.executor.submit(_warm).add_done_callback(self._warmed)

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
                self._worker.executor, _decode, self._id, ops
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
                    self._worker.executor, _forget, self._id
                )
        except (RuntimeError, BrokenProcessPool):
            pass  # the worker is gone and its decoders with it
        finally:
            self._worker.streams -= 1
            self._ops.clear()
            self._audio.clear()
            self._transcripts.close()


# -- worker process side -------------------------------------------------------------------

_STATE: _Decoding | None = None


def _init_worker(spec: _Spec) -> None:
    global _STATE
    pocketsphinx.set_loglevel("FATAL")
    _STATE = _Decoding(spec)


def _warm() -> int:
    assert _STATE is not None
    _STATE.release(_STATE.acquire())
    return len(_STATE.idle)


def _decode(stream_id: int, ops: list[Op]) -> list[Result]:
    assert _STATE is not None
    return _STATE.run(stream_id, ops)


def _forget(stream_id: int) -> None:
    assert _STATE is not None
    _STATE.forget(stream_id)


@dataclass(slots=True)
class _Utterance:
    decoder: pocketsphinx.Decoder
    resampler: StreamResampler
    start_ms: int
    decoded: int = 0  # 16 kHz bytes
    unreported: int = 0  # bytes decoded since the last interim
    interim: str = ""


class _Decoding:
    """A worker's decoders and the utterances in progress, by stream id. Single-threaded."""

    def __init__(self, spec: _Spec) -> None:
        self.spec = spec
        self.idle: list[pocketsphinx.Decoder] = []
        self.utterances: dict[int, _Utterance] = {}
        self.cmn: dict[int, str] = {}  # each call's channel estimate, carried across utterances
        self.interim_bytes = spec.interim_ms * DECODER_RATE * 2 // 1000

    def acquire(self) -> pocketsphinx.Decoder:
        return self.idle.pop() if self.idle else self._build()

    def release(self, decoder: pocketsphinx.Decoder) -> None:
        if len(self.idle) < self.spec.max_idle_decoders:
            self.idle.append(decoder)

    def _build(self) -> pocketsphinx.Decoder:
        if not self.spec.phrases:
            return pocketsphinx.Decoder(samprate=DECODER_RATE, loglevel="FATAL")
        # Only the grammar's words: ~6 MB per decoder instead of ~29 MB with all of CMUdict.
        # The lattice best path loses the last words of FSG results when decoding live.
        decoder = pocketsphinx.Decoder(samprate=DECODER_RATE, loglevel="FATAL",
                                       lm=None, dict=None, bestpath=False)
        for word, prons in self.spec.pronunciations.items():
            for n, phones in enumerate(prons, start=1):
                decoder.add_word(word if n == 1 else f"{word}({n})", phones, False)
        for phone in PHONES:
            decoder.add_word(_GARBAGE + phone.lower(), phone, False)
        fsg = decoder.create_fsg("phrases", 0, 1, list(self._transitions()))
        decoder.add_fsg("phrases", fsg)
        decoder.activate_search("phrases")
        return decoder

    def _transitions(self) -> Iterable[tuple[Any, ...]]:
        """State 0 starts, 1 ends; each phrase is a chain of words, garbage a loop of phones."""
        states = itertools.count(2)
        first = 1.0 / len(self.spec.phrases)
        for phrase in self.spec.phrases:
            words = phrase.split()
            previous = 0
            for n, word in enumerate(words):
                following = 1 if n == len(words) - 1 else next(states)
                yield previous, following, first if n == 0 else 1.0, word
                previous = following
        garbage = next(states)
        for phone in PHONES:
            word = _GARBAGE + phone.lower()
            yield 0, garbage, self.spec.garbage_probability, word
            yield garbage, garbage, self.spec.garbage_probability, word
        yield garbage, 1, 1.0

    def run(self, stream_id: int, ops: list[Op]) -> list[Result]:
        results: list[Result] = []
        try:
            for kind, value in ops:
                if kind == "start":
                    self._abandon(stream_id)
                    decoder = self.acquire()
                    decoder.set_cmn(self.cmn.get(stream_id, TELEPHONE_CMN))
                    decoder.start_utt()
                    self.utterances[stream_id] = _Utterance(
                        decoder, StreamResampler(SAMPLE_RATE, DECODER_RATE), value
                    )
                elif kind == "audio" and stream_id in self.utterances:
                    utterance = self.utterances[stream_id]
                    self._process(utterance, utterance.resampler.process(value))
                elif kind == "end" and stream_id in self.utterances:
                    results.append(self._finish(stream_id, value))
            utterance = self.utterances.get(stream_id)
            if utterance is not None and utterance.unreported >= self.interim_bytes:
                utterance.unreported = 0
                interim = self._interim(utterance)
                if interim is not None:
                    results.append(interim)
        except Exception as exc:
            self.utterances.pop(stream_id, None)  # its decoder may be inconsistent: dropped
            raise RuntimeError(f"decoder error: {exc!r}") from None
        return results

    def _process(self, utterance: _Utterance, pcm: bytes) -> None:
        if pcm:  # process_raw rejects empty buffers
            utterance.decoder.process_raw(pcm)
            utterance.decoded += len(pcm)
            utterance.unreported += len(pcm)

    def _finish(self, stream_id: int, end_ms: int) -> Result:
        utterance = self.utterances.pop(stream_id)
        decoder = utterance.decoder
        self._process(utterance, utterance.resampler.process(b"", last=True))
        decoder.end_utt()
        hypothesis = decoder.hyp()
        self.cmn[stream_id] = decoder.get_cmn(False)
        self.release(decoder)
        text = self._accept(hypothesis.hypstr if hypothesis is not None else "")
        if text is None:
            return "rejected", "", utterance.start_ms, end_ms
        return "final", text, utterance.start_ms, end_ms

    def _interim(self, utterance: _Utterance) -> Result | None:
        hypothesis = utterance.decoder.hyp()
        text = hypothesis.hypstr if hypothesis is not None else ""
        if not text or text == utterance.interim or _GARBAGE in text:
            return None
        utterance.interim = text
        heard_ms = utterance.decoded * 1000 // (DECODER_RATE * 2)
        return "interim", text, utterance.start_ms, utterance.start_ms + heard_ms

    def _accept(self, text: str) -> str | None:
        """Grammar: exactly one phrase (a partial path or garbage is a rejection)."""
        if not self.spec.phrases:
            return text or None
        return text if text in self.spec.phrases else None

    def forget(self, stream_id: int) -> None:
        self._abandon(stream_id)
        self.cmn.pop(stream_id, None)

    def _abandon(self, stream_id: int) -> None:
        utterance = self.utterances.pop(stream_id, None)
        if utterance is not None:
            utterance.decoder.end_utt()
            self.release(utterance.decoder)
