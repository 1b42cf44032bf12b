"""Energy voice-activity detection over 20 ms mu-law frames: two C calls and a few comparisons.

Cheap enough to run inline for every inbound frame on the event loop (ARCHITECTURE.md, the
per-frame path); a neural VAD per call would cost more than the whole frame path.
"""

from __future__ import annotations

import enum

from audio import mulaw
from audio.framing import SAMPLE_RATE


class VadEvent(enum.Enum):
    SPEECH_START = "speech_start"
    SPEECH_END = "speech_end"


class EnergyVad:
    """Speech starts after `start_ms` of consecutive frames louder than `threshold` (RMS of the
    16-bit signal) and ends after `hangover_ms` of quieter frames.

    `speech_ms` spans the current speech from its onset (the first loud frame of the run that
    started it) to its latest loud frame, 0 outside speech: barge-in compares it to its minimum,
    and the quiet tail of a short burst does not count. `quiet_ms` is the quiet since that frame.
    """

    __slots__ = ("threshold", "start_ms", "hangover_ms", "sample_rate",
                 "in_speech", "speech_ms", "quiet_ms", "_loud_ms", "_span_ms")

    def __init__(self, threshold: int = 500, start_ms: int = 60, hangover_ms: int = 600,
                 sample_rate: int = SAMPLE_RATE) -> None:
        self.threshold = threshold
        self.start_ms = start_ms
        self.hangover_ms = hangover_ms
        self.sample_rate = sample_rate
        self.in_speech = False
        self.speech_ms = 0
        self._loud_ms = 0
        self.quiet_ms = 0
        self._span_ms = 0

    def process(self, frame: bytes) -> VadEvent | None:
        """Feed one mu-law frame; return the event it causes, if any."""
        ms = len(frame) * 1000 // self.sample_rate
        loud = mulaw.level(frame) > self.threshold
        if not self.in_speech:
            if not loud:
                self._loud_ms = 0
                return None
            self._loud_ms += ms
            if self._loud_ms < self.start_ms:
                return None
            self.in_speech = True
            self.speech_ms = self._span_ms = self._loud_ms
            self.quiet_ms = 0
            return VadEvent.SPEECH_START
        self._span_ms += ms
        if loud:
            self.quiet_ms = 0
            self.speech_ms = self._span_ms
            return None
        self.quiet_ms += ms
        if self.quiet_ms < self.hangover_ms:
            return None
        self.reset()
        return VadEvent.SPEECH_END

    def reset(self) -> None:
        self.in_speech = False
        self.speech_ms = self._loud_ms = self.quiet_ms = self._span_ms = 0
