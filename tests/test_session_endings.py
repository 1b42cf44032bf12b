"""CallSession endings and failures: transfer, hang-up, engine and bot errors, cleanup."""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import REGISTRY

from streaming.ports import BotError, BotMessage
from streaming.session import Phase
from tests.support.call_harness import (
    CallHarness,
    FakeBot,
    FakeControl,
    FakeTts,
    ScriptedStt,
    config,
)
from tests.support.caller_audio import tone


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def only_this_task() -> bool:
    return asyncio.all_tasks() == {asyncio.current_task()}


def replying(*messages: BotMessage) -> FakeBot:
    return FakeBot(reply=lambda text: list(messages))


async def test_transfer_waits_for_the_sentence_to_be_heard() -> None:
    ended = metric("gateway_stream_calls_ended_total", how="transfer")
    bot = replying(BotMessage(text="Le paso con un ejecutivo."),
                   BotMessage(custom={"action": "transfer", "number": "+34911234567"}))
    async with CallHarness(bot=bot) as h:
        h.recognition.say("quiero un agente")
        await h.wait_marks(1)
        h.audio(tone(600))  # the caller talks over it: a transfer reply is not interruptible
        await asyncio.sleep(0.05)
        assert h.events("clear") == [] and h.control.calls == []
        h.echo_marks()
        await h.wait(lambda: h.control.calls, what="transfer")
        assert h.control.calls == [("transfer", h.twilio.call_sid, "+34911234567")]
        assert h.session.phase is Phase.ENDING
        # Twilio normally stops the stream now; if it does not, the session asks to close
        await asyncio.wait_for(h.session.finished.wait(), 2)
        assert metric("gateway_stream_calls_ended_total", how="transfer") == ended + 1
        h.deliver(h.twilio.dtmf("1"))  # input after the end changes nothing
        h.recognition.say("hola")
        await asyncio.sleep(0.02)
        assert len(h.bot.requests) == 1


async def test_hang_up_never_cuts_off_the_goodbye() -> None:
    bot = replying(BotMessage(text="Su tarjeta está bloqueada. Gracias por llamar, adiós."),
                   BotMessage(custom={"action": "hangup"}))
    async with CallHarness(bot=bot) as h:
        h.recognition.say("bloquear")
        await h.wait_marks(2)
        h.deliver(h.twilio.mark(h.marks()[0]))
        await asyncio.sleep(0.05)
        assert h.control.calls == [], "the goodbye is still playing"
        h.deliver(h.twilio.mark(h.marks()[1]))
        await h.wait(lambda: h.control.calls, what="hang-up")
        assert h.control.calls == [("hang_up", h.twilio.call_sid)]


async def test_hang_up_without_text_says_goodbye_and_transfer_says_nothing_itself() -> None:
    cfg = config(prompts={"goodbye": "Adiós y gracias."})
    async with CallHarness(cfg, bot=replying(BotMessage(custom={"action": "hangup"}))) as h:
        h.recognition.say("ya está")
        await h.play_out(1)
        await h.wait(lambda: h.control.calls, what="hang-up")
        assert h.tts.texts == ["Adiós y gracias."]
    # the control's transfer TwiML says the transfer prompt: the session adds nothing
    async with CallHarness(cfg, bot=replying(BotMessage(custom={"action": "transfer"}))) as h:
        h.recognition.say("un agente")
        await h.wait(lambda: h.control.calls, what="transfer")
        assert h.tts.texts == [] and h.sent == []


async def test_hang_up_even_when_marks_never_come_back() -> None:
    timeouts = metric("gateway_stream_mark_timeouts_total")
    bot = replying(BotMessage(text="Adiós."), BotMessage(custom={"action": "hangup"}))
    async with CallHarness(config(mark_timeout_seconds=0.1), bot=bot) as h:
        h.recognition.say("adiós")
        await h.wait_marks(1)
        await h.wait(lambda: h.control.calls, what="hang-up after the mark timeout")
        assert h.control.calls == [("hang_up", h.twilio.call_sid)]
        assert metric("gateway_stream_mark_timeouts_total") == timeouts + 1


