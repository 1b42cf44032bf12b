"""Test audio as Twilio carries the caller's voice: 8 kHz mu-law, in 20 ms frames.

Twilio's messages themselves come from streaming.twilio_side.TwilioSide, the product's own
model of Twilio's side of the protocol.
"""

from __future__ import annotations

import math

import numpy as np

from audio import mulaw
from audio.framing import FRAME_BYTES, SAMPLE_RATE

SILENT_FRAME = mulaw.silence(FRAME_BYTES)


def tone(ms: int, frequency: float = 440.0, amplitude: int = 8000) -> bytes:
    """A sine as 8 kHz mu-law: loud enough to count as speech for an energy VAD."""
    t = np.arange(SAMPLE_RATE * ms // 1000) / SAMPLE_RATE
    pcm = (amplitude * np.sin(2 * math.pi * frequency * t)).astype("<i2").tobytes()
    return mulaw.encode(pcm)


def frames(audio: bytes) -> list[bytes]:
    return [audio[i:i + FRAME_BYTES] for i in range(0, len(audio), FRAME_BYTES)]
