"""One streamed call's conversation: listening, thinking, speaking; barge-in, DTMF, endings.

The websocket endpoint hands every inbound event to a `CallSession` and the session emits outbound
messages through the `send` callable it was given, so the whole state machine runs without sockets
in tests. Work is split so the 50-per-second frame path stays synchronous and cheap:

- `on_media` (sync, per frame): VAD, barge-in, and a bytearray that is handed to the recognizer's
  synchronous `feed` in 100 ms batches (no task or await per frame or per batch; each engine
  bounds its own backlog and fails with SpeechError when it falls behind).
- worker task: greeting, then one caller input at a time: bot -> actions -> synthesized audio.
- sender task: the only writer to the socket, so `clear` can drop audio queued behind it.
- recognizer task: final transcripts become caller inputs.

Playback is tracked with marks named `g{generation}-s{sequence}`. Every `clear` starts a new
generation; Twilio echoes the marks still pending when it clears, so only marks of the current
playback prove that the caller heard a sentence. The marks also pace synthesis: a reply is
synthesized at most `sentences_ahead` sentences beyond what the caller has heard, so a barge-in
leaves the rest unsynthesized (and unpaid for, with a cloud engine).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from time import monotonic
from typing import Any, Literal

from audio.framing import Rechunker, chunk_size
from audio.vad import EnergyVad, VadEvent
from streaming import metrics
from streaming.actions import CollectDigits, HangUp, Speak, Transfer, parse_actions
from streaming.ports import (
    BargeIn,
    Bot,
    BotFailed,
    BotReply,
    CallControl,
    CallerInput,
    CallEvents,
    CallInfo,
    NoCallEvents,
    Prompt,
    RecognitionStream,
    SpeechToText,
    SynthesisError,
    TextToSpeech,
    TurnLatency,
)
from streaming.protocol import clear_message, mark_message, media_message
from streaming.settings import CallSettings, PromptSettings, VadSettings
from streaming.tasks import cancel_and_wait

logger = logging.getLogger("streaming.session")

BYTES_PER_SECOND = 8000  # 8 kHz mu-law
CHANNEL = "twilio_voice_stream"
Ending = Literal["transfer", "hang_up", "redirect_to_gather"]

_SENTENCE_END = re.compile(r"(?<=[.!?…;:])\s+")


class Phase(enum.Enum):
    LISTENING = "listening"
    THINKING = "thinking"
    SPEAKING = "speaking"
    ENDING = "ending"


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """What a session needs: the call's language and greeting, the settings' own `call`, `vad`
    and `prompts` sections (app/media.py hands them over), and timings that are the session's."""

    language: str
    # Silence that ends the caller's speech for the VAD (the `stt.endpoint_silence_ms` setting,
    # which the recognizers share: it is not the session's own).
    endpoint_silence_ms: int
    greeting: str = ""
    call: CallSettings = field(default_factory=CallSettings)
    vad: VadSettings = field(default_factory=VadSettings)
    prompts: PromptSettings = field(default_factory=PromptSettings)
    # Loud audio needed before the VAD calls it speech.
    vad_start_ms: int = 60
    # Audio is handed to the recognizer in batches of this much (ARCHITECTURE.md: never per
    # 20 ms frame).
    stt_batch_ms: int = 100
    # Sentences sent beyond the last one the caller is known to have heard (>= 2 avoids gaps).
    sentences_ahead: int = 2
    # How much longer than the audio itself to wait for a sentence's mark.
    mark_timeout_seconds: float = 5.0
    # After a successful transfer/hang-up Twilio stops the stream; if it doesn't, we close it.
    end_grace_seconds: float = 10.0
    # Longest wait for the session's tasks to finish once cancelled (they normally take none).
    close_timeout_seconds: float = 5.0


def split_sentences(text: str) -> list[str]:
    """Sentences are synthesized and marked one by one so the first one plays early."""
    return [part for part in (p.strip() for p in _SENTENCE_END.split(text)) if part]


@dataclass(frozen=True, slots=True)
class _Utterance:
    text: str
    source: Literal["speech", "dtmf"]
    heard_at: float  # monotonic time the input was complete: turn latency starts here


class _Silence:
    """Queued by the no-input timer."""


