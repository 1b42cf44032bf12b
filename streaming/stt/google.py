"""Google Speech-to-Text v1 streaming recognition, fed Twilio's mu-law 8 kHz audio unchanged.

Audio is kept in one buffer from the end of the last final result onwards. Google ends a stream
after about five minutes, so every `restart_seconds` (and once after a stream error) the stream is
replaced by a new one that first receives that buffer again: audio no final result has covered is
recognized again by the new stream, audio a final covered is never sent twice. Result times are
mapped back onto one timeline (bytes fed since `open`), so they keep growing across restarts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import Any

import grpc
from google.api_core import exceptions as google_exceptions
from google.auth import exceptions as auth_exceptions
from google.cloud.speech_v1 import SpeechAsyncClient
from google.cloud.speech_v1.services.speech.transports import SpeechGrpcAsyncIOTransport
from google.cloud.speech_v1.types import (
    RecognitionConfig,
    SpeechContext,
    StreamingRecognitionConfig,
    StreamingRecognizeRequest,
    StreamingRecognizeResponse,
)
from prometheus_client import Counter

from audio.framing import SAMPLE_RATE, chunk_size
from streaming.google_client import build_client, describe
from streaming.ports import SpeechError, Transcript
from streaming.stt.results import TranscriptQueue
from streaming.tasks import cancel_and_wait

logger = logging.getLogger(__name__)

BYTES_PER_MS = chunk_size(1)  # mu-law: one byte per sample
REQUEST_BYTES = 800  # 100 ms per request, as Google recommends for streaming
# Unsent audio beyond the carried-over audio at which the writer is taken to be stuck.
MAX_BEHIND_BYTES = 60 * 1000 * BYTES_PER_MS
_SAMPLE = timedelta(microseconds=125)

STREAM_RESTARTS = Counter(
    "stt_google_stream_restarts_total",
    "Google recognition streams replaced by a new one, by reason (limit, error).",
    ["reason"],
)

_STREAM_ERRORS = (google_exceptions.GoogleAPICallError, grpc.RpcError)


class _StreamFailed(Exception):
    """The current Google stream broke; `healthy` says it had delivered results before."""

    def __init__(self, reason: str, healthy: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.healthy = healthy


class GoogleSpeechToText:
    """One shared gRPC client (created lazily inside the running loop) for all calls.

    `timeout_seconds` bounds connecting a stream (each stream's gRPC deadline is
    `restart_seconds + timeout_seconds`, so it never cuts a stream we are about to replace).
    `max_carry_seconds` bounds the audio resent to a new stream when no final came for a long
    time (silence gives no final); older audio is dropped in 10 s steps.
    """

    name = "google"

    def __init__(
        self,
        *,
        model: str = "phone_call",
        use_enhanced: bool = True,
        interim_results: bool = True,
        phrase_hints: Sequence[str] = (),
        restart_seconds: float = 240,
        endpoint: str = "",
        insecure: bool = False,
        timeout_seconds: float = 10,
        max_carry_seconds: float = 30,
    ) -> None:
        self.model = model
        self.use_enhanced = use_enhanced
        self.interim_results = interim_results
        self.phrase_hints = tuple(phrase_hints)
        self.restart_seconds = restart_seconds
        self.endpoint = endpoint
        self.insecure = insecure
        self.timeout_seconds = timeout_seconds
        self.max_carry_seconds = max_carry_seconds
        self._client: SpeechAsyncClient | None = None
        self._closed = False

    def open(self, language: str) -> GoogleRecognitionStream:
        return GoogleRecognitionStream(self, language)

    def client(self) -> SpeechAsyncClient:
        """The shared client; built on first use because grpc.aio channels bind to the loop."""
        if self._closed:
            raise SpeechError("the Google recognizer is closed")
        if self._client is None:
            self._client = build_client(
                SpeechAsyncClient, SpeechGrpcAsyncIOTransport, self.endpoint, self.insecure
            )
        return self._client

    def config_request(self, language: str) -> StreamingRecognizeRequest:
        config = RecognitionConfig(
            encoding=RecognitionConfig.AudioEncoding.MULAW,
            sample_rate_hertz=SAMPLE_RATE,
            audio_channel_count=1,
            language_code=language,
            model=self.model,
            use_enhanced=self.use_enhanced,
            max_alternatives=1,
            speech_contexts=[SpeechContext(phrases=list(self.phrase_hints))]
            if self.phrase_hints
            else [],
        )
        return StreamingRecognizeRequest(
            streaming_config=StreamingRecognitionConfig(
                config=config, interim_results=self.interim_results, single_utterance=False
            )
        )

    async def aclose(self) -> None:
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            await client.transport.close()


class GoogleRecognitionStream:
    """One call's recognition: a background task runs Google streams one after the other."""

    def __init__(self, engine: GoogleSpeechToText, language: str) -> None:
        self._engine = engine
        self._language = language
        # Audio from byte position `_start` of the call's timeline: not yet covered by a final.
        self._audio = bytearray()
        self._start = 0
        self._sent = 0  # bytes of `_audio` already written to the current Google stream
        self._more = asyncio.Event()
        self._transcripts = TranscriptQueue()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._failed = False
        self._healthy = False  # the current Google stream has delivered a result
        self._last_end_ms = 0
        self._max_carry = int(engine.max_carry_seconds * 1000) * BYTES_PER_MS
        # The carry is at most max_carry + 10 s (see _limit_carry); anything more is unsent.
        self._max_audio = self._max_carry + 10 * 1000 * BYTES_PER_MS + MAX_BEHIND_BYTES

    def feed(self, mulaw: bytes) -> None:
        if self._closed or self._failed:
            return
        self._audio += mulaw
        if len(self._audio) > self._max_audio:
            self._fail("Google recognition fell behind the call's audio")
            return
        if len(self._audio) - self._sent >= REQUEST_BYTES:
            self._more.set()  # wake the writer per 100 ms, not per 20 ms frame
        self._ensure_started()

    def results(self) -> AsyncIterator[Transcript]:
        self._ensure_started()
        return self._transcripts.results()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._transcripts.close()
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        self._audio.clear()

    def _ensure_started(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        """Restart at the limit; reconnect once after an error (again once a stream recovered)."""
        reconnected = False
        while True:
            try:
                await self._one_stream()
            except _StreamFailed as exc:
                if reconnected and not exc.healthy:
                    self._fail(f"Google recognition failed after reconnecting: {exc.reason}")
                    return
                reconnected = True
                STREAM_RESTARTS.labels("error").inc()
                logger.warning(
                    "Google recognition stream failed (%s); reconnecting with %d ms of audio",
                    exc.reason, len(self._audio) // BYTES_PER_MS,
                    extra={"event": "stt_reconnect"},
                )
                continue
            except auth_exceptions.GoogleAuthError as exc:
                self._fail(f"Google credentials unusable: {exc}")
                return
            except SpeechError as exc:
                self._fail(str(exc))
                return
            except Exception:
                logger.exception("Google recognition crashed", extra={"event": "stt_failed"})
                self._fail("Google recognition crashed")
                return
            if self._healthy:
                reconnected = False
            STREAM_RESTARTS.labels("limit").inc()
            logger.info("Google recognition stream restarted before its time limit",
                        extra={"event": "stt_restart"})

    def _fail(self, reason: str) -> None:
        logger.error(reason, extra={"event": "stt_failed"})
        self._failed = True
        self._audio.clear()
        self._transcripts.fail(SpeechError(reason))

    async def _one_stream(self) -> None:
        """Run one Google stream until the restart deadline; raise _StreamFailed when it breaks."""
        engine = self._engine
        loop = asyncio.get_running_loop()
        deadline = loop.time() + engine.restart_seconds
        offset = self._start  # timeline position of the first byte this stream receives
        self._sent = 0
        self._healthy = False
        writer: asyncio.Task[None] | None = None
        call = None
        try:
            async with asyncio.timeout(engine.timeout_seconds):
                call = await engine.client().streaming_recognize(
                    retry=None, timeout=engine.restart_seconds + engine.timeout_seconds
                )
            writer = loop.create_task(self._write(call))
            async with asyncio.timeout_at(deadline):
                async for response in call:
                    self._handle(response, offset)
        except TimeoutError:
            if call is None:
                raise _StreamFailed("no connection within the timeout", False) from None
            return  # the restart deadline: the caller opens the next stream
        except _STREAM_ERRORS as exc:
            raise _StreamFailed(describe(exc), self._healthy) from exc
        finally:
            if writer is not None:
                await cancel_and_wait(writer)
            if call is not None:
                call.cancel()
        raise _StreamFailed("the stream ended unexpectedly", self._healthy)

    async def _write(self, call: Any) -> None:
        """Config first, then 100 ms requests: the carried-over audio, then new audio as it comes."""
        await call.write(self._engine.config_request(self._language))
        while True:
            if len(self._audio) - self._sent < REQUEST_BYTES:
                self._more.clear()
                await self._more.wait()
                continue
            chunk = bytes(self._audio[self._sent : self._sent + REQUEST_BYTES])
            self._sent += REQUEST_BYTES
            self._limit_carry()
            await call.write(StreamingRecognizeRequest(audio_content=chunk))

    def _limit_carry(self) -> None:
        """Bound the carried-over audio (long silence yields no final) in amortized steps."""
        excess = self._sent - self._max_carry
        if excess >= 10 * 1000 * BYTES_PER_MS:
            self._drop(excess)

    def _drop(self, count: int) -> None:
        del self._audio[:count]
        self._sent -= count
        self._start += count

    def _handle(self, response: StreamingRecognizeResponse, offset: int) -> None:
        if response.error.code:
            raise _StreamFailed(
                f"error {response.error.code}: {response.error.message}", self._healthy
            )
        sent_until = self._start + self._sent  # timeline position this stream has heard up to
        interim: list[str] = []
        interim_end = sent_until
        for result in response.results:
            if not result.alternatives:
                continue
            self._healthy = True
            best = result.alternatives[0]
            end = sent_until
            if "result_end_time" in result:
                end = min(offset + result.result_end_time // _SAMPLE, sent_until)
            if not result.is_final:
                interim.append(best.transcript)
                interim_end = end
                continue
            start_ms = self._start // BYTES_PER_MS
            if end > self._start:
                self._drop(end - self._start)  # finalized audio is never sent again
            self._emit(best.transcript.strip(), True, best.confidence or None, start_ms, end)
        if interim:
            text = "".join(interim).strip()
            self._emit(text, False, None, self._start // BYTES_PER_MS, interim_end)

    def _emit(
        self, text: str, is_final: bool, confidence: float | None, start_ms: int, end: int
    ) -> None:
        self._last_end_ms = max(self._last_end_ms, end // BYTES_PER_MS)
        if text:
            self._transcripts.put(Transcript(text, is_final, confidence, start_ms,
                                             self._last_end_ms))
