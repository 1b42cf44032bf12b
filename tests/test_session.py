"""CallSession conversation: greeting, turns, marks, barge-in, DTMF, no-input reprompts.

Driven with real Twilio messages through streaming.protocol; the engines, bot and call control
are the in-test doubles of tests/support/call_harness.py.
"""

from __future__ import annotations

import asyncio
import base64
import logging

import pytest
from prometheus_client import REGISTRY

from audio.framing import chunk_size
from streaming.ports import BotMessage
from streaming.playback import split_sentences
from streaming.session import Phase
from tests.support.call_harness import FAST, CallHarness, FakeBot, FakeTts, config
from tests.support.caller_audio import tone

SPEECH = tone(2000)  # loud enough for the energy VAD: "caller speech"


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_split_sentences() -> None:
    assert split_sentences("Hola. ¿Qué tal?  Bien!\nAdiós") == [
        "Hola.", "¿Qué tal?", "Bien!", "Adiós"]
    assert split_sentences("Son 3.5 euros.") == ["Son 3.5 euros."]
    assert split_sentences("  ") == []


async def test_greeting_is_spoken_in_outbound_chunks_with_a_mark_per_sentence() -> None:
    greeting = "Buenos días. ¿En qué puedo ayudarle?"
    async with CallHarness(config(greeting=greeting, call={"outbound_chunk_ms": 40})) as h:
        marks = await h.wait_marks(2)
        assert marks == ["g0-s1", "g0-s2"]
        assert h.tts.texts == ["Buenos días.", "¿En qué puedo ayudarle?"]
        # media of sentence 1, its mark, media of sentence 2, its mark
        kinds = [m["event"] for m in h.sent]
        first_mark = kinds.index("mark")
        assert set(kinds[:first_mark]) == {"media"} and kinds[-1] == "mark"
        assert all(m["streamSid"] == h.twilio.stream_sid for m in h.sent)
        payloads = [base64.b64decode(m["media"]["payload"]) for m in h.events("media")]
        assert {len(p) for p in payloads} == {chunk_size(40)}
        # every byte synthesized is sent, each sentence padded with silence to whole chunks
        expected = b""
        for sentence in h.tts.texts:
            audio = FakeTts.audio_for(sentence)
            expected += audio + b"\xff" * (-len(audio) % chunk_size(40))
        assert h.played_audio() == expected
        assert h.session.phase is Phase.SPEAKING
        h.echo_marks()
        await h.wait(lambda: h.session.phase is Phase.LISTENING, what="listening")


async def test_turn_sends_the_transcript_to_the_bot_and_speaks_the_reply() -> None:
    latency_before = metric("gateway_stream_turn_latency_seconds_count")
    turns_before = metric("gateway_stream_turns_total")
    bot = FakeBot(reply=lambda text: [BotMessage(text="Entendido. Su tarjeta está bloqueada.")])
    async with CallHarness(bot=bot) as h:
        h.recognition.say("quiero bloquear mi tarjeta", final=False)  # interim: ignored
        h.recognition.say("  quiero bloquear mi tarjeta ")
        marks = await h.wait_marks(2)
        assert bot.requests == [(h.twilio.call_sid, "quiero bloquear mi tarjeta", {
            "from": h.twilio.from_number, "to": h.twilio.to_number,
            "call_sid": h.twilio.call_sid, "channel": "twilio_voice_stream", "input": "speech"})]
        assert h.tts.texts == ["Entendido.", "Su tarjeta está bloqueada."]
        assert marks == ["g0-s1", "g0-s2"]
        await h.wait(lambda: metric("gateway_stream_turn_latency_seconds_count")
                     == latency_before + 1, what="turn latency observed")
        assert metric("gateway_stream_turns_total") == turns_before + 1
        h.echo_marks()
        await h.wait(lambda: h.session.phase is Phase.LISTENING, what="listening")