async def test_bot_error_apologizes_then_transfers() -> None:
    errors = metric("gateway_stream_bot_errors_total")
    bot = FakeBot(failure=BotError("Rasa timed out"))
    async with CallHarness(config(prompts={"apology": "Disculpe las molestias."}), bot=bot) as h:
        h.recognition.say("hola")
        await h.wait_marks(1)
        assert h.tts.texts == ["Disculpe las molestias."]
        h.audio(tone(600))  # the apology is not interruptible
        await asyncio.sleep(0.03)
        assert h.events("clear") == [] and h.control.calls == []
        h.echo_marks()
        await h.wait(lambda: h.control.calls, what="transfer")
        assert h.control.calls == [("transfer", h.twilio.call_sid, "")]
        assert metric("gateway_stream_bot_errors_total") == errors + 1


async def test_recognizer_failure_moves_the_call_to_gather() -> None:
    degraded = metric("gateway_stream_degradations_total", reason="stt")
    async with CallHarness(bot=FakeBot(delay=5)) as h:
        h.recognition.say("hola")
        await h.wait(lambda: h.bot.requests, what="bot busy")
        h.recognition.fail()  # while the worker waits for the bot: it is cancelled
        await h.wait(lambda: h.control.calls, what="redirect")
        assert h.control.calls == [("redirect_to_gather", h.twilio.call_sid)]
        assert metric("gateway_stream_degradations_total", reason="stt") == degraded + 1
        await asyncio.wait_for(h.session.finished.wait(), 2)
    assert only_this_task()


async def test_recognizer_feed_failure_moves_the_call_to_gather(caplog) -> None:
    degraded = metric("gateway_stream_degradations_total", reason="stt")
    errors = metric("gateway_stream_stt_feed_errors_total")
    async with CallHarness() as h:
        h.audio(tone(200))
        await h.wait(lambda: h.recognition.fed, what="audio fed")
        h.recognition.feed_error = ValueError("engine bug")
        with caplog.at_level(logging.ERROR, logger="streaming.session"):
            h.audio(tone(1000))  # the frame path survives: no exception reaches the receive loop
            await h.wait(lambda: h.control.calls, what="redirect")
        assert h.control.calls == [("redirect_to_gather", h.twilio.call_sid)]
        assert metric("gateway_stream_degradations_total", reason="stt") == degraded + 1
        assert metric("gateway_stream_stt_feed_errors_total") == errors + 1
        failed = [r for r in caplog.records if getattr(r, "event", "") == "stt_feed_failed"]
        assert len(failed) == 1 and failed[0].call_sid == h.twilio.call_sid
        await asyncio.wait_for(h.session.finished.wait(), 2)
    assert h.recognition.closed
    assert only_this_task()


async def test_recognizer_that_cannot_open_moves_the_call_to_gather() -> None:
    async with CallHarness(config(greeting="Hola."), stt=ScriptedStt(fail_open=True)) as h:
        await h.wait(lambda: h.control.calls, what="redirect")
        assert h.control.calls == [("redirect_to_gather", h.twilio.call_sid)]
        assert h.sent == []
        h.audio(tone(100))  # frames after the hand-over are ignored, nothing breaks
    assert only_this_task()


async def test_synthesis_failure_moves_the_call_to_gather() -> None:
    degraded = metric("gateway_stream_degradations_total", reason="tts")
    async with CallHarness(tts=FakeTts(fail_on="roto")) as h:
        h.recognition.say("roto")  # the default bot echoes it, the TTS cannot say it
        await h.wait(lambda: h.control.calls, what="redirect")
        assert h.control.calls == [("redirect_to_gather", h.twilio.call_sid)]
        assert metric("gateway_stream_degradations_total", reason="tts") == degraded + 1


async def test_call_control_error_ends_the_session_cleanly(caplog) -> None:
    caplog.set_level(logging.ERROR, logger="streaming.session")
    errors = metric("gateway_stream_call_control_errors_total", action="hang_up")
    bot = replying(BotMessage(custom={"action": "hangup"}))
    async with CallHarness(config(end_grace_seconds=30), bot=bot,
                           control=FakeControl(fail=True)) as h:
        h.recognition.say("adiós")
        await h.play_out(1)
        await asyncio.wait_for(h.session.finished.wait(), 2)  # at once, not after the grace
        assert metric("gateway_stream_call_control_errors_total", action="hang_up") == errors + 1
        assert [r.event for r in caplog.records] == ["call_control_failed"]
    assert h.session.closed and only_this_task()


