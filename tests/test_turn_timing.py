"""Every turn's stages (streaming/turns.py): where the wait starts, what each stage covers, and
that each turn is reported once: the histogram, one `turn` log line, one TurnLatency.

Driven like tests/test_session.py. Times are lower bounds the test itself causes (a hangover, a
bot delay, a synthesis delay, a DTMF pause): never upper bounds, which a loaded machine breaks.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from prometheus_client import REGISTRY

from streaming.ports import BotMessage, TurnLatency
from tests.support.call_harness import FAST, CallHarness, FakeBot, FakeTts, config
from tests.support.caller_audio import tone

HANGOVER_MS = FAST.endpoint_silence_ms  # 600


def stage_count(stage: str) -> float:
    return REGISTRY.get_sample_value("gateway_turn_stage_seconds_count", {"stage": stage}) or 0.0


def turn_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", "") == "turn"]


def latencies(h: CallHarness) -> list[TurnLatency]:
    return [e for e in h.recorded.events if isinstance(e, TurnLatency)]


@pytest.fixture(autouse=True)
def _turn_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="streaming.session")


async def test_a_spoken_turn_starts_at_the_end_of_speech_and_measures_every_stage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    before = {stage: stage_count(stage) for stage in ("endpointing", "bot", "synthesis", "total")}
    bot = FakeBot(reply=lambda text: [BotMessage(text="Entendido.")], delay=0.1)
    async with CallHarness(bot=bot, tts=FakeTts(delay=0.05)) as h:
        h.audio(tone(500))
        h.silence(HANGOVER_MS)  # the VAD ends the speech: its last loud frame is 600 ms back
        await asyncio.sleep(0.1)
        h.recognition.say("quiero bloquear mi tarjeta")  # the final, 700 ms after the speech
        await h.wait(lambda: latencies(h), what="the turn's latency")
        [latency] = latencies(h)
        assert latency.endpointing_ms is not None and latency.endpointing_ms >= HANGOVER_MS + 100
        assert latency.bot_ms is not None and latency.bot_ms >= 100
        assert latency.synthesis_ms is not None and latency.synthesis_ms >= 50
        assert latency.total_ms >= latency.endpointing_ms + latency.bot_ms + latency.synthesis_ms
        [line] = turn_lines(caplog)
        assert line.call_sid == h.twilio.call_sid and line.input == "speech"
        assert (line.endpointing_ms, line.bot_ms, line.synthesis_ms, line.total_ms) == (
            latency.endpointing_ms, latency.bot_ms, latency.synthesis_ms, latency.total_ms)
    assert {stage: stage_count(stage) - before[stage] for stage in before} == {
        "endpointing": 1, "bot": 1, "synthesis": 1, "total": 1}


async def test_a_final_within_the_hangover_starts_the_turn_at_the_last_loud_frame() -> None:
    async with CallHarness() as h:
        h.audio(tone(500))
        h.silence(200)  # still speech for the VAD: a recognizer may finalize before its hangover
        h.recognition.say("hola")
        await h.wait(lambda: latencies(h), what="the turn's latency")
        [latency] = latencies(h)
        assert latency.endpointing_ms is not None and latency.endpointing_ms >= 200


async def test_a_final_without_speech_the_vad_saw_has_no_endpointing_stage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with CallHarness() as h:
        h.recognition.say("hola")
        await h.wait(lambda: latencies(h), what="the turn's latency")
        [latency] = latencies(h)
        assert latency.endpointing_ms is None and latency.total_ms >= 0
        assert turn_lines(caplog)[0].endpointing_ms is None


async def test_each_speech_end_starts_one_turn_only() -> None:
    """A second final without new speech does not reuse the first one's end of speech."""
    async with CallHarness() as h:
        h.audio(tone(500))
        h.silence(HANGOVER_MS)
        h.recognition.say("hola")
        await h.wait(lambda: latencies(h), what="the first turn")
        await h.play_out(1)
        h.recognition.say("otra vez")
        await h.wait(lambda: len(latencies(h)) == 2, what="the second turn")
        assert latencies(h)[1].endpointing_ms is None


async def test_a_transcript_after_the_next_speech_ended_is_timed_from_its_own_speech() -> None:
    """The caller speaks again before the first utterance's transcript comes: each transcript's
    wait starts where its own speech ended (matched by its end offset), not at the latest end."""
    async with CallHarness() as h:
        h.audio(tone(500))
        h.silence(HANGOVER_MS)  # the first speech ends: its last loud frame at 500 ms of audio
        await asyncio.sleep(0.3)
        h.audio(tone(500))
        h.silence(HANGOVER_MS)  # the second ends 300 ms (wall) later, at 1600 ms of audio
        h.recognition.say("primera", start_ms=0, end_ms=500)
        h.recognition.say("segunda", start_ms=1100, end_ms=1600)
        await h.wait(lambda: len(latencies(h)) == 2, timeout=10, what="both turns")
        first, second = latencies(h)
        assert first.endpointing_ms is not None and second.endpointing_ms is not None
        assert first.endpointing_ms >= HANGOVER_MS + 300
        # Heard within microseconds of each other: their waits differ by the ends' distance.
        assert first.endpointing_ms - second.endpointing_ms >= 250


