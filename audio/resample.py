"""Sample-rate conversion of 16-bit PCM with soxr (high quality, C implementation)."""

from __future__ import annotations

import numpy as np
import soxr


def resample(pcm16: bytes, from_rate: int, to_rate: int) -> bytes:
    """Resample a whole 16-bit mono buffer. For streams use `StreamResampler`."""
    if from_rate == to_rate or not pcm16:
        return pcm16
    samples = np.frombuffer(pcm16, dtype=np.int16)
    return soxr.resample(samples, from_rate, to_rate, quality="HQ").astype(np.int16).tobytes()


class StreamResampler:
    """Resamples a stream chunk by chunk with no clicks at chunk borders."""

    def __init__(self, from_rate: int, to_rate: int) -> None:
        self._passthrough = from_rate == to_rate
        self._stream = None if self._passthrough else soxr.ResampleStream(
            from_rate, to_rate, 1, dtype="int16", quality="HQ"
        )

    def process(self, pcm16: bytes, last: bool = False) -> bytes:
        if self._stream is None:
            return pcm16
        samples = np.frombuffer(pcm16, dtype=np.int16)
        return self._stream.resample_chunk(samples, last=last).tobytes()
