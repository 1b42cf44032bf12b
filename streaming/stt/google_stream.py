"""One call's Google recognition: Google streams one after the other, cut at the caller's ends.

Audio is kept in one buffer from the oldest byte a stream may still need. Each Google stream gets
the call's audio from where it begins: the end of the last final result (a reconnect or a restart
resends the audio no final has covered, never audio a final covered), or a cut.

Cuts are early finalization. Google's own endpointer often waits a second or more after the
caller stops; the session's VAD knows sooner (`stt.endpoint_silence_ms`) and says so with
`speech_ended()`. If Google has sent an interim result since the last cut or final (or interim
results are off), the stream is then cut at the audio fed so far. Otherwise the cut waits for
Google's first interim (Google's interims may lag a short answer) and is made then, at the audio
sent so far; it is dropped when the caller speaks again first (`speech_started()`) or when
Google's own final comes first, so a noise burst Google hears nothing in costs no stream. At a
cut, the current Google stream gets everything up to the cut, is half-closed (Google returns
the final for the audio it has at once, then ends), and a new stream, opened at that moment,
gets the audio from the cut on. Nothing is lost or sent twice, and the next utterance never
waits for a connect. A half-closed stream that breaks before its end is replaced by one that
gets its audio again and is half-closed at once.

Google ends a stream after about five minutes, so every `restart_seconds` (and once after a stream
error) the current stream is replaced by a new one that first receives the audio no final covered.
Result times are mapped onto one timeline (bytes fed since `open`); a final's end is its own
stream's (another stream's interims say nothing of it), never before an earlier final's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import grpc
from google.api_core import exceptions as google_exceptions
from google.auth import exceptions as auth_exceptions
from google.cloud.speech_v1.types import StreamingRecognizeRequest, StreamingRecognizeResponse
from prometheus_client import Counter

from audio.framing import chunk_size
from streaming.google_client import describe
from streaming.ports import SpeechError, Transcript
from streaming.stt.results import TranscriptQueue
from streaming.tasks import cancel_and_wait

if TYPE_CHECKING:
    from streaming.stt.google import GoogleSpeechToText

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
HALF_CLOSES = Counter(
    "stt_google_half_closes_total",
    "Google streams half-closed at the end of the caller's speech (early finalization).",
)

_STREAM_ERRORS = (google_exceptions.GoogleAPICallError, grpc.RpcError)


class _StreamFailed(Exception):
    """The current Google stream broke; `healthy` says it had delivered results before."""

    def __init__(self, reason: str, healthy: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.healthy = healthy


@dataclass(eq=False, slots=True)
class _Leg:
    """One Google stream: the call's audio from timeline byte `offset`, until `cut` if any."""

    offset: int
    cut: int | None = None  # the last byte it gets: it is half-closed there
    # Google has sent an interim result since the last cut or final (this stream's or the one
    # it replaced's): there is speech a cut would finalize.
    interim: bool = False
    start: int = field(init=False)  # first byte no final of this stream has covered yet
    sent: int = field(init=False)  # timeline byte written up to
    healthy: bool = field(default=False, init=False)  # it has delivered a result

    def __post_init__(self) -> None:
        self.start = self.sent = self.offset