@dataclass(frozen=True, slots=True)
class _Collect:
    max_digits: int | None
    finish_key: str
    timeout: float


@dataclass(slots=True)
class _Playback:
    """One reply being played: its sentences, the marks that came back, how it ended."""

    sentences: list[str]
    # One per sentence: True once its mark came back, False if cleared or its mark never came.
    heard: list[asyncio.Future[bool]]
    marks: dict[str, int] = field(default_factory=dict)  # mark name -> sentence index
    deadlines: list[float] = field(default_factory=list)  # per sentence: give up on its mark
    played: int = 0  # sentences confirmed heard, in order
    play_end: float = 0.0  # monotonic time Twilio should finish playing what was sent
    interrupted: bool = False
    marks_lost: bool = False

    @property
    def over(self) -> bool:
        return self.heard[-1].done()

    def resolve(self, upto: int, heard: bool) -> None:
        for future in self.heard[:upto]:
            if not future.done():
                future.set_result(heard)


class CallSession:
    """The real-time pipeline of one call: `start`, then the `on_*` methods, then `aclose`."""

    def __init__(
        self,
        call: CallInfo,
        send: Callable[[str], Awaitable[None]],
        *,
        stt: SpeechToText,
        tts: TextToSpeech,
        bot: Bot,
        control: CallControl,
        config: SessionConfig,
        events: CallEvents | None = None,
    ) -> None:
        self.call = call
        self.config = config
        self.phase = Phase.LISTENING
        # Set when the session is done with the call and the socket should be closed.
        self.finished = asyncio.Event()
        self._send = send
        self._stt, self._tts, self._bot, self._control = stt, tts, bot, control
        self._events = events or NoCallEvents()
        self._log = {"call_sid": call.call_sid}
        self._vad = EnergyVad(config.vad.energy_threshold, config.vad_start_ms,
                              config.endpoint_silence_ms)
        self._barge_ms = config.call.barge_in_min_speech_ms
        self._batch_bytes = chunk_size(config.stt_batch_ms)
        self._pending = bytearray()
        self._outbox: asyncio.Queue[tuple[str, float | None]] = asyncio.Queue()
        self._inputs: asyncio.Queue[_Utterance | _Silence] = asyncio.Queue()
        self._stream: RecognitionStream | None = None
        self._feed: Callable[[bytes], None] | None = None  # the stream's, until it raises
        self._tasks: list[asyncio.Task[None]] = []
        self._worker: asyncio.Task[None] | None = None
        self._active = False  # inbound events are processed (between start and stop/ending)
        self._barge_armed = False  # an interruptible reply is playing
        self._ending = False
        self._closing = False
        self._closed = asyncio.Event()
        self._generation = 0
        self._mark_seq = 0
        self._playback: _Playback | None = None
        self._reprompts = 0
        self._digits: list[str] = []
        self._collect = self._default_collect()
        self._no_input_timer: asyncio.TimerHandle | None = None
        self._dtmf_timer: asyncio.TimerHandle | None = None
        self._frames = 0
        self._bot_ms: float | None = None  # the current turn's bot round trip, for TurnLatency
        self._loop: asyncio.AbstractEventLoop  # set by start()

    @property
    def closed(self) -> bool:
        """True once `aclose` has finished: every task cancelled and awaited."""
        return self._closed.is_set()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the recognizer, start the session's tasks; the greeting follows at once."""
        if self._tasks or self._closing:
            raise RuntimeError("session already started")
        self._loop = asyncio.get_running_loop()
        try:
            self._stream = self._stt.open(self.config.language)
        except Exception as exc:  # the worker degrades the call
            logger.error("speech recognizer could not open: %s", exc,
                         extra={"event": "stt_failed", **self._log})
        self._active = True
        metrics.CALLS.inc()
        metrics.ACTIVE_CALLS.inc()
        logger.info("call session started", extra={
            "event": "session_started", **self._log,
            "from_number": self.call.from_number, "to_number": self.call.to_number})
        self._worker = self._spawn(self._converse(), "worker")
        self._spawn(self._send_loop(), "sender")
        if self._stream is not None:
            self._feed = self._stream.feed
            self._spawn(self._recognize(), "recognizer")

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=f"{name}:{self.call.call_sid}")
        self._tasks.append(task)
        return task

    def on_stop(self) -> None:
        """Twilio ended the stream: stop reacting to input; `aclose` follows."""
        self._active = False
        self._barge_armed = False
        self._cancel_timers()
        logger.info("media stream stopped", extra={"event": "stream_stopped", **self._log})

    async def aclose(self) -> None:
        """Cancel and await every task, close the recognizer. Idempotent and safe to race."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        self._active = False
        self._barge_armed = False
        self._cancel_timers()
        current = asyncio.current_task()
        tasks = [task for task in self._tasks if task is not current]
        for task in tasks:
            task.cancel()
        if tasks:
            stopped, stuck = await asyncio.wait(tasks, timeout=self.config.close_timeout_seconds)
            for task in stopped:
                if not task.cancelled() and task.exception() is not None:
                    logger.error("session task failed: %r", task.exception(),
                                 extra={"event": "session_failed", **self._log})
            for task in stuck:  # an engine swallowed the cancellation; say so rather than hang
                logger.error("task did not stop when cancelled: %s", task.get_name(),
                             extra={"event": "task_leaked", **self._log})
        if self._stream is not None:
            try:
                await self._stream.close()
            except Exception as exc:
                logger.warning("speech recognizer did not close cleanly: %s", exc,
                               extra={"event": "stt_close_failed", **self._log})
        if self._tasks:  # started
            metrics.ACTIVE_CALLS.dec()
            metrics.MEDIA_FRAMES.inc(self._frames)
        self.finished.set()
        self._closed.set()
        logger.info("call session closed", extra={
            "event": "session_closed", **self._log, "frames": self._frames})

    # -- inbound events (synchronous: called from the websocket receive loop) -----------------

    def on_media(self, mulaw: bytes) -> None:
        """One inbound frame. Runs 50 times a second: no await, no task, no logging."""
        if not self._active:
            return
        self._frames += 1
        pending = self._pending
        pending += mulaw
        if len(pending) >= self._batch_bytes:
            self._flush_audio()
        vad = self._vad
        event = vad.process(mulaw)
        if event is not None:
            self._on_vad(event)
        if self._barge_armed and vad.in_speech and vad.speech_ms >= self._barge_ms:
            self._barge_in("speech")

    def on_dtmf(self, digit: str) -> None:
        """A key press: digits collect until the finish key, the digit limit or a pause."""
        if not self._active:
            return
        self._disarm_no_input()
        if self._barge_armed:
            self._barge_in("dtmf")
        if self._dtmf_timer is not None:
            self._dtmf_timer.cancel()
            self._dtmf_timer = None
        collect = self._collect
        if digit == collect.finish_key:
            self._flush_digits()
            return
        self._digits.append(digit)
        if collect.max_digits is not None and len(self._digits) >= collect.max_digits:
            self._flush_digits()
        else:
            self._dtmf_timer = self._loop.call_later(collect.timeout, self._flush_digits)

    def on_mark(self, name: str) -> None:
        """Twilio played everything sent before this mark (unless a clear flushed it)."""
        playback = self._playback
        if playback is None or playback.interrupted:
            return
        index = playback.marks.get(name)
        if index is None:  # a mark of an earlier or cleared playback proves nothing
            return
        playback.played = max(playback.played, index + 1)
        playback.resolve(index + 1, True)
        if playback.over:
            self._barge_armed = False  # nothing left to interrupt

    # -- frame-path helpers ------------------------------------------------------------------

    def _flush_audio(self) -> None:
        pending, feed = self._pending, self._feed
        if not pending:
            return
        if feed is not None:
            try:
                feed(bytes(pending))
            except Exception as exc:  # an engine bug: degrade once, never break the frame path
                self._feed = None
                metrics.STT_FEED_ERRORS.inc()
                logger.error("speech recognizer rejected audio: %r", exc,
                             extra={"event": "stt_feed_failed", **self._log})
                self._spawn(self._degrade("stt", exc), "degrader")
        pending.clear()

    def _on_vad(self, event: VadEvent) -> None:
        if event is VadEvent.SPEECH_START:
            self._disarm_no_input()
        else:
            self._flush_audio()  # the recognizer gets the utterance's tail without waiting
            self._arm_no_input()

    def _barge_in(self, cause: str) -> None:
        """Caller interrupts: drop queued audio, tell Twilio to clear, stop synthesizing."""
        self._barge_armed = False
        playback = self._playback
        if playback is None or playback.interrupted or playback.over:
            return
        playback.interrupted = True
        self._generation += 1
        outbox = self._outbox
        while not outbox.empty():
            outbox.get_nowait()
        outbox.put_nowait((clear_message(self.call.stream_sid), None))
        playback.resolve(len(playback.sentences), False)
        self.phase = Phase.LISTENING
        metrics.BARGE_INS.inc()
        played = playback.sentences[:playback.played]
        interrupted = playback.sentences[playback.played:]
        logger.info("caller interrupted the reply", extra={
            "event": "barge_in", **self._log, "cause": cause,
            "played": played, "interrupted": interrupted,
        })
        self._events.emit(BargeIn(cause, tuple(played), tuple(interrupted)))

    def _arm_no_input(self) -> None:
        """Start the silence timer if the caller is expected to talk and nothing is pending."""
        if (self._no_input_timer is None and self.phase is Phase.LISTENING and self._active
                and not self._ending and not self._vad.in_speech and not self._digits
                and self._inputs.empty()):
            self._no_input_timer = self._loop.call_later(
                self.config.call.no_input_seconds, self._on_no_input)

    def _disarm_no_input(self) -> None:
        if self._no_input_timer is not None:
            self._no_input_timer.cancel()
            self._no_input_timer = None

    def _on_no_input(self) -> None:
        self._no_input_timer = None
        if (self.phase is Phase.LISTENING and self._active and not self._ending
                and not self._vad.in_speech and not self._digits and self._inputs.empty()):
            self._inputs.put_nowait(_Silence())

    def _flush_digits(self) -> None:
        if self._dtmf_timer is not None:
            self._dtmf_timer.cancel()
            self._dtmf_timer = None
        if not self._digits or not self._active:
            self._arm_no_input()
            return
        digits = "".join(self._digits)
        self._digits.clear()
        self._inputs.put_nowait(_Utterance(digits, "dtmf", monotonic()))

    def _default_collect(self) -> _Collect:
        call = self.config.call
        return _Collect(None, call.dtmf_finish_key, call.dtmf_timeout_seconds)

    def _cancel_timers(self) -> None:
        self._disarm_no_input()
        if self._dtmf_timer is not None:
            self._dtmf_timer.cancel()
            self._dtmf_timer = None

    # -- tasks -------------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        """The socket's only writer; records turn latency when a reply's first audio goes out."""
        get, send = self._outbox.get, self._send
        while True:
            text, heard_at = await get()
            try:
                await send(text)
            except Exception as exc:  # the socket is gone; the receive loop ends the session
                logger.info("websocket send failed: %r", exc,
                            extra={"event": "send_failed", **self._log})
                self._active = False
                self.finished.set()
                return
            if heard_at is not None:
                waited = monotonic() - heard_at
                metrics.TURN_LATENCY.observe(waited)
                self._events.emit(TurnLatency(total_ms=round(waited * 1000, 1),
                                              bot_ms=self._bot_ms))

    async def _recognize(self) -> None:
        assert self._stream is not None
        try:
            async for transcript in self._stream.results():
                text = transcript.text.strip()
                if transcript.is_final and text:
                    self._on_final(text)
        except Exception as exc:
            await self._degrade("stt", exc)

    def _on_final(self, text: str) -> None:
        if not self._active or self._ending:
            return
        playback = self._playback
        if playback is not None and not playback.over:  # short speech, or our own echo
            logger.debug("transcript during playback ignored",
                         extra={"event": "transcript_ignored", **self._log})
            return
        self._disarm_no_input()
        self._inputs.put_nowait(_Utterance(text, "speech", monotonic()))

    async def _degrade(self, reason: Literal["stt", "tts"], exc: BaseException) -> None:
        """An engine failed: stop the conversation and move the call to the Gather path."""
        if self._ending:
            return
        logger.error("%s engine failed: %s", reason, exc,
                     extra={"event": f"{reason}_failed", **self._log})
        worker = self._worker
        if worker is not None and worker is not asyncio.current_task():
            await cancel_and_wait(worker)
        await self._end("redirect_to_gather", reason=reason)

    async def _converse(self) -> None:
        """The worker: greeting, then one caller input at a time until the call ends."""
        try:
            if self._stream is None:
                await self._end("redirect_to_gather", reason="stt")
                return
            if self.config.greeting:
                self._events.emit(Prompt("greeting", self.config.greeting))
                await self._play([self.config.greeting], interruptible=True)
            while not self._ending:
                self.phase = Phase.LISTENING
                self._arm_no_input()
                item = await self._inputs.get()
                if isinstance(item, _Utterance):
                    await self._turn(item)
                else:
                    await self._no_input()
        except SynthesisError as exc:
            await self._degrade("tts", exc)
        except Exception:
            logger.exception("call session failed", extra={"event": "session_failed", **self._log})
            self.finished.set()

    async def _turn(self, utterance: _Utterance) -> None:
        self.phase = Phase.THINKING
        self._disarm_no_input()
        self._reprompts = 0
        self._bot_ms = None
        self._collect = self._default_collect()
        metrics.TURNS.inc()
        shown = utterance.text if utterance.source == "speech" else f"{len(utterance.text)} digits"
        logger.info("caller said: %s", shown, extra={
            "event": "caller_input", **self._log, "input": utterance.source})
        self._events.emit(CallerInput(utterance.text, utterance.source))
        metadata = {
            "from": self.call.from_number, "to": self.call.to_number,
            "call_sid": self.call.call_sid, "channel": CHANNEL, "input": utterance.source,
        }
        asked = monotonic()
        try:
            replies = await self._bot.send(self.call.call_sid, utterance.text, metadata)
        except Exception as exc:  # BotError, or a client bug: never leave the caller in silence
            metrics.BOT_ERRORS.inc()
            logger.warning("bot failed: %s", exc, extra={"event": "bot_error", **self._log})
            self._events.emit(BotFailed(str(exc)))
            self._events.emit(Prompt("apology", self.config.prompts.apology))
            await self._play([self.config.prompts.apology], interruptible=False)
            await self._end("transfer")
            return
        answered = monotonic() - asked
        metrics.BOT_LATENCY.observe(answered)
        self._bot_ms = round(answered * 1000, 1)
        self._events.emit(BotReply(tuple(replies)))
        actions = parse_actions(replies)
        speech = [action.text for action in actions if isinstance(action, Speak)]
        ending = next((a for a in actions if isinstance(a, (Transfer, HangUp))), None)
        for action in actions:
            if isinstance(action, CollectDigits):
                self._collect = _Collect(
                    action.max_digits, action.finish_on_key,
                    action.timeout_seconds or self.config.call.dtmf_timeout_seconds)
        if isinstance(ending, HangUp) and not speech:
            speech = [self.config.prompts.goodbye]
            self._events.emit(Prompt("goodbye", self.config.prompts.goodbye))
        await self._play(speech, interruptible=ending is None, heard_at=utterance.heard_at)
        if isinstance(ending, Transfer):
            await self._end("transfer", ending.number)
        elif isinstance(ending, HangUp):
            await self._end("hang_up")

    async def _no_input(self) -> None:
        metrics.NO_INPUT.inc()
        if self._reprompts < self.config.call.max_reprompts:
            self._reprompts += 1
            logger.info("no input, reprompting", extra={
                "event": "no_input", **self._log, "reprompt": self._reprompts})
            self._events.emit(Prompt("reprompt", self.config.prompts.reprompt))
            await self._play([self.config.prompts.reprompt], interruptible=True)
            return
        logger.info("no input after reprompts, transferring",
                    extra={"event": "no_input", **self._log, "reprompt": None})
        await self._end("transfer")

    async def _play(self, texts: list[str], *, interruptible: bool,
                    heard_at: float | None = None) -> bool:
        """Synthesize sentence by sentence, each followed by a mark, and wait until the last
        mark comes back. Returns False when the caller barged in or marks stopped coming."""
        sentences = [s for text in texts for s in split_sentences(text)]
        if not sentences:
            return True
        playback = _Playback(sentences, [self._loop.create_future() for _ in sentences])
        self._playback = playback
        self.phase = Phase.SPEAKING
        self._disarm_no_input()
        self._barge_armed = interruptible
        if interruptible and self._vad.in_speech:
            # Speech that began before the reply (the request's own tail, still in the VAD's
            # hangover) must not interrupt it: only an onset from now on counts.
            self._vad.reset()
        ahead = max(1, self.config.sentences_ahead)
        try:
            for index, sentence in enumerate(sentences):
                if index >= ahead:
                    await self._until_heard(playback, index - ahead)
                    if playback.interrupted:
                        return False
                heard_at = await self._speak_sentence(playback, sentence, heard_at)
                if playback.interrupted:
                    return False
                self._mark_seq += 1
                name = f"g{self._generation}-s{self._mark_seq}"
                playback.marks[name] = index
                playback.deadlines.append(playback.play_end + self.config.mark_timeout_seconds)
                self._outbox.put_nowait((mark_message(self.call.stream_sid, name), None))
            return await self._until_heard(playback, len(sentences) - 1)
        finally:
            self._barge_armed = False
            if self._playback is playback:
                self._playback = None

    async def _speak_sentence(self, playback: _Playback, sentence: str,
                              heard_at: float | None) -> float | None:
        """Queue one sentence's audio in outbound-sized chunks; stops early on barge-in.
        Returns `heard_at` until the turn's first audio has been queued (latency metric)."""
        sid, put = self.call.stream_sid, self._outbox.put_nowait
        rechunker = Rechunker(chunk_size(self.config.call.outbound_chunk_ms))
        async with _closing(self._tts.synthesize(sentence, self.config.language)) as audio:
            async for data in audio:
                if playback.interrupted:
                    return heard_at
                chunks = rechunker.push(data)
                for chunk in chunks:
                    put((media_message(sid, chunk), heard_at))
                    heard_at = None
                if chunks:
                    self._account(playback, len(chunks) * rechunker.size)
        tail = rechunker.flush()
        if tail:
            put((media_message(sid, tail), heard_at))
            heard_at = None
            self._account(playback, len(tail))
        return heard_at

    @staticmethod
    def _account(playback: _Playback, sent: int) -> None:
        """Twilio plays what it gets in order, from when it gets it."""
        playback.play_end = max(playback.play_end, monotonic()) + sent / BYTES_PER_SECOND

    async def _until_heard(self, playback: _Playback, index: int) -> bool:
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

    async def _end(self, action: Ending, number: str | None = None, *,
                   reason: Literal["stt", "tts"] | None = None) -> None:
        """Hand the call back to Twilio (once): transfer, hang up, or the Gather path."""
        if self._ending:
            return
        self._ending = True
        self._active = False
        self._barge_armed = False
        self.phase = Phase.ENDING
        self._cancel_timers()
        if reason is not None:
            metrics.DEGRADATIONS[reason].inc()
            logger.warning("call degraded to the Gather path", extra={
                "event": "call_degraded", **self._log, "reason": reason})
        try:
            if action == "transfer":
                await self._control.transfer(self.call.call_sid, number)
            elif action == "hang_up":
                await self._control.hang_up(self.call.call_sid)
            else:
                await self._control.redirect_to_gather(self.call.call_sid)
        except Exception as exc:  # CallControlError or a client bug: end cleanly either way
            metrics.CALL_CONTROL_ERRORS[action].inc()
            logger.error("call control %s failed: %s", action, exc, extra={
                "event": "call_control_failed", **self._log, "action": action})
            self.finished.set()
            return
        metrics.ENDED[action].inc()
        logger.info("call handed back to Twilio: %s", action,
                    extra={"event": f"call_{action}", **self._log})
        await asyncio.sleep(self.config.end_grace_seconds)
        self.finished.set()


@contextlib.asynccontextmanager
async def _closing(iterator: AsyncIterator[bytes]) -> AsyncIterator[AsyncIterator[bytes]]:
    """Close a synthesizer's generator when we stop early, so it stops working (barge-in)."""
    try:
        yield iterator
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()