async def test_audio_reaches_the_recognizer_in_100ms_batches() -> None:
    async with CallHarness() as h:
        h.silence(240)  # 12 frames: two 800-byte batches, 2 frames pending
        await h.wait(lambda: len(h.recognition.fed) == 2, what="two batches")
        assert [len(b) for b in h.recognition.fed] == [800, 800]
        h.audio(tone(200))  # speech; then its end (hangover) flushes the pending tail at once
        h.silence(FAST.endpoint_silence_ms)
        await h.wait(lambda: sum(map(len, h.recognition.fed)) == 8 * (240 + 200 + 600),
                     what="all audio fed")
        assert all(len(b) >= 800 for b in h.recognition.fed[:-1])


async def test_the_recognizer_is_told_once_per_utterance_when_the_caller_stopped() -> None:
    async with CallHarness() as h:
        h.audio(tone(500))
        h.silence(FAST.endpoint_silence_ms - 20)
        assert h.recognition.speech_ends == []  # a pause within the VAD's hangover
        h.silence(20)
        assert h.recognition.speech_ends == [500 + FAST.endpoint_silence_ms]  # all audio fed
        h.silence(2000)
        h.audio(tone(300))
        h.silence(FAST.endpoint_silence_ms)
        assert h.recognition.speech_ends == [1100, 1100 + 2000 + 300 + FAST.endpoint_silence_ms]


async def test_the_recognizer_is_told_once_per_utterance_when_the_caller_began() -> None:
    """So an engine drops a cut it still waits to make (streaming/stt/google_stream.py)."""
    async with CallHarness() as h:
        h.audio(tone(500))
        h.silence(FAST.endpoint_silence_ms)
        h.silence(2000)
        h.audio(tone(300))
        h.silence(FAST.endpoint_silence_ms)
        assert h.recognition.speech_starts == [0, 1]  # each before its own end


async def test_barge_in_clears_after_the_minimum_speech_and_stops_synthesis(caplog) -> None:
    caplog.set_level(logging.INFO, logger="streaming.session")
    barge_ins = metric("gateway_stream_barge_ins_total")
    reply = "Primera frase. Segunda frase larga con muchas palabras. Tercera frase. Cuarta frase."
    bot = FakeBot(reply=lambda text: [BotMessage(text=reply)])
    tts = FakeTts(delay=0.01)
    async with CallHarness(config(call={"barge_in_min_speech_ms": 240}), bot=bot, tts=tts) as h:
        h.recognition.say("hola")
        await h.wait_marks(1)
        h.echo_marks()  # the caller heard the first sentence
        speech = tone(20 * 12)
        h.audio(speech[:160 * 11])  # 220 ms: not yet
        await asyncio.sleep(0.03)
        assert h.events("clear") == []
        h.audio(speech[160 * 11:])  # the 12th frame: 240 ms since onset
        await h.wait(lambda: h.events("clear"), what="clear")
        assert h.session.phase is Phase.LISTENING
        cleared_at = h.sent.index(h.events("clear")[0])
        await asyncio.sleep(0.1)  # synthesis would have produced more by now
        assert h.sent[cleared_at + 1:] == []
        assert tts.unfinished == 1
        assert "Tercera frase." not in tts.texts and "Cuarta frase." not in tts.texts
        assert metric("gateway_stream_barge_ins_total") == barge_ins + 1
        record = next(r for r in caplog.records if getattr(r, "event", "") == "barge_in")
        assert record.played == ["Primera frase."]
        assert record.interrupted[0] == "Segunda frase larga con muchas palabras."
        # Twilio echoes the marks pending at the clear: they prove nothing and change nothing
        h.echo_marks()
        assert h.session.phase is Phase.LISTENING
        # the interruption is the next turn
        h.recognition.say("quiero hablar con alguien")
        await h.wait(lambda: len(bot.requests) == 2, what="second turn")
        marks = await h.wait_marks(len(h.marks()) + 1)
        assert marks[-1].startswith("g1-"), "a new generation after the clear"