class GoogleRecognitionStream:
    """One call's recognition: a background task runs Google streams one after the other, and
    lets each cut stream finish beside the next one."""

    def __init__(self, engine: GoogleSpeechToText, language: str) -> None:
        self._engine = engine
        self._language = language
        self._audio = bytearray()  # the call's audio from timeline byte `_base` on
        self._base = 0
        self._leg = _Leg(0)  # the stream new audio goes to
        self._finishing: dict[asyncio.Task[None], _Leg] = {}  # cut streams giving their finals
        self._cut = asyncio.Event()  # the current stream was cut: open the next one
        self._more = asyncio.Event()
        self._transcripts = TranscriptQueue()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._failed = False
        self._last_final_ms = 0  # finals' ends never go backwards (a reconnect resends audio)
        # The audio fed when the caller stopped while Google had sent no interim yet: the cut to
        # make at the first interim.
        self._pending_cut: int | None = None
        self._max_carry = int(engine.max_carry_seconds * 1000) * BYTES_PER_MS
        # The carry is at most max_carry + 10 s (see _limit_carry); anything more is unsent.
        self._max_audio = self._max_carry + 10 * 1000 * BYTES_PER_MS + MAX_BEHIND_BYTES

    @property
    def _fed(self) -> int:
        return self._base + len(self._audio)

    def feed(self, mulaw: bytes) -> None:
        if self._closed or self._failed:
            return
        self._audio += mulaw
        if len(self._audio) > self._max_audio:
            self._fail("Google recognition fell behind the call's audio")
            return
        if self._fed - self._leg.sent >= REQUEST_BYTES:
            self._more.set()  # wake the writer per 100 ms, not per 20 ms frame
        self._ensure_started()

    def speech_ended(self) -> None:
        """The caller stopped (the session's VAD, once per utterance): cut the stream here, or
        at Google's first interim when it has sent none yet (a burst, or Google lags)."""
        leg = self._leg
        engine = self._engine
        if (not engine.early_finalization or self._closed or self._failed
                or leg.cut is not None or self._fed <= leg.start):
            return
        if engine.interim_results and not leg.interim:
            self._pending_cut = self._fed
            return
        self._cut_at(self._fed)

    def speech_started(self) -> None:
        """The caller speaks again (the session's VAD): a cut still waiting for Google's first
        interim would split the new speech, so it is dropped."""
        self._pending_cut = None

    def _cut_at(self, at: int) -> None:
        self._pending_cut = None
        self._leg.cut = at
        HALF_CLOSES.inc()
        self._more.set()  # its writer sends the rest and half-closes
        self._cut.set()
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
        for finishing in list(self._finishing):
            await cancel_and_wait(finishing)
        self._audio.clear()

    def _ensure_started(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        """Restart at the limit; reconnect once after an error (again once a stream recovered);
        after a cut, go on with a new stream while the cut one finishes."""
        reconnected = False
        while True:
            leg = self._leg
            try:
                cut = await self._current(leg)
            except _StreamFailed as exc:
                if reconnected and not exc.healthy:
                    self._fail(f"Google recognition failed after reconnecting: {exc.reason}")
                    return
                reconnected = True
                STREAM_RESTARTS.labels("error").inc()
                logger.warning(
                    "Google recognition stream failed (%s); reconnecting with %d ms of audio",
                    exc.reason, (self._fed - leg.start) // BYTES_PER_MS,
                    extra={"event": "stt_reconnect"},
                )
                # a cut meanwhile: the new one is cut too
                self._leg = _Leg(leg.start, leg.cut, leg.interim)
                continue
            except Exception as exc:
                self._crashed(exc)
                return
            if leg.healthy:
                reconnected = False
            if cut is not None:
                self._leg = _Leg(cut)
                continue
            STREAM_RESTARTS.labels("limit").inc()
            logger.info("Google recognition stream restarted before its time limit",
                        extra={"event": "stt_restart"})
            self._leg = _Leg(leg.start, leg.cut, leg.interim)

    async def _current(self, leg: _Leg) -> int | None:
        """Run the stream new audio goes to until the restart deadline (None) or its cut (the
        cut: it finishes beside the next one); raise _StreamFailed when it breaks first."""
        loop = asyncio.get_running_loop()
        serving = loop.create_task(self._serve(leg))
        cut = loop.create_task(self._cut.wait())
        handed_over = False
        try:
            async with asyncio.timeout(self._engine.restart_seconds):
                await asyncio.wait((serving, cut), return_when=asyncio.FIRST_COMPLETED)
            if leg.cut is None:  # it ended: a stream only ends on its own when it broke
                serving.result()
                raise _StreamFailed("the stream ended unexpectedly", leg.healthy)
            self._cut.clear()
            finishing = loop.create_task(self._finish(leg, serving))
            self._finishing[finishing] = leg
            finishing.add_done_callback(self._finishing.pop)
            handed_over = True
            return leg.cut
        except TimeoutError:
            return None  # the restart deadline: the caller opens the next stream
        finally:
            cut.cancel()
            if not handed_over:
                await cancel_and_wait(serving)

    async def _finish(self, leg: _Leg, serving: asyncio.Task[None]) -> None:
        """A cut stream gives its last finals and ends. One that breaks first is replaced, once,
        by a stream that gets its audio not finalized yet and is half-closed at once."""
        try:
            for attempt in (1, 2):
                try:
                    await self._ended(serving)
                    break
                except _StreamFailed as exc:
                    if attempt == 2:
                        self._fail(f"Google recognition failed after reconnecting: {exc.reason}")
                        return
                    STREAM_RESTARTS.labels("error").inc()
                    logger.warning("Google recognition stream failed after a cut (%s); "
                                   "resending its audio", exc.reason,
                                   extra={"event": "stt_reconnect"})
                    leg = self._finishing[asyncio.current_task()] = _Leg(leg.start, leg.cut)
                    serving = asyncio.get_running_loop().create_task(self._serve(leg))
        except Exception as exc:
            self._crashed(exc)
            return
        assert leg.cut is not None
        leg.start = leg.cut  # what Google said nothing about needs no stream any more
        self._trim()

    async def _ended(self, serving: asyncio.Task[None]) -> None:
        """Wait for a cut stream to end (at most `timeout_seconds`; then it is stopped)."""
        try:
            async with asyncio.timeout(self._engine.timeout_seconds):
                await serving
        except TimeoutError:
            raise _StreamFailed("no end after the half-close", False) from None
        finally:
            if not serving.done():
                await cancel_and_wait(serving)

    def _crashed(self, exc: Exception) -> None:
        if isinstance(exc, auth_exceptions.GoogleAuthError):
            self._fail(f"Google credentials unusable: {exc}")
        elif isinstance(exc, SpeechError):
            self._fail(str(exc))
        else:
            logger.error("Google recognition crashed", exc_info=exc, extra={"event": "stt_failed"})
            self._fail("Google recognition crashed")

    def _fail(self, reason: str) -> None:
        if self._failed:
            return
        logger.error(reason, extra={"event": "stt_failed"})
        self._failed = True
        self._audio.clear()
        self._transcripts.fail(SpeechError(reason))

    async def _serve(self, leg: _Leg) -> None:
        """One Google stream, until Google ends it after its cut; _StreamFailed when it breaks."""
        engine = self._engine
        writer: asyncio.Task[None] | None = None
        call = None
        try:
            try:
                async with asyncio.timeout(engine.timeout_seconds):
                    call = await engine.client().streaming_recognize(
                        retry=None, timeout=engine.restart_seconds + engine.timeout_seconds
                    )
            except TimeoutError:
                raise _StreamFailed("no connection within the timeout", False) from None
            writer = asyncio.get_running_loop().create_task(self._write(call, leg))
            async for response in call:
                self._handle(response, leg)
        except _STREAM_ERRORS as exc:
            raise _StreamFailed(describe(exc), leg.healthy) from exc
        finally:
            if writer is not None:
                await cancel_and_wait(writer)
            if call is not None:
                call.cancel()
        if leg.cut is None or leg.sent < leg.cut:
            raise _StreamFailed("the stream ended unexpectedly", leg.healthy)

    async def _write(self, call: Any, leg: _Leg) -> None:
        """Config first, then 100 ms requests from where the stream begins; at its cut, the rest
        and the half-close."""
        await call.write(self._engine.config_request(self._language))
        while True:
            end = self._fed if leg.cut is None else leg.cut
            size = min(REQUEST_BYTES, end - leg.sent)
            if size == REQUEST_BYTES or (size > 0 and leg.cut is not None):
                chunk = bytes(self._audio[leg.sent - self._base : leg.sent - self._base + size])
                leg.sent += size
                if leg.cut is None:
                    self._limit_carry(leg)
                await call.write(StreamingRecognizeRequest(audio_content=chunk))
            elif leg.cut is not None:
                await call.done_writing()
                return
            else:
                self._more.clear()
                await self._more.wait()

    def _limit_carry(self, leg: _Leg) -> None:
        """Bound the carried-over audio (long silence yields no final) in amortized steps."""
        excess = leg.sent - leg.start - self._max_carry
        if excess >= 10 * 1000 * BYTES_PER_MS:
            leg.start += excess
            self._trim()

    def _trim(self) -> None:
        """Drop the audio no stream may need again: before every open stream's `start`."""
        keep = min([self._leg.start, *(leg.start for leg in self._finishing.values())])
        if keep > self._base:
            del self._audio[: keep - self._base]
            self._base = keep

    def _handle(self, response: StreamingRecognizeResponse, leg: _Leg) -> None:
        if response.error.code:
            raise _StreamFailed(
                f"error {response.error.code}: {response.error.message}", leg.healthy
            )
        sent_until = leg.sent  # timeline position this stream has heard up to
        interim: list[str] = []
        interim_end = sent_until
        for result in response.results:
            if not result.alternatives:
                continue
            leg.healthy = True
            best = result.alternatives[0]
            end = sent_until
            if "result_end_time" in result:
                end = min(leg.offset + result.result_end_time // _SAMPLE, sent_until)
            if not result.is_final:
                leg.interim = True
                interim.append(best.transcript)
                interim_end = end
                continue
            leg.interim = False  # Google finalized what it heard: nothing left for a cut
            if leg is self._leg:
                self._pending_cut = None
            start_ms = leg.start // BYTES_PER_MS
            if end > leg.start:
                leg.start = end  # finalized audio is never sent again
                self._trim()
            self._emit(best.transcript.strip(), True, best.confidence or None, start_ms, end)
        if interim:
            text = "".join(interim).strip()
            self._emit(text, False, None, leg.start // BYTES_PER_MS, interim_end)
        pending = self._pending_cut
        if pending is not None and leg.interim and leg is self._leg and leg.cut is None:
            self._cut_at(max(pending, leg.sent))  # what it was sent already it keeps

    def _emit(
        self, text: str, is_final: bool, confidence: float | None, start_ms: int, end: int
    ) -> None:
        """A final ends where its own stream's result ended (never before an earlier final's end);
        interims from another stream, on audio after it, say nothing about where it ended."""
        end_ms = end // BYTES_PER_MS
        if is_final:
            end_ms = self._last_final_ms = max(self._last_final_ms, end_ms)
        if text:
            self._transcripts.put(Transcript(text, is_final, confidence, start_ms, end_ms))
