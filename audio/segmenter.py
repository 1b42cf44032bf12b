"""Utterances cut out of a mu-law stream by voice activity, for recognizers that are not streaming.

Built on `EnergyVad`, so it costs what the session's own VAD costs per 20 ms frame. An utterance
begins `pre_roll_ms` before the onset (the VAD needs `start_ms` of loud frames to call it speech,
and the first syllable is often quieter than the threshold), ends once `end_silence_ms` of quiet
follow the last loud frame (keeping `tail_ms` of that quiet), and is cut by force at
`max_utterance_ms`: at the first quiet frame in its last second, else right at the limit.
Bursts with less than `min_speech_ms` of speech (a click, a cough, a fragment of echo) are dropped.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from audio.framing import BYTES_PER_MS, FRAME_BYTES
from audio.vad import EnergyVad, VadEvent


@dataclass(frozen=True, slots=True)
class Utterance:
    """Mu-law audio of one utterance. Times are milliseconds since the stream's first byte."""

    audio: bytes
    start_ms: int  # where `audio` begins (pre-roll included)
    speech_end_ms: int  # end of the last loud frame: where the speaker stopped
    forced: bool  # cut at the length limit while the speaker went on


class UtteranceSegmenter:
    __slots__ = ("_vad", "_ring", "_speech", "_speech_start", "_fed", "_rest", "_tail_bytes",
                 "_max_bytes", "_soft_bytes", "_min_speech_ms")

    def __init__(self, *, threshold: int = 500, start_ms: int = 60, end_silence_ms: int = 400,
                 pre_roll_ms: int = 300, tail_ms: int = 200, max_utterance_ms: int = 15000,
                 min_speech_ms: int = 150) -> None:
        if max_utterance_ms < 2000:
            raise ValueError("max_utterance_ms must be at least 2000")
        self._vad = EnergyVad(threshold, start_ms, end_silence_ms)
        # Frames before the onset: the pre-roll plus the loud frames the VAD waits for.
        self._ring: deque[bytes] = deque(maxlen=(pre_roll_ms + start_ms) // 20)
        self._speech = bytearray()
        self._speech_start = 0  # stream byte where `_speech` begins
        self._fed = 0  # stream bytes processed, in whole frames
        self._rest = b""  # less than a frame, kept for the next push
        self._tail_bytes = tail_ms * BYTES_PER_MS
        self._max_bytes = max_utterance_ms * BYTES_PER_MS
        self._soft_bytes = self._max_bytes - 1000 * BYTES_PER_MS
        self._min_speech_ms = min_speech_ms

    @property
    def in_speech(self) -> bool:
        return self._vad.in_speech

    def push(self, mulaw: bytes) -> tuple[Utterance, ...]:
        """Feed audio of any length; the utterances it completed, usually none."""
        if self._rest:
            mulaw, self._rest = self._rest + mulaw, b""
        usable = len(mulaw) - len(mulaw) % FRAME_BYTES
        if usable < len(mulaw):
            self._rest = mulaw[usable:]
        done: tuple[Utterance, ...] = ()
        vad, ring, speech = self._vad, self._ring, self._speech
        for offset in range(0, usable, FRAME_BYTES):
            frame = mulaw[offset:offset + FRAME_BYTES]
            self._fed += FRAME_BYTES
            if not vad.in_speech:
                ring.append(frame)
                if vad.process(frame) is VadEvent.SPEECH_START:
                    self._speech_start = self._fed - FRAME_BYTES * len(ring)
                    speech.extend(b"".join(ring))
                    ring.clear()
                continue
            speech += frame
            speech_ms = vad.speech_ms
            if vad.process(frame) is VadEvent.SPEECH_END:
                cut = self._cut(speech_ms, vad.hangover_ms, forced=False)
            elif len(speech) >= self._max_bytes or (len(speech) >= self._soft_bytes
                                                      and vad.quiet_ms):
                cut = self._cut(vad.speech_ms, vad.quiet_ms, forced=True)
            else:
                continue
            if cut is not None:
                done += (cut,)
        return done

    def flush(self) -> Utterance | None:
        """The speech in progress, as if it had ended now (the stream is closing)."""
        if not self._vad.in_speech:
            return None
        utterance = self._cut(self._vad.speech_ms, self._vad.quiet_ms, forced=False)
        self._vad.reset()
        return utterance

    def _cut(self, speech_ms: int, quiet_ms: int, *, forced: bool) -> Utterance | None:
        """End the current utterance `quiet_ms` after its last loud frame."""
        speech, start = self._speech, self._speech_start
        loud_end = len(speech) - quiet_ms * BYTES_PER_MS
        audio = bytes(speech[:loud_end + self._tail_bytes])
        speech.clear()
        self._speech_start = self._fed
        if speech_ms < self._min_speech_ms or loud_end <= 0:  # too short, or only quiet is left
            return None
        return Utterance(audio, start // BYTES_PER_MS, (start + loud_end) // BYTES_PER_MS, forced)