async def test_the_request_still_in_the_vad_hangover_does_not_interrupt_its_reply() -> None:
    cfg = config(call={"barge_in_min_speech_ms": 240}, endpoint_silence_ms=1500)
    async with CallHarness(cfg) as h:
        h.audio(tone(600))  # the request: 600 ms of speech, then the hangover begins
        h.silence(100)
        h.recognition.say("bloquear")  # recognized before the VAD calls the speech over
        await h.wait_marks(1)
        h.silence(400)
        await asyncio.sleep(0.02)
        assert h.events("clear") == []
        h.audio(tone(260))  # new speech during the reply does interrupt it
        await h.wait(lambda: h.events("clear"), what="clear")


async def test_short_speech_and_echo_do_not_interrupt() -> None:
    bot = FakeBot(reply=lambda text: [BotMessage(text="Una respuesta bastante larga. Otra más.")])
    async with CallHarness(config(call={"barge_in_min_speech_ms": 240}), bot=bot) as h:
        h.recognition.say("hola")
        await h.wait_marks(2)
        h.audio(tone(200))  # 200 ms burst (a cough, echo on a speakerphone)
        h.silence(800)
        h.recognition.say("eco de la respuesta")  # recognized while we speak: not a turn
        await asyncio.sleep(0.05)
        assert h.events("clear") == []
        assert len(bot.requests) == 1
        assert h.session.phase is Phase.SPEAKING


