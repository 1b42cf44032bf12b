"""How long the caller waited for each reply, stage by stage, and for the greeting.

A turn starts where the caller's input ended: the last loud frame of their speech by the
session's VAD (matched to the transcript by its end offset, streaming/inputs.py), or their last
key. Its stages are timed at their boundaries only, never per frame:

- endpointing: the end of speech -> the final transcript (keys: the last key -> digits complete);
- bot: the Rasa round trip;
- synthesis: the reply's first sentence -> the synthesizer's first audio of it;
- total: the end of speech -> the reply's first frame handed to the socket.

Each turn is reported once: `gateway_turn_stage_seconds{stage}`, one `turn` log line with the
same figures in ms, and a TurnLatency for whoever watches the call (the softphone's timeline).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from time import monotonic
from typing import Any, Literal

from streaming import metrics
from streaming.ports import BotMessage, CallEvents, TurnLatency

logger = logging.getLogger("streaming.session")

Stage = Literal["endpointing", "bot", "synthesis", "total"]


@dataclass(slots=True)
class TurnTiming:
    """One caller turn. Times are `time.monotonic()` seconds; stages are seconds, None until
    measured (or when the turn never got there: no reply audio, the bot failed)."""

    heard: float  # the input was complete: final transcript, or digits delivered
    ended: float | None  # the caller's input ended (None: the VAD saw no speech to end)
    log: Mapping[str, Any]
    events: CallEvents
    source: Literal["speech", "dtmf"] = "speech"
    bot: float | None = None
    synthesis: float | None = None
    total: float | None = None
    _reported: bool = field(default=False, repr=False)

    def __enter__(self) -> TurnTiming:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.report()

    @property
    def endpointing(self) -> float | None:
        return None if self.ended is None else max(0.0, self.heard - self.ended)

    async def asking(self, request: Awaitable[list[BotMessage]]) -> list[BotMessage]:
        """The bot's reply to the caller's input: its round trip is the bot stage."""
        asked = monotonic()
        replies = await request
        self.bot = monotonic() - asked
        metrics.BOT_LATENCY.observe(self.bot)
        return replies

    def synthesized(self, seconds: float) -> None:
        """The synthesizer took `seconds` to its first audio of the reply."""
        if self.synthesis is None:
            self.synthesis = seconds

    def sent(self, at: float) -> None:
        """The reply's first frame went to the socket at `at`: the turn is measured."""
        metrics.TURN_LATENCY.observe(at - self.heard)
        self.total = at - (self.heard if self.ended is None else self.ended)
        self.report()

    def report(self) -> None:
        """Observe, log and tell the stages measured; the first call only."""
        if self._reported:
            return
        self._reported = True
        stages: dict[Stage, float | None] = {
            "endpointing": self.endpointing, "bot": self.bot, "synthesis": self.synthesis,
            "total": self.total}
        for stage, seconds in stages.items():
            if seconds is not None:
                metrics.TURN_STAGES[stage].observe(seconds)
        ms = {stage: None if seconds is None else round(seconds * 1000, 1)
              for stage, seconds in stages.items()}
        logger.info("turn: %s", ", ".join(f"{stage} {value} ms" for stage, value in ms.items()
                                         if value is not None) or "no reply audio",
                    extra={"event": "turn", **self.log, "input": self.source,
                           **{f"{stage}_ms": value for stage, value in ms.items()}})
        total = ms["total"]
        if total is not None:
            self.events.emit(TurnLatency(total, endpointing_ms=ms["endpointing"],
                                         bot_ms=ms["bot"], synthesis_ms=ms["synthesis"]))


@dataclass(slots=True)
class GreetingTiming:
    """From the call's answer (SessionConfig.answered_seconds_ago) to the greeting's first frame
    handed to the socket."""

    started: float

    def synthesized(self, seconds: float) -> None:
        pass

    def sent(self, at: float) -> None:
        metrics.GREETING_LATENCY.observe(at - self.started)
