"""audio/segmenter.py: utterances with their pre-roll, ended by silence, cut at the length limit."""

from __future__ import annotations

import pytest

from audio.segmenter import UtteranceSegmenter
from tests.support.caller_audio import SILENT_FRAME, tone

LOUD = tone(20)


def silence(ms: int) -> bytes:
    return SILENT_FRAME * (ms // 20)


def speech(ms: int) -> bytes:
    return tone(ms)


def test_an_utterance_keeps_its_pre_roll_and_ends_after_the_silence() -> None:
    seg = UtteranceSegmenter(end_silence_ms=400, pre_roll_ms=200, tail_ms=100)
    assert seg.push(silence(1000) + speech(800)) == ()
    assert seg.in_speech
    assert seg.push(silence(380)) == ()  # 19 quiet frames: not yet
    (utterance,) = seg.push(silence(20))
    assert utterance.start_ms == 800  # 200 ms before the first loud frame at 1000 ms
    assert utterance.speech_end_ms == 1800
    assert not utterance.forced
    # pre-roll + speech + the kept tail of the silence
    assert utterance.audio == silence(200) + speech(800) + silence(100)
    assert not seg.in_speech


def test_audio_may_come_in_any_sizes() -> None:
    whole = silence(500) + speech(600) + silence(600) + speech(400) + silence(600)
    seg = UtteranceSegmenter(end_silence_ms=500)
    pieces = [seg.push(whole[i:i + 333]) for i in range(0, len(whole), 333)]
    got = [u for found in pieces for u in found]
    reference = UtteranceSegmenter(end_silence_ms=500).push(whole)
    assert got == list(reference) and len(got) == 2
    # the second pre-roll starts where the first utterance ended, not inside it
    assert [u.start_ms for u in got] == [200, 1600]
    assert [u.speech_end_ms for u in got] == [1100, 2100]


def test_a_pause_shorter_than_the_end_silence_stays_inside_the_utterance() -> None:
    seg = UtteranceSegmenter(end_silence_ms=500, pre_roll_ms=0, tail_ms=0)
    (utterance,) = seg.push(speech(400) + silence(400) + speech(400) + silence(500))
    assert utterance.audio == speech(400) + silence(400) + speech(400)


def test_long_speech_is_cut_at_the_limit_and_goes_on() -> None:
    seg = UtteranceSegmenter(end_silence_ms=500, pre_roll_ms=0, tail_ms=0, max_utterance_ms=3000)
    cuts = seg.push(speech(7000))
    assert [(u.start_ms, len(u.audio) // 8, u.forced) for u in cuts] == [
        (0, 3000, True), (3000, 3000, True)]
    (last,) = seg.push(silence(500))
    assert (last.start_ms, last.speech_end_ms, last.forced) == (6000, 7000, False)


def test_a_forced_cut_prefers_a_pause_in_the_last_second() -> None:
    seg = UtteranceSegmenter(end_silence_ms=500, pre_roll_ms=0, tail_ms=0, max_utterance_ms=3000)
    (cut,) = seg.push(speech(2500) + silence(100) + speech(1000))
    assert cut.forced and cut.speech_end_ms == 2500 and len(cut.audio) == 2500 * 8
    (rest,) = seg.push(silence(500))
    assert rest.start_ms == 2520 and rest.speech_end_ms == 3600


def test_clicks_and_quiet_leftovers_make_no_utterance() -> None:
    seg = UtteranceSegmenter(end_silence_ms=300, min_speech_ms=150)
    assert seg.push((speech(100) + silence(400)) * 5) == ()  # 100 ms bursts
    seg = UtteranceSegmenter(end_silence_ms=500, pre_roll_ms=0, max_utterance_ms=3000)
    (cut,) = seg.push(speech(2500) + silence(600))  # the soft cut leaves nothing but quiet
    assert cut.forced
    assert seg.push(silence(1000)) == ()


def test_flush_returns_the_speech_in_progress() -> None:
    seg = UtteranceSegmenter(pre_roll_ms=0, tail_ms=0)
    assert seg.flush() is None
    seg.push(speech(600) + silence(100))
    utterance = seg.flush()
    assert utterance is not None and utterance.audio == speech(600)
    assert seg.flush() is None and not seg.in_speech


def test_the_limit_leaves_room_for_the_soft_cut() -> None:
    with pytest.raises(ValueError, match="max_utterance_ms"):
        UtteranceSegmenter(max_utterance_ms=1000)