async def test_a_burst_over_a_reply_is_no_turn_when_its_transcript_comes_after_the_reply(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A recognizer may finalize a short burst one decode later, once the reply is over: the
    transcript's audio times say it was spoken over the reply."""
    caplog.set_level(logging.INFO, logger="streaming.session")
    bot = FakeBot(reply=lambda text: [BotMessage(text="Su tarjeta está bloqueada.")])
    async with CallHarness(config(call={"barge_in_min_speech_ms": 240}), bot=bot) as h:
        h.recognition.say("bloquear")
        await h.wait_marks(1)  # the reply plays from the caller's audio position 0
        h.silence(200)
        h.audio(tone(200))  # 200-400 ms: below the barge-in minimum
        h.silence(800)
        h.echo_marks()  # the reply played out
        await h.wait(lambda: h.session.phase is Phase.LISTENING, what="listening")
        h.recognition.say("eco", start_ms=200, end_ms=400)  # the burst's late transcript
        h.audio(tone(500))  # 1000-1500 ms: the caller speaks once the reply is over
        h.silence(800)
        h.recognition.say("otra cosa", start_ms=1000, end_ms=1500)
        await h.wait(lambda: len(bot.requests) == 2, what="the second turn")
        assert [message for _, message, _ in bot.requests] == ["bloquear", "otra cosa"]
        assert [r.event for r in caplog.records].count("transcript_ignored") == 1


async def test_speech_that_interrupted_a_reply_is_a_turn_when_its_transcript_comes_after() -> None:
    bot = FakeBot(reply=lambda text: [BotMessage(text="Una respuesta bastante larga. Otra más.")])
    async with CallHarness(config(call={"barge_in_min_speech_ms": 240}), bot=bot) as h:
        h.recognition.say("hola")
        await h.wait_marks(1)
        h.audio(tone(300))  # interrupts at 240 ms of speech, goes on to 300
        await h.wait(lambda: h.events("clear"), what="the barge-in")
        h.silence(800)
        h.recognition.say("espere", start_ms=0, end_ms=300)
        await h.wait(lambda: len(bot.requests) == 2, what="the interruption's turn")


async def test_synthesis_stays_two_sentences_ahead_of_what_was_heard() -> None:
    bot = FakeBot(reply=lambda text: [BotMessage(text="Uno. Dos. Tres. Cuatro.")])
    async with CallHarness(config(sentences_ahead=2), bot=bot) as h:
        h.recognition.say("cuenta")
        assert await h.wait_marks(2) == ["g0-s1", "g0-s2"]
        await asyncio.sleep(0.05)
        assert h.tts.texts == ["Uno.", "Dos."], "the caller has not heard anything yet"
        h.deliver(h.twilio.mark("g0-s1"))
        assert await h.wait_marks(3) == ["g0-s1", "g0-s2", "g0-s3"]
        h.deliver(h.twilio.mark("g0-s2"))
        await h.wait_marks(4)
        assert h.tts.texts == ["Uno.", "Dos.", "Tres.", "Cuatro."]


async def test_without_marks_playback_goes_on_at_the_audio_pace() -> None:
    timeouts = metric("gateway_stream_mark_timeouts_total")
    bot = FakeBot(reply=lambda text: [BotMessage(text="Uno. Dos. Tres.")])
    async with CallHarness(config(mark_timeout_seconds=0.05), bot=bot) as h:
        h.recognition.say("cuenta")
        await h.wait_marks(3)  # no echo ever comes: each sentence waits for its audio's length
        await h.wait(lambda: h.session.phase is Phase.LISTENING, what="reply over")
        assert metric("gateway_stream_mark_timeouts_total") == timeouts + 1  # once per reply


async def test_marks_track_what_was_heard_before_the_reply_ends() -> None:
    bot = FakeBot(reply=lambda text: [BotMessage(text="Uno. Dos. Tres.")])
    async with CallHarness(bot=bot) as h:
        h.recognition.say("cuenta")
        await h.wait_marks(2)
        h.deliver(h.twilio.mark("g0-s1"))
        await h.wait_marks(3)
        h.deliver(h.twilio.mark("g0-s2"))
        h.deliver(h.twilio.mark("unknown-mark"))
        await asyncio.sleep(0.02)
        assert h.session.phase is Phase.SPEAKING  # the last sentence is still playing
        h.deliver(h.twilio.mark("g0-s3"))
        h.audio(tone(400))  # speech once everything was heard interrupts nothing
        await h.wait(lambda: h.session.phase is Phase.LISTENING, what="listening")
        await asyncio.sleep(0.02)
        assert h.events("clear") == []


async def test_dtmf_digits_until_the_finish_key() -> None:
    async with CallHarness() as h:
        for digit in "1234#":
            h.deliver(h.twilio.dtmf(digit))
        await h.wait(lambda: h.bot.requests, what="bot request")
        sender, message, metadata = h.bot.requests[0]
        assert (message, metadata["input"]) == ("1234", "dtmf")
        assert metadata["channel"] == "twilio_voice_stream"


async def test_dtmf_inter_digit_timeout() -> None:
    async with CallHarness(config(call={"dtmf_timeout_seconds": 0.1})) as h:
        h.deliver(h.twilio.dtmf("4"))
        h.deliver(h.twilio.dtmf("5"))
        await asyncio.sleep(0.05)
        assert h.bot.requests == []
        await h.wait(lambda: h.bot.requests, what="digits sent after the timeout")
        assert h.bot.requests[0][1] == "45"


async def test_collect_digits_action_sets_the_next_turn() -> None:
    def reply(text: str) -> list[BotMessage]:
        if text == "bloquear":
            return [BotMessage(text="Marque los cuatro dígitos."),
                    BotMessage(custom={"action": "collect_dtmf", "max_digits": 4,
                                       "finish_on_key": "*", "timeout_seconds": 5})]
        return [BotMessage(text="Gracias.")]

    cfg = config(call={"dtmf_timeout_seconds": 0.1})
    async with CallHarness(cfg, bot=FakeBot(reply=reply)) as h:
        h.recognition.say("bloquear")
        await h.play_out(1)
        for digit in "9876":  # the fourth digit completes the input, no finish key needed
            h.deliver(h.twilio.dtmf(digit))
        await h.wait(lambda: len(h.bot.requests) == 2, what="digits")
        assert h.bot.requests[1][1] == "9876"
        await h.play_out(2)
        # back to the defaults: "#" finishes, and "*" is an ordinary key again
        for digit in "1*2#":
            h.deliver(h.twilio.dtmf(digit))
        await h.wait(lambda: len(h.bot.requests) == 3, what="default finish key")
        assert h.bot.requests[2][1] == "1*2"


async def test_dtmf_during_the_greeting_interrupts_it() -> None:
    async with CallHarness(config(greeting="Bienvenido al servicio. Marque una opción.")) as h:
        await h.wait_marks(1)
        h.deliver(h.twilio.dtmf("1"))
        await h.wait(lambda: h.events("clear"), what="clear")
        h.deliver(h.twilio.dtmf("#"))
        await h.wait(lambda: h.bot.requests, what="digits")
        assert h.bot.requests[0][1] == "1"


async def test_no_input_reprompts_then_transfers() -> None:
    no_input = metric("gateway_stream_no_input_total")
    cfg = config(greeting="Hola.", call={"no_input_seconds": 0.1, "max_reprompts": 2},
                 prompts={"reprompt": "¿Sigue ahí?"})
    async with CallHarness(cfg) as h:
        await h.wait_marks(1)
        await asyncio.sleep(0.25)
        assert h.tts.texts == ["Hola."], "no reprompt while the greeting is still playing"
        h.echo_marks()
        await h.play_out(2)  # first reprompt
        await h.play_out(3)  # second reprompt
        await h.wait(lambda: h.control.calls, what="transfer")  # its TwiML says the prompt
        assert h.tts.texts == ["Hola.", "¿Sigue ahí?", "¿Sigue ahí?"]
        assert h.control.calls == [("transfer", h.twilio.call_sid, "")]
        assert metric("gateway_stream_no_input_total") == no_input + 3


async def test_speech_holds_off_the_no_input_timer_and_resets_reprompts() -> None:
    cfg = config(call={"no_input_seconds": 0.15, "max_reprompts": 1}, endpoint_silence_ms=200,
                 prompts={"reprompt": "¿Sigue ahí?"})
    async with CallHarness(cfg) as h:
        # the caller talks for longer than the no-input timeout: no reprompt meanwhile
        for _ in range(20):
            h.audio(tone(20))
            await asyncio.sleep(0.01)
        assert h.tts.texts == []
        h.silence(200)  # speech ends; nothing recognized: the timer starts again
        await h.play_out(1)
        assert h.tts.texts == ["¿Sigue ahí?"]
        h.recognition.say("perdón, sí")  # an answer resets the reprompt count
        await h.play_out(2)
        await h.play_out(3)  # reprompt again instead of a transfer
        assert h.tts.texts[-1] == "¿Sigue ahí?", (h.tts.texts, h.bot.requests)
        assert h.control.calls == []


async def test_digits_being_typed_hold_off_the_no_input_timer() -> None:
    cfg = config(call={"no_input_seconds": 0.05, "dtmf_timeout_seconds": 0.3})
    async with CallHarness(cfg) as h:
        h.deliver(h.twilio.dtmf("7"))
        await h.wait(lambda: h.bot.requests, what="digits")
        assert h.tts.texts[0] != FAST.prompts.reprompt


@pytest.mark.parametrize("chunk_ms", [20, 60])
async def test_outbound_chunk_size_follows_the_config(chunk_ms: int) -> None:
    cfg = config(greeting="Hola a todos.", call={"outbound_chunk_ms": chunk_ms})
    async with CallHarness(cfg) as h:
        await h.wait_marks(1)
        sizes = {len(base64.b64decode(m["media"]["payload"])) for m in h.events("media")}
        assert sizes == {chunk_size(chunk_ms)}
