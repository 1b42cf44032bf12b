"""What a session tells its CallEvents sink (the softphone's timeline): at turn boundaries only.

Driven like tests/test_session.py: real session, protocol and VAD; in-test engines and bot.
"""

from __future__ import annotations

import asyncio

from streaming.ports import (
    BargeIn,
    BotFailed,
    BotMessage,
    BotReply,
    CallerInput,
    Prompt,
    TurnLatency,
)
from tests.support.call_harness import BotError, CallHarness, FakeBot, FakeTts, config
from tests.support.caller_audio import tone


async def test_a_turn_tells_the_input_the_reply_and_its_latency() -> None:
    reply = [BotMessage(text="Entendido."), BotMessage(custom={"action": "collect_dtmf"})]
    bot = FakeBot(reply=lambda text: reply, delay=0.05)
    async with CallHarness(config(greeting="Hola."), bot=bot) as h:
        await h.play_out(1)
        h.recognition.say("  quiero bloquear mi tarjeta ")
        await h.wait(lambda: "turn_latency" in h.recorded.kinds(), what="the turn's latency")
        greeting, said, answer, latency = h.recorded.events
        assert greeting == Prompt("greeting", "Hola.")
        assert said == CallerInput("quiero bloquear mi tarjeta", "speech")  # as sent to the bot
        assert said.text == h.bot.requests[0][1]
        assert answer == BotReply(tuple(reply))
        assert isinstance(latency, TurnLatency)
        assert latency.bot_ms is not None and latency.bot_ms >= 50  # the bot's delay
        assert latency.total_ms >= latency.bot_ms


async def test_a_resumed_stream_opens_with_the_resume_prompt_not_the_greeting() -> None:
    resumed = config(greeting="Hola.", resumed=True, prompts={"resume": "Se ha cortado."})
    async with CallHarness(resumed) as h:
        await h.play_out(1)
        h.recognition.say("sigo aquí")
        await h.wait(lambda: "bot_reply" in h.recorded.kinds(), what="the reply")
        assert h.recorded.events[:2] == [Prompt("resume", "Se ha cortado."),
                                         CallerInput("sigo aquí", "speech")]
        assert h.tts.texts[0] == "Se ha cortado."
        assert h.bot.requests[0][0] == h.twilio.call_sid  # the same Rasa conversation


async def test_keyed_digits_are_told_as_sent() -> None:
    async with CallHarness() as h:
        for digit in "1234#":
            h.deliver(h.twilio.dtmf(digit))
        await h.wait(lambda: "bot_reply" in h.recorded.kinds(), what="the reply")
        assert h.recorded.events[0] == CallerInput("1234", "dtmf")


async def test_barge_in_tells_what_was_heard_and_what_was_cut() -> None:
    reply = "Primera frase. Segunda frase larga con muchas palabras. Tercera frase."
    bot = FakeBot(reply=lambda text: [BotMessage(text=reply)])
    async with CallHarness(bot=bot, tts=FakeTts(delay=0.01)) as h:
        h.recognition.say("hola")
        await h.wait_marks(1)
        h.echo_marks()  # the first sentence was heard
        h.audio(tone(400))
        await h.wait(lambda: "barge_in" in h.recorded.kinds(), what="barge-in")
        barge_in = h.recorded.events[h.recorded.kinds().index("barge_in")]
        assert barge_in == BargeIn("speech", ("Primera frase.",),
                                   ("Segunda frase larga con muchas palabras.", "Tercera frase."))


async def test_reprompts_are_told() -> None:
    cfg = config(call={"no_input_seconds": 0.1}, prompts={"reprompt": "¿Sigue ahí?"})
    async with CallHarness(cfg) as h:
        await h.play_out(1)
        await h.play_out(2)
        await h.wait(lambda: h.control.calls, what="transfer")
        assert h.recorded.events == [Prompt("reprompt", "¿Sigue ahí?")] * 2


async def test_bot_failure_and_the_apology_are_told() -> None:
    bot = FakeBot(failure=BotError("Rasa timed out"))
    async with CallHarness(config(prompts={"apology": "Disculpe."}), bot=bot) as h:
        h.recognition.say("hola")
        await h.wait_marks(1)
        assert h.recorded.events == [CallerInput("hola", "speech"), BotFailed("Rasa timed out"),
                                     Prompt("apology", "Disculpe.")]


async def test_a_hang_up_without_text_tells_the_goodbye() -> None:
    bot = FakeBot(reply=lambda text: [BotMessage(custom={"action": "hangup"})])
    async with CallHarness(config(prompts={"goodbye": "Adiós."}), bot=bot) as h:
        h.recognition.say("nada más")
        await h.wait(lambda: "turn_latency" in h.recorded.kinds(), what="the turn's latency")
        assert h.recorded.kinds() == ["caller_input", "bot_reply", "prompt", "turn_latency"]
        assert h.recorded.events[2] == Prompt("goodbye", "Adiós.")


async def test_frames_alone_tell_nothing() -> None:
    """Listening to the caller (frames, VAD, speech that is not recognized) emits no event."""
    async with CallHarness() as h:
        h.silence(1000)
        h.audio(tone(500))
        h.silence(1000)
        await asyncio.sleep(0.05)
        assert h.recorded.events == []
        assert h.session.closed is False
