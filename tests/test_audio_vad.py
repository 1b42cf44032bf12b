"""audio/vad.py: onset after start_ms of loud frames, end after the hangover, speech duration."""

from __future__ import annotations

from audio.vad import EnergyVad, VadEvent
from tests.support.caller_audio import SILENT_FRAME, frames, tone

LOUD = frames(tone(20))[0]
QUIET = frames(tone(20, amplitude=200))[0]  # below the default threshold of 500


def run(vad: EnergyVad, sequence: list[bytes]) -> list[tuple[int, VadEvent]]:
    return [(i, e) for i, frame in enumerate(sequence) if (e := vad.process(frame)) is not None]


def test_speech_starts_after_start_ms_and_ends_after_hangover() -> None:
    vad = EnergyVad(threshold=500, start_ms=60, hangover_ms=200)
    sequence = [SILENT_FRAME] * 5 + [LOUD] * 10 + [SILENT_FRAME] * 15
    events = run(vad, sequence)
    # third loud frame (index 7) completes 60 ms; tenth silent frame (index 24) 200 ms of quiet
    assert events == [(7, VadEvent.SPEECH_START), (24, VadEvent.SPEECH_END)]
    assert not vad.in_speech and vad.speech_ms == 0


def test_short_bursts_and_quiet_noise_are_not_speech() -> None:
    vad = EnergyVad(threshold=500, start_ms=60, hangover_ms=200)
    sequence = ([LOUD, LOUD, SILENT_FRAME] * 10) + [QUIET] * 50
    assert run(vad, sequence) == []
    assert not vad.in_speech


def test_short_pauses_inside_speech_do_not_end_it() -> None:
    vad = EnergyVad(threshold=500, start_ms=40, hangover_ms=200)
    sequence = ([LOUD] * 5 + [SILENT_FRAME] * 5) * 4
    assert run(vad, sequence) == [(1, VadEvent.SPEECH_START)]
    assert vad.in_speech


def test_speech_ms_counts_from_the_onset() -> None:
    vad = EnergyVad(threshold=500, start_ms=60, hangover_ms=600)
    for _ in range(3):
        vad.process(LOUD)
    assert vad.in_speech and vad.speech_ms == 60
    for frame in [SILENT_FRAME, LOUD, LOUD]:
        vad.process(frame)
    assert vad.speech_ms == 120
    for _ in range(10):  # the quiet tail of an utterance is not speech
        vad.process(SILENT_FRAME)
    assert vad.in_speech and vad.speech_ms == 120
    vad.process(LOUD)
    assert vad.speech_ms == 340
    vad.reset()
    assert not vad.in_speech and vad.speech_ms == 0


def test_frame_duration_comes_from_its_length() -> None:
    vad = EnergyVad(threshold=500, start_ms=60, hangover_ms=600)
    assert vad.process(tone(60)) is VadEvent.SPEECH_START  # one 60 ms frame
    assert vad.speech_ms == 60


def test_threshold() -> None:
    assert EnergyVad(threshold=100, start_ms=20).process(QUIET) is VadEvent.SPEECH_START
    assert EnergyVad(threshold=500, start_ms=20).process(QUIET) is None
