"""The thinking cue: when the bot is slow, `prompts.thinking` plays meanwhile, once per turn; the
reply follows it, never over it; the caller can interrupt both; `call.thinking_after_ms: 0` turns
it off. Driven like tests/test_session.py (real session, protocol, VAD; in-test bot and engines).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from streaming.ports import BotMessage, Prompt
from streaming.settings import SessionConfig
from tests.support.call_harness import CallHarness, FakeBot, FakeTts, config
from tests.support.caller_audio import tone

CUE = "Un momento, por favor."
REPLY = "Su tarjeta está bloqueada."


def slow_bot(delay: float, text: str = REPLY) -> FakeBot:
    return FakeBot(reply=lambda said: [BotMessage(text=text)], delay=delay)


@dataclass
class TellingBot(FakeBot):
    """Rasa's stand-in that says when its answer is in (the session has it from then on)."""

    answered: asyncio.Event = field(default_factory=asyncio.Event)

    async def send(self, sender: str, message: str,
                   metadata: Mapping[str, Any]) -> list[BotMessage]:
        replies = await super().send(sender, message, metadata)
        self.answered.set()
        return replies


async def settle() -> None:
    """Let every task that can run, run: a few loop passes, no wall-clock time."""
    for _ in range(20):
        await asyncio.sleep(0)


def cue_config(after_ms: int = 100, **call: object) -> SessionConfig:
    return config(call={"thinking_after_ms": after_ms, "barge_in_min_speech_ms": 240, **call},
                  prompts={"thinking": CUE})


async def test_a_slow_bot_gets_the_cue_once_and_the_reply_after_it() -> None:
    bot = TellingBot(reply=lambda said: [BotMessage(text=REPLY)], delay=0.3)
    async with CallHarness(cue_config(), bot=bot) as h:
        h.recognition.say("quiero bloquear mi tarjeta")
        await h.wait_marks(1)  # the cue, 100 ms into the bot's 300 ms
        assert h.tts.texts == [CUE]
        await asyncio.wait_for(bot.answered.wait(), 5)  # the cue is still "playing"
        await settle()
        assert h.tts.texts == [CUE], "the reply waits for the cue to be heard"
        assert h.played_audio() == FakeTts.audio_for(CUE)  # whole 40 ms chunks: no padding
        h.echo_marks()  # the caller heard the cue
        await h.wait_marks(2)
        assert h.tts.texts == [CUE, REPLY]
        cue_then_reply = FakeTts.audio_for(CUE) + FakeTts.audio_for(REPLY)
        assert h.played_audio().startswith(cue_then_reply[:len(FakeTts.audio_for(CUE)) + 320])
        kinds = [e.kind for e in h.recorded.events]
        assert kinds[:4] == ["caller_input", "prompt", "bot_reply", "turn_latency"]
        assert h.recorded.events[1] == Prompt("thinking", CUE)


async def test_a_bot_slower_than_the_cue_still_gets_it_only_once() -> None:
    async with CallHarness(cue_config(50), bot=slow_bot(0.5)) as h:
        h.recognition.say("hola")
        await h.play_out(1)
        await h.wait(lambda: REPLY in h.tts.texts, what="the reply")
        assert h.tts.texts == [CUE, REPLY]


async def test_a_quick_bot_gets_no_cue() -> None:
    async with CallHarness(cue_config(300), bot=slow_bot(0.0)) as h:
        h.recognition.say("hola")
        await h.wait_marks(1)
        await asyncio.sleep(0.4)
        assert h.tts.texts == [REPLY]


async def test_zero_turns_the_cue_off() -> None:
    async with CallHarness(cue_config(0), bot=slow_bot(0.3)) as h:
        h.recognition.say("hola")
        await h.wait_marks(1)
        assert h.tts.texts == [REPLY]
        assert "prompt" not in h.recorded.kinds()


async def test_the_caller_can_interrupt_the_cue_and_then_the_reply() -> None:
    async with CallHarness(cue_config(), bot=slow_bot(0.3, "Una frase. Otra frase."),
                           tts=FakeTts(delay=0.01)) as h:
        h.recognition.say("hola")
        await h.wait_marks(1)
        h.audio(tone(300))  # over the cue
        await h.wait(lambda: len(h.events("clear")) == 1, what="the cue cleared")
        h.silence(800)
        h.echo_marks()  # Twilio echoes the cleared mark
        await h.wait(lambda: "Una frase." in h.tts.texts, what="the reply after the cue")
        await h.wait_marks(2)
        h.audio(tone(300))  # over the reply
        await h.wait(lambda: len(h.events("clear")) == 2, what="the reply cleared")
        assert [e.kind for e in h.recorded.events].count("barge_in") == 2


async def test_a_cue_that_cannot_be_said_degrades_the_call() -> None:
    async with CallHarness(cue_config(), bot=slow_bot(5.0), tts=FakeTts(fail_on="momento")) as h:
        h.recognition.say("hola")
        await h.wait(lambda: h.control.calls, what="the Gather path", timeout=3)
        assert h.control.calls == [("redirect_to_gather", h.twilio.call_sid)]