async def test_aclose_cancels_everything_mid_reply_and_is_idempotent() -> None:
    tts = FakeTts(delay=0.02)
    h = CallHarness(config(greeting="Una bienvenida muy larga con muchas palabras."), tts=tts)
    await h.session.start()
    h.audio(tone(60))
    h.deliver(h.twilio.dtmf("5"))  # a pending inter-digit timer
    await h.wait(lambda: h.events("media"), what="greeting started")
    await asyncio.gather(h.session.aclose(), h.session.aclose())
    await h.session.aclose()
    assert h.session.closed and h.session.finished.is_set()
    assert tts.unfinished == 1, "the synthesizer's generator was closed"
    assert h.recognition.closed
    assert only_this_task()
    sent = len(h.sent)
    h.audio(tone(100))  # late frames and events after close are ignored
    h.session.on_dtmf("1")
    h.session.on_mark("g0-s1")
    await asyncio.sleep(0.3)
    assert len(h.sent) == sent and h.bot.requests == []


async def test_stop_ignores_what_follows() -> None:
    async with CallHarness(config(call={"no_input_seconds": 0.05})) as h:
        h.silence(100)
        await h.wait(lambda: h.recognition.fed, what="audio fed")
        h.deliver(h.twilio.stop())
        fed = len(h.recognition.fed)
        h.session.on_media(b"\xff" * 800)
        await asyncio.sleep(0.15)
        assert len(h.recognition.fed) == fed
        assert h.tts.texts == [], "no reprompt after the stream stopped"
    assert only_this_task()


async def test_a_broken_socket_finishes_the_session() -> None:
    class BrokenSocket(CallHarness):
        async def _send(self, text: str) -> None:
            raise ConnectionResetError("the websocket died under the session")

    h = BrokenSocket(config(greeting="Hola."))
    await h.session.start()
    await asyncio.wait_for(h.session.finished.wait(), 2)
    await h.session.aclose()
    assert only_this_task()


async def test_the_longest_call_says_goodbye_then_hangs_up() -> None:
    reached = metric("gateway_stream_max_duration_total")
    cfg = config(call={"max_duration_seconds": 0.3}, prompts={"goodbye": "Adiós y gracias."})
    async with CallHarness(cfg) as h:
        await h.wait(lambda: h.tts.texts, what="the goodbye")
        assert h.tts.texts == ["Adiós y gracias."] and h.bot.requests == []
        h.recognition.say("espere")  # the goodbye is not interrupted, nor answered
        h.audio(tone(600))
        await asyncio.sleep(0.05)
        assert h.events("clear") == [] and h.control.calls == []
        h.echo_marks()
        await h.wait(lambda: h.control.calls, what="hang-up")
        assert h.control.calls == [("hang_up", h.twilio.call_sid)]
        assert h.bot.requests == []
        assert metric("gateway_stream_max_duration_total") == reached + 1


async def test_the_longest_call_lets_the_reply_playing_finish_first() -> None:
    cfg = config(call={"max_duration_seconds": 0.4}, prompts={"goodbye": "Adiós."})
    async with CallHarness(cfg, bot=replying(BotMessage(text="Una respuesta larga."))) as h:
        h.recognition.say("hola")
        await h.wait_marks(1)
        await asyncio.sleep(0.5)  # time is up while the reply plays
        assert h.tts.texts == ["Una respuesta larga."]
        h.echo_marks()
        await h.wait(lambda: h.tts.texts[1:] == ["Adiós."], what="the goodbye after the reply")
        h.echo_marks()
        await h.wait(lambda: h.control.calls, what="hang-up")


async def test_a_resumed_stream_has_only_what_is_left_of_the_call() -> None:
    """The call lasted 100 s before this stream: of a 100.2 s limit, 0.2 s are left."""
    cfg = config(call={"max_duration_seconds": 100.2}, elapsed_seconds=100.0, resumed=True,
                 prompts={"goodbye": "Adiós.", "resume": "Se cortó."})
    async with CallHarness(cfg) as h:
        await h.play_out(1)
        await h.wait(lambda: len(h.tts.texts) == 2, what="the goodbye")
        assert h.tts.texts == ["Se cortó.", "Adiós."]
        h.echo_marks()
        await h.wait(lambda: h.control.calls, what="hang-up")
