"""Offline recognition with Whisper (faster-whisper on CTranslate2), Spanish and 98 more languages.

Whisper is not streaming: each call's audio is cut into utterances on the event loop by
`audio.segmenter` (the same energy VAD the session runs, ~2 µs per 20 ms frame), and each utterance
is handed once to a decoding pool shared by every call. Its final transcript follows about one
decode (~1 s wall, ~1.6 s CPU for Whisper base with beam 5 on two cores, whatever the utterance's
length: the encoder always sees a 30 s window) after the caller stopped. No interim results.

Why threads, not processes: CTranslate2 releases the GIL while it encodes and decodes, and the
Python and numpy work around it (features, tokens) is short. Measured on the 2-core machine, six
utterances decoded back to back by a thread pool kept a 5 ms asyncio ticker at 0.1 ms lag p50 and
3-7 ms p99; `bench/whisper.py` measures both kinds of pool: the same lag (p99 ~4 ms). A process
pool would hold one more copy of the model per process and pickle every utterance for nothing. One
`WhisperModel` is loaded per process and shared; `workers` threads decode at once
(CTranslate2's `num_workers`), each with `cpu_threads` threads.

No invented words: a single temperature (no fallback loop: on a long spoken number it took
13-18 s per utterance), no conditioning on earlier text, a bound of tokens per second of audio
(within the 448 the decoder holds with its prompt), and results dropped by their no-speech
probability, average log-probability and compression ratio, so silence, noise and music (Whisper's "Gracias por ver el vídeo") never reach Rasa.

When the pool falls behind (an utterance waited more than `max_queue_seconds` before a worker
took it), that utterance is not decoded and its call's stream fails with SpeechError: the session
moves the call to the Gather path, which sheds the load.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel
from prometheus_client import Histogram

from audio import mulaw
from audio.framing import SAMPLE_RATE
from audio.resample import resample
from audio.segmenter import Utterance, UtteranceSegmenter
from streaming.ports import SpeechError, Transcript
from streaming.stt.results import TranscriptQueue
from streaming.stt import whisper_model
from streaming.stt.whisper_model import ModelError

logger = logging.getLogger(__name__)

MODEL_RATE = 16000
# Spanish speech is ~3 words, ~6 tokens a second; numbers said digit by digit a few more.
TOKENS_PER_SECOND = 10
MIN_TOKENS = 12
# Whisper's decoder holds this many tokens, the prompt's included (faster-whisper's own figure).
MAX_LENGTH = 448
# A result is dropped when any of these says it is not speech (Whisper's own defaults, but
# each on its own: Whisper only skips when no-speech AND a low log-probability agree).
MAX_NO_SPEECH_PROB = 0.6
MIN_AVG_LOGPROB = -1.0
MAX_COMPRESSION_RATIO = 2.4

_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)
QUEUE_WAIT = Histogram("stt_whisper_queue_seconds",
                       "How long an utterance waited for a free decoder.", buckets=_BUCKETS)
DECODE = Histogram("stt_whisper_decode_seconds",
                   "Wall time to decode one utterance (capacity: compare with callers' pauses).",
                   buckets=_BUCKETS)


@dataclass(frozen=True, slots=True)
class Decoded:
    """What one utterance gave: its text (empty when dropped) and why it was dropped."""

    text: str
    rejected: str = ""
    behind: bool = False
    confidence: float | None = None


def token_budget(seconds: float, prompt_tokens: int, max_length: int = MAX_LENGTH) -> int:
    """New tokens the decoder may write for `seconds` of audio: the bound per second of speech,
    within what the model's length leaves after the prompt (CTranslate2 refuses more)."""
    return min(max(MIN_TOKENS, math.ceil(seconds * TOKENS_PER_SECOND)), max_length - prompt_tokens)