async def test_transcripts_without_an_offset_take_the_oldest_speech_end() -> None:
    async with CallHarness() as h:
        h.audio(tone(500))
        h.silence(HANGOVER_MS)
        await asyncio.sleep(0.3)
        h.audio(tone(500))
        h.silence(HANGOVER_MS)
        h.recognition.say("primera")
        h.recognition.say("segunda")
        await h.wait(lambda: len(latencies(h)) == 2, timeout=10, what="both turns")
        first, second = latencies(h)
        assert first.endpointing_ms is not None and second.endpointing_ms is not None
        assert first.endpointing_ms >= HANGOVER_MS + 300
        assert first.endpointing_ms - second.endpointing_ms >= 250


async def test_a_speech_end_whose_transcript_never_came_is_superseded() -> None:
    """A burst the recognizer gave nothing for, then speech and its transcript: the burst's end
    is dropped with it, so a later transcript without new speech has no end of speech."""
    async with CallHarness() as h:
        h.audio(tone(500))
        h.silence(HANGOVER_MS)  # noise: no transcript for it
        h.audio(tone(500))
        h.silence(HANGOVER_MS)
        h.recognition.say("hola", start_ms=1100, end_ms=1600)
        await h.wait(lambda: latencies(h), what="the first turn")
        await h.play_out(1)
        h.recognition.say("otra vez")
        await h.wait(lambda: len(latencies(h)) == 2, what="the second turn")
        assert latencies(h)[0].endpointing_ms is not None
        assert latencies(h)[1].endpointing_ms is None


async def test_a_final_within_the_hangover_of_new_speech_is_timed_from_that_speech() -> None:
    """Earlier speech left an end with no transcript; the new speech's final comes within the
    VAD's hangover: it answers the new speech, whose end the VAD reports while the bot thinks,
    too late for any turn; the old end is superseded. Neither is left for a later final."""
    async with CallHarness(bot=FakeBot(delay=0.3)) as h:
        h.audio(tone(500))
        h.silence(HANGOVER_MS)  # no transcript for it
        await asyncio.sleep(0.3)
        h.audio(tone(500))
        h.silence(200)  # still speech for the VAD
        h.recognition.say("hola", start_ms=1100, end_ms=1600)
        await h.wait(lambda: h.bot.requests, what="the request")
        h.silence(HANGOVER_MS)  # the VAD ends the speech the final already answered
        await h.wait(lambda: latencies(h), what="the first turn")
        [latency] = latencies(h)
        assert latency.endpointing_ms is not None and latency.endpointing_ms >= 200
        await h.play_out(1)
        h.recognition.say("otra vez")
        await h.wait(lambda: len(latencies(h)) == 2, what="the second turn")
        assert latencies(h)[1].endpointing_ms is None


async def test_digits_ended_by_the_pause_start_the_turn_at_the_last_key() -> None:
    async with CallHarness(config(call={"dtmf_timeout_seconds": 0.3})) as h:
        for digit in "12":
            h.deliver(h.twilio.dtmf(digit))
        await h.wait(lambda: latencies(h), what="the turn's latency")
        [latency] = latencies(h)
        assert latency.endpointing_ms is not None and latency.endpointing_ms >= 300
        assert latency.total_ms >= latency.endpointing_ms


async def test_digits_ended_by_the_finish_key_wait_for_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with CallHarness() as h:
        for digit in "12#":
            h.deliver(h.twilio.dtmf(digit))
        await h.wait(lambda: latencies(h), what="the turn's latency")
        [latency] = latencies(h)
        assert latency.endpointing_ms is not None and latency.endpointing_ms < 50  # same call
        assert turn_lines(caplog)[0].input == "dtmf"


async def test_a_turn_without_reply_audio_is_logged_once_without_a_total(
    caplog: pytest.LogCaptureFixture,
) -> None:
    before = stage_count("total")
    bot = FakeBot(reply=lambda text: [BotMessage(custom={"action": "transfer"})])
    async with CallHarness(bot=bot) as h:
        h.recognition.say("un ejecutivo")
        await h.wait(lambda: h.control.calls, what="the transfer")
        [line] = turn_lines(caplog)
        assert line.total_ms is None and line.bot_ms is not None and line.synthesis_ms is None
        assert latencies(h) == []
    assert stage_count("total") == before


async def test_the_greeting_is_timed_from_the_stream_start() -> None:
    def count() -> float:
        return REGISTRY.get_sample_value("gateway_stream_greeting_seconds_count") or 0.0

    before = count()
    async with CallHarness(config(greeting="Hola.")) as h:
        await h.wait_marks(1)
        assert count() == before + 1
        assert latencies(h) == []  # the greeting is no turn
