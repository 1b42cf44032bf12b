"""One streamed call's conversation: listening, thinking, speaking; barge-in, DTMF, endings.

The websocket endpoint hands every inbound event to a `CallSession`, which sends through the
`send` callable it was given: the whole call runs without sockets in tests. `CallSession`
orchestrates the call's tasks; its parts are modules of their own: streaming/playback.py (replies
played, marked, paced, interrupted), streaming/inputs.py and digits.py (the caller's inputs, DTMF,
the no-input timer), streaming/recognition.py (the recognizer), streaming.actions.plan_turn (what
a bot reply means, as on the Gather path), streaming/turns.py (how long each turn took, stage by
stage), streaming/handover.py (handing the call back to Twilio). The 50-per-second frame path stays synchronous and cheap:

- `on_media` (sync, per frame): VAD, barge-in, and a bytearray that is handed to the recognizer's
  synchronous `feed` in 100 ms batches (no task or await per frame or per batch; each engine
  bounds its own backlog and fails with SpeechError when it falls behind).
- worker task: greeting, then one caller input at a time: bot -> plan -> synthesized audio.
- sender task: the only writer to the socket, so `clear` can drop audio queued behind it.
- recognizer task: final transcripts become caller inputs.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable
from time import monotonic
from typing import Any, Literal

from audio.framing import chunk_size
from audio.vad import EnergyVad, VadEvent
from streaming import metrics
from streaming.actions import HangUp, Transfer, plan_turn, turn_metadata
from streaming.handover import Ending, hand_back
from streaming.inputs import CallerInputs, TimeUp, Utterance
from streaming.playback import FirstAudio, Outgoing, ReplyPlayer, split_sentences
from streaming.recognition import Recognition
from streaming.redaction import redact_digits
from streaming.ports import (
    Bot,
    BotFailed,
    BotReply,
    CallControl,
    CallerInput,
    CallEvents,
    CallInfo,
    NoCallEvents,
    Prompt,
    PromptName,
    SpeechToText,
    SynthesisError,
    TextToSpeech,
    Transcript,
)
from streaming.settings import SessionConfig
from streaming.tasks import cancel_and_wait, meanwhile, stop_tasks
from streaming.turns import GreetingTiming, TurnTiming

logger = logging.getLogger("streaming.session")

CHANNEL = "twilio_voice_stream"  # the `channel` of this path's turns in Rasa's metadata
BYTES_PER_MS = chunk_size(1)


class Phase(enum.Enum):
    """Who has the floor. Derived from the session's state whenever it is read, never stored."""

    LISTENING = "listening"  # the caller: the no-input timer may run
    THINKING = "thinking"  # the bot: a caller input is with it
    SPEAKING = "speaking"  # the bot: a reply is playing
    ENDING = "ending"  # nobody: the call has been handed back to Twilio


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
        # Set when the session is done with the call and the socket should be closed.
        self.finished = asyncio.Event()
        self._send = send
        self._stt, self._bot, self._control = stt, bot, control
        self._events = events or NoCallEvents()
        self._log = {"call_sid": call.call_sid}
        self._vad = EnergyVad(config.vad.energy_threshold, config.vad_start_ms,
                              config.endpoint_silence_ms)
        self._barge_ms = config.call.barge_in_min_speech_ms
        self._batch_bytes = chunk_size(config.stt_batch_ms)
        self._pending = bytearray()
        self._fed = 0  # bytes handed to the recognizer: the timeline of its transcripts
        self._outbox: asyncio.Queue[Outgoing] = asyncio.Queue()
        self._player = ReplyPlayer(
            tts, config.language, call.stream_sid, self._outbox,
            chunk_bytes=chunk_size(config.call.outbound_chunk_ms),
            sentences_ahead=config.sentences_ahead,
            mark_timeout_seconds=config.mark_timeout_seconds, log=self._log,
            events=self._events, audio_ms=self._audio_ms)
        self._inputs = CallerInputs(config.call, self._caller_has_floor)
        self._recognition: Recognition | None = None  # opened by start()
        self._tasks: list[asyncio.Task[None]] = []
        self._worker: asyncio.Task[None] | None = None
        self._active = False  # inbound events are processed (between start and stop/ending)
        self._asking = False  # a caller input is with the bot
        self._ending = False
        self._closing = False
        self._closed = asyncio.Event()
        self._reprompts = 0
        self._frames = 0
        self._started_at = 0.0  # monotonic time the call was answered: the greeting's wait

    @property
    def closed(self) -> bool:
        """True once `aclose` has finished: every task cancelled and awaited."""
        return self._closed.is_set()

    @property
    def frames(self) -> int:
        """Inbound media frames handled so far."""
        return self._frames

    @property
    def phase(self) -> Phase:
        if self._ending:
            return Phase.ENDING
        if self._player.playing:
            return Phase.SPEAKING
        return Phase.THINKING if self._asking else Phase.LISTENING

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the recognizer, start the session's tasks; the greeting follows at once."""
        if self._tasks or self._closing:
            raise RuntimeError("session already started")
        self._started_at = monotonic() - self.config.answered_seconds_ago
        self._recognition = Recognition(
            self._stt, self.config.language, self._log,
            lambda exc: self._spawn(self._degrade("stt", exc), "degrader"))
        self._active = True
        metrics.CALLS.inc()
        metrics.ACTIVE_CALLS.inc()
        logger.info("call session started", extra={
            "event": "session_started", **self._log,
            "from_number": self.call.from_number, "to_number": self.call.to_number})
        self._inputs.time_limit(self.config.call.max_duration_seconds - self.config.elapsed_seconds)
        self._worker = self._spawn(self._converse(), "worker")
        self._spawn(self._send_loop(), "sender")
        if self._recognition.stream is not None:  # else the worker degrades the call
            self._spawn(self._recognize(), "recognizer")

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=f"{name}:{self.call.call_sid}")
        self._tasks.append(task)
        return task

    def on_stop(self) -> None:
        """Twilio ended the stream: stop reacting to input; `aclose` follows."""
        self._stop_listening()
        logger.info("media stream stopped", extra={"event": "stream_stopped", **self._log})

    def _stop_listening(self) -> None:
        """Inbound events change nothing from now on, and no timer will fire."""
        self._active = False
        self._inputs.close()

    async def aclose(self) -> None:
        """Cancel and await every task, close the recognizer. Idempotent and safe to race."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        self._stop_listening()
        await stop_tasks(self._tasks, self.config.close_timeout_seconds, self._log)
        if self._recognition is not None:
            await self._recognition.close()
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
        if self._player.armed and vad.in_speech and vad.speech_ms >= self._barge_ms:
            self._player.interrupt("speech")

    def on_dtmf(self, digit: str) -> None:
        """A key press: digits collect until the finish key, the digit limit or a pause."""
        if not self._active:
            return
        self._inputs.disarm()
        self._player.interrupt("dtmf")
        self._inputs.digits.press(digit)

    def on_mark(self, name: str) -> None:
        """Twilio played everything sent before this mark (unless a clear flushed it)."""
        self._player.on_mark(name)

    # -- frame-path helpers ------------------------------------------------------------------

    def _flush_audio(self) -> None:
        pending = self._pending
        if pending and self._recognition is not None:
            self._recognition.feed(bytes(pending))
            self._fed += len(pending)
        pending.clear()

    def _audio_ms(self) -> int:
        """The caller's audio received so far, in ms on the recognizer's timeline."""
        return (self._fed + len(self._pending)) // BYTES_PER_MS

    def _on_vad(self, event: VadEvent) -> None:
        vad = self._vad
        if event is VadEvent.SPEECH_START:
            self._inputs.speech_started(self._audio_ms() - vad.start_ms)
            if self._recognition is not None:
                self._recognition.speech_started()
            return
        self._flush_audio()  # the recognizer gets the utterance's tail without waiting
        if self._recognition is not None:
            self._recognition.speech_ended()
        hangover_ms = vad.hangover_ms  # the speech's last loud frame was this long ago
        self._inputs.speech_ended(self._audio_ms() - hangover_ms,
                                  monotonic() - hangover_ms / 1000)

    def _caller_has_floor(self) -> bool:
        """The caller is expected to talk: the bot neither thinks nor speaks, the call goes on,
        and the caller is not talking right now."""
        return self._active and self.phase is Phase.LISTENING and not self._vad.in_speech

    # -- tasks -------------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        """The socket's only writer; records turn latency when a reply's first audio goes out."""
        get, send = self._outbox.get, self._send
        while True:
            text, first = await get()
            try:
                await send(text)
            except Exception as exc:  # the socket is gone; the receive loop ends the session
                logger.info("websocket send failed: %r", exc,
                            extra={"event": "send_failed", **self._log})
                self._stop_listening()
                self.finished.set()
                return
            if first is not None:
                first.sent(monotonic())

    async def _recognize(self) -> None:
        assert self._recognition is not None
        try:
            async for transcript in self._recognition.finals():
                self._on_final(transcript)
        except Exception as exc:
            await self._degrade("stt", exc)

    def _on_final(self, transcript: Transcript) -> None:
        if not self._active or self._ending:
            return
        player = self._player
        vad = self._vad  # still in speech: the recognizer finalized within the VAD's hangover
        in_speech_end = monotonic() - vad.quiet_ms / 1000 if vad.in_speech else None
        if player.playing or player.spoken_over(transcript.end_ms):
            # Short speech or our own echo, over a reply it did not interrupt.
            self._inputs.claim_end(transcript.end_ms, in_speech_end)  # no turn waits on it
            logger.info("transcript of speech over a reply ignored",
                        extra={"event": "transcript_ignored", **self._log})
            return
        self._inputs.speech(transcript.text, transcript.end_ms, in_speech_end)

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
            if self._recognition is None or self._recognition.stream is None:
                await self._end("redirect_to_gather", reason="stt")
                return
            opening = GreetingTiming(self._started_at)  # the stream's first words
            if self.config.resumed:
                await self._prompt("resume", self.config.prompts.resume, first=opening)
            elif self.config.greeting:
                await self._prompt("greeting", self.config.greeting, first=opening)
            while not self._ending:
                self._inputs.arm()
                item = await self._inputs.next()
                if isinstance(item, Utterance):
                    await self._turn(item)
                elif isinstance(item, TimeUp):
                    await self._time_up()
                else:
                    await self._no_input()
        except SynthesisError as exc:
            await self._degrade("tts", exc)
        except Exception:
            logger.exception("call session failed", extra={"event": "session_failed", **self._log})
            self.finished.set()

    async def _turn(self, utterance: Utterance) -> None:
        # Reported once: when the reply's first audio is sent, else as the turn ends.
        with TurnTiming(utterance.heard_at, utterance.ended_at, self._log, self._events,
                        utterance.source) as timing:
            await self._answer(utterance, timing)

    async def _answer(self, utterance: Utterance, timing: TurnTiming) -> None:
        self._inputs.disarm()
        self._reprompts = 0
        self._inputs.digits.expect(None)
        metrics.TURNS.inc()
        shown = (redact_digits(utterance.text) if utterance.source == "speech"
                 else f"{len(utterance.text)} digits")
        logger.info("caller said: %s", shown, extra={
            "event": "caller_input", **self._log, "input": utterance.source})
        self._events.emit(CallerInput(utterance.text, utterance.source))
        call = self.call
        metadata = turn_metadata(call.call_sid, call.from_number, call.to_number, CHANNEL,
                                 utterance.source)
        self._asking = True
        try:
            replies = await meanwhile(
                timing.asking(self._bot.send(call.call_sid, utterance.text, metadata)),
                self.config.call.thinking_after_ms / 1000,
                lambda: self._prompt("thinking", self.config.prompts.thinking))
        except SynthesisError:
            raise  # the thinking cue could not be said: the worker degrades the call
        except Exception as exc:  # BotError, or a client bug: never leave the caller in silence
            metrics.BOT_ERRORS.inc()
            logger.warning("bot failed: %s", exc, extra={"event": "bot_error", **self._log})
            self._events.emit(BotFailed(str(exc)))
            await self._prompt("apology", self.config.prompts.apology, interruptible=False)
            await self._end("transfer")
            return
        finally:
            self._asking = False
        self._events.emit(BotReply(tuple(replies)))
        plan = plan_turn(replies, self.config.prompts.goodbye)
        if plan.goodbye:
            self._events.emit(Prompt("goodbye", self.config.prompts.goodbye))
        self._inputs.digits.expect(plan.collect)
        await self._play(list(plan.says), interruptible=plan.ending is None, first=timing)
        timing.report()  # before the ending, which may wait for Twilio
        if isinstance(plan.ending, Transfer):
            await self._end("transfer", plan.ending.number)
        elif isinstance(plan.ending, HangUp):
            await self._end("hang_up")

    async def _no_input(self) -> None:
        metrics.NO_INPUT.inc()
        if self._reprompts < self.config.call.max_reprompts:
            self._reprompts += 1
            logger.info("no input, reprompting", extra={
                "event": "no_input", **self._log, "reprompt": self._reprompts})
            await self._prompt("reprompt", self.config.prompts.reprompt)
            return
        logger.info("no input after reprompts, transferring",
                    extra={"event": "no_input", **self._log, "reprompt": None})
        await self._end("transfer")

    async def _time_up(self) -> None:
        metrics.MAX_DURATION.inc()
        logger.info("the call reached call.max_duration_seconds: goodbye",
                    extra={"event": "max_duration", **self._log})
        self._stop_listening()
        await self._prompt("goodbye", self.config.prompts.goodbye, interruptible=False)
        await self._end("hang_up")

    async def _prompt(self, name: PromptName, text: str, *, interruptible: bool = True,
                      first: FirstAudio | None = None) -> None:
        """Say one of the gateway's own prompts (watchers are told which)."""
        self._events.emit(Prompt(name, text))
        await self._play([text], interruptible=interruptible, first=first)

    async def _play(self, texts: list[str], *, interruptible: bool,
                    first: FirstAudio | None = None) -> bool:
        """Say `texts`; False when the caller barged in or marks stopped coming."""
        sentences = [s for text in texts for s in split_sentences(text)]
        if not sentences:
            return True
        self._inputs.disarm()
        if interruptible and self._vad.in_speech:
            # Speech that began before the reply (the request's own tail, still in the VAD's
            # hangover) must not interrupt it: only an onset from now on counts.
            self._vad.reset()
        return await self._player.play(sentences, interruptible=interruptible, first=first)

    async def _end(self, action: Ending, number: str | None = None, *,
                   reason: Literal["stt", "tts"] | None = None) -> None:
        """Hand the call back to Twilio (once): transfer, hang up, or the Gather path."""
        if self._ending:
            return
        self._ending = True
        self._stop_listening()
        if reason is not None:
            metrics.DEGRADATIONS[reason].inc()
            logger.warning("call degraded to the Gather path", extra={
                "event": "call_degraded", **self._log, "reason": reason})
        if await hand_back(self._control, self.call.call_sid, action, number, self._log):
            await asyncio.sleep(self.config.end_grace_seconds)  # Twilio stops the stream first
        self.finished.set()