def prompt_length(model: WhisperModel, prompt: str | None) -> int:
    """Tokens of the prompt faster-whisper builds around `prompt`: <|startofprev|> and the last
    max_length // 2 - 1 tokens of the prompt, <|startoftranscript|><|lang|><|transcribe|>,
    <|notimestamps|>."""
    if not prompt:
        return 4
    tokens = model.hf_tokenizer.encode(" " + prompt.strip(), add_special_tokens=False).ids
    return 1 + min(len(tokens), model.max_length // 2 - 1) + 4


def load_model(model_dir: str, cache_dir: str, device: str, compute_type: str,
               cpu_threads: int, workers: int) -> WhisperModel:
    """The model the `stt.whisper` settings name, loaded once per process. Raises ModelError
    saying which setting is at fault and what to do: the command line checks it before any
    worker starts (one line and exit code 2, not a traceback per worker)."""
    folder = whisper_model.locate(model_dir, cache_dir)
    return _load(str(folder), device, compute_type, cpu_threads, workers, bool(model_dir))


@lru_cache(maxsize=2)
def _load(folder: str, device: str, compute_type: str, cpu_threads: int, workers: int,
          user_folder: bool) -> WhisperModel:
    """One model per process and configuration, whatever the number of engines built."""
    try:
        return WhisperModel(folder, device=device, compute_type=compute_type,
                            cpu_threads=cpu_threads, num_workers=workers, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - CTranslate2 and tokenizers raise several kinds
        raise ModelError(_load_problem(exc, folder, device, compute_type, user_folder)) from None


def _load_problem(exc: Exception, folder: str, device: str, compute_type: str,
                  user_folder: bool) -> str:
    """What went wrong loading the model, in the terms of the setting to change."""
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if device == "cuda" and ("cuda" in reason.lower() or ctranslate2.get_cuda_device_count() == 0):
        return (f"stt.whisper.device is cuda, but CUDA cannot be used here ({reason}): set "
                "stt.whisper.device to cpu (STT_WHISPER_DEVICE=cpu), or install the NVIDIA driver "
                "and the CUDA libraries CTranslate2 needs")
    if "compute type" in reason.lower():
        return (f"stt.whisper.compute_type {compute_type} cannot be used on {device} ({reason}): "
                "use int8 on cpu, float16 or int8_float16 on cuda")
    if user_folder:
        return (f"stt.whisper.model_dir {folder} is not a CTranslate2 Whisper model that loads "
                f"({reason}): give a folder made by ct2-transformers-converter, or leave it "
                "empty for the embedded base model")
    return (f"the Whisper model in {folder} could not be loaded on {device} ({reason}): check "
            f"stt.whisper.device and stt.whisper.compute_type, or delete {folder} and start again")


class WhisperSpeechToText:
    """The shared model and decoding pool; `open` gives each call its own segmenter."""

    name = "whisper"

    def __init__(
        self,
        *,
        model_dir: str = "",
        cache_dir: str = "",
        device: str = "cpu",
        compute_type: str = "int8",
        beam_size: int = 5,
        cpu_threads: int = 2,
        workers: int = 1,
        max_utterance_seconds: float = 15.0,
        max_queue_seconds: float = 3.0,
        phrase_hints: Sequence[str] = (),
        endpoint_silence_ms: int = 400,
        energy_threshold: int = 500,
    ) -> None:
        if workers < 1:
            raise ValueError("whisper: workers must be at least 1")
        self.model = load_model(model_dir, cache_dir, device, compute_type, cpu_threads, workers)
        self.beam_size = beam_size
        self.max_utterance_ms = int(max_utterance_seconds * 1000)
        self.max_queue_seconds = max_queue_seconds
        self.endpoint_silence_ms = endpoint_silence_ms
        self.energy_threshold = energy_threshold
        # The phrase hints steer the decoder as a prompt (text it takes as what came before).
        self.prompt = ", ".join(hint.strip() for hint in phrase_hints if hint.strip()) or None
        self.prompt_tokens = prompt_length(self.model, self.prompt)
        # The decoding pool every call's stream shares.
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="whisper")
        logging.getLogger("faster_whisper").setLevel(logging.WARNING)  # a line per utterance
        self._closed = False

    def open(self, language: str) -> WhisperRecognitionStream:
        if self._closed:
            raise SpeechError("whisper engine is closed")
        return WhisperRecognitionStream(self, language.split("-")[0].lower())

    def decode(self, audio: bytes, language: str, queued_at: float = 0.0) -> Decoded:
        """Recognize one utterance of 8 kHz mu-law. Blocking: runs on the pool's threads."""
        started = time.monotonic()
        if queued_at:
            QUEUE_WAIT.observe(started - queued_at)
            if started - queued_at > self.max_queue_seconds:
                return Decoded("", behind=True)
        pcm = resample(mulaw.decode(audio), SAMPLE_RATE, MODEL_RATE)
        samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0
        seconds = len(samples) / MODEL_RATE
        segments, _ = self.model.transcribe(
            samples,
            language=language,
            beam_size=self.beam_size,
            temperature=0.0,
            condition_on_previous_text=False,
            initial_prompt=self.prompt,
            without_timestamps=True,
            max_new_tokens=token_budget(seconds, self.prompt_tokens, self.model.max_length),
            # Whisper's own skipping and fallback are off: the checks below decide, each alone.
            no_speech_threshold=None,
            log_prob_threshold=None,
            compression_ratio_threshold=None,
            vad_filter=False,
        )
        texts, logprobs, rejected = [], [], ""
        for segment in segments:
            if segment.no_speech_prob > MAX_NO_SPEECH_PROB:
                rejected = f"no_speech_prob {segment.no_speech_prob:.2f}"
            elif segment.avg_logprob < MIN_AVG_LOGPROB:
                rejected = f"avg_logprob {segment.avg_logprob:.2f}"
            elif segment.compression_ratio > MAX_COMPRESSION_RATIO:
                rejected = f"compression_ratio {segment.compression_ratio:.2f}"
            else:
                texts.append(segment.text.strip())
                logprobs.append(segment.avg_logprob)
        text = " ".join(t for t in texts if t)
        DECODE.observe(time.monotonic() - started)
        if not text:
            return Decoded("", rejected=rejected or "empty")
        return Decoded(text, confidence=math.exp(min(logprobs)))

    async def aclose(self) -> None:
        self._closed = True
        await asyncio.to_thread(self.pool.shutdown, wait=True, cancel_futures=True)


class WhisperRecognitionStream:
    """One call: utterances cut on the event loop, each decoded once on the shared pool."""

    def __init__(self, engine: WhisperSpeechToText, language: str) -> None:
        self._engine = engine
        self._language = language
        self._segmenter = UtteranceSegmenter(
            threshold=engine.energy_threshold,
            end_silence_ms=engine.endpoint_silence_ms,
            max_utterance_ms=engine.max_utterance_ms,
        )
        self._loop = asyncio.get_running_loop()
        # Decodes in the order the utterances were spoken; results leave in that order.
        self._jobs: deque[tuple[Utterance, asyncio.Future[Decoded]]] = deque()
        self._transcripts = TranscriptQueue()  # its end is this stream's: closed or failed

    def feed(self, mulaw_audio: bytes) -> None:
        if self._transcripts.ended:
            return
        for utterance in self._segmenter.push(mulaw_audio):
            self._submit(utterance)

    def _submit(self, utterance: Utterance) -> None:
        engine = self._engine
        try:
            job = self._loop.run_in_executor(engine.pool, engine.decode, utterance.audio,
                                             self._language, time.monotonic())
        except RuntimeError as exc:  # the pool was shut down
            self._fail(f"the decoding pool is closed: {exc}")
            return
        self._jobs.append((utterance, job))
        job.add_done_callback(self._decoded)

    def _decoded(self, _: asyncio.Future[Decoded]) -> None:
        jobs = self._jobs
        while jobs and jobs[0][1].done():
            utterance, job = jobs.popleft()
            if job.cancelled() or self._transcripts.ended:
                continue
            if job.exception() is not None:
                self._fail(f"decoding failed: {job.exception()!r}")
                continue
            result = job.result()
            if result.behind:
                self._fail(f"the decoding pool fell more than {self._engine.max_queue_seconds:g} "
                           "s behind the callers")
            elif result.text:
                end_ms = utterance.speech_end_ms
                self._transcripts.put(Transcript(result.text, True, result.confidence,
                                                 utterance.start_ms, end_ms))
            else:
                logger.info("utterance gave no transcript: %s", result.rejected, extra={
                    "event": "stt_rejected", "start_ms": utterance.start_ms,
                    "end_ms": utterance.speech_end_ms, "reason": result.rejected})

    def _fail(self, reason: str) -> None:
        if self._transcripts.ended:
            return
        for _, job in self._jobs:
            job.cancel()  # a decode not started yet is not worth its CPU any more
        logger.error("whisper recognition failed: %s", reason, extra={"event": "stt_failed"})
        self._transcripts.fail(SpeechError(f"whisper recognition failed: {reason}"))

    def results(self) -> AsyncIterator[Transcript]:
        return self._transcripts.results()

    async def close(self) -> None:
        """Ends `results`; speech in progress is dropped, and so are the decodes of this call
        (one already under way finishes on its pool thread and is discarded)."""
        if self._transcripts.ended:
            return
        for _, job in self._jobs:
            job.cancel()
        self._jobs.clear()
        self._transcripts.close()
