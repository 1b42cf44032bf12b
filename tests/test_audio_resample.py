"""audio/resample.py: lengths, preserved frequencies, and chunked streams that match the whole."""

from __future__ import annotations

import numpy as np
import pytest

from audio.resample import StreamResampler, resample


def sine(frequency: float, rate: int, seconds: float, amplitude: float = 10000) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype("<i2").tobytes()


def spectrum_peak(pcm: bytes, rate: int) -> tuple[float, float]:
    """(peak frequency, fraction of the energy within 20 Hz of it)."""
    samples = np.frombuffer(pcm, np.int16).astype(float)
    power = np.abs(np.fft.rfft(samples * np.hanning(len(samples)))) ** 2
    freqs = np.fft.rfftfreq(len(samples), 1 / rate)
    peak = freqs[int(np.argmax(power))]
    near = power[np.abs(freqs - peak) <= 20].sum()
    return float(peak), float(near / power.sum())


@pytest.mark.parametrize("source, target", [(16000, 8000), (22050, 8000), (8000, 16000),
                                            (44100, 8000), (24000, 8000)])
def test_length_and_frequency_preserved(source: int, target: int) -> None:
    out = resample(sine(1000, source, 1.0), source, target)
    assert abs(len(out) // 2 - target) <= 2
    peak, share = spectrum_peak(out, target)
    assert abs(peak - 1000) <= 2
    assert share > 0.99


def test_downsampling_removes_what_8k_cannot_hold() -> None:
    """A 6 kHz tone at 16 kHz must not fold back to 2 kHz at 8 kHz (anti-aliasing)."""
    original = np.frombuffer(sine(6000, 16000, 1.0), np.int16).astype(float)
    out = np.frombuffer(resample(sine(6000, 16000, 1.0), 16000, 8000), np.int16).astype(float)
    assert np.sqrt(np.mean(out ** 2)) < 0.01 * np.sqrt(np.mean(original ** 2))


def test_same_rate_and_empty_pass_through() -> None:
    data = sine(440, 8000, 0.1)
    assert resample(data, 8000, 8000) is data
    assert resample(b"", 16000, 8000) == b""
    assert StreamResampler(8000, 8000).process(data) is data


def test_stream_matches_whole_buffer() -> None:
    data = sine(700, 16000, 1.0)
    stream = StreamResampler(16000, 8000)
    step = 640  # 20 ms at 16 kHz, 16-bit
    parts = [stream.process(data[i:i + step]) for i in range(0, len(data), step)]
    parts.append(stream.process(b"", last=True))
    chunked = np.frombuffer(b"".join(parts), np.int16).astype(float)
    whole = np.frombuffer(resample(data, 16000, 8000), np.int16).astype(float)
    assert abs(len(chunked) - len(whole)) <= 2
    n = min(len(chunked), len(whole))
    # no clicks at chunk borders: the chunked result is the whole-buffer result up to rounding
    assert np.max(np.abs(chunked[100:n - 100] - whole[100:n - 100])) <= 50
