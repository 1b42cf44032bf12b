"""audio/wav.py: PCM16 and mu-law WAVs in and out, checked against the stdlib `wave` and sox."""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from audio import mulaw, wav
from audio.resample import resample


def sine(rate: int, seconds: float = 0.25, frequency: float = 440) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    return (8000 * np.sin(2 * np.pi * frequency * t)).astype("<i2").tobytes()


def test_pcm16_roundtrip_and_stdlib_agrees(tmp_path: Path) -> None:
    pcm = sine(16000)
    path = tmp_path / "a.wav"
    wav.write(path, pcm, 16000)
    assert wav.read(path) == wav.Wav(pcm, 16000, 1, "pcm", 2)
    with wave.open(str(path)) as reader:
        assert reader.getparams()[:3] == (1, 2, 16000)
        assert reader.readframes(reader.getnframes()) == pcm


def test_reads_what_stdlib_writes() -> None:
    buffer = io.BytesIO()
    stereo = (np.array([[1000, -1000]] * 800, dtype="<i2")).tobytes()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(2)
        writer.setsampwidth(2)
        writer.setframerate(8000)
        writer.writeframes(stereo)
    parsed = wav.read(buffer.getvalue())
    assert (parsed.data, parsed.channels, parsed.sample_rate) == (stereo, 2, 8000)
    assert parsed.duration == pytest.approx(0.1)
    assert wav.to_pcm16_mono(parsed) == b"\x00\x00" * 800  # channels averaged


def test_mulaw_roundtrip() -> None:
    codes = bytes(range(256)) * 4 + b"\x7f"  # odd length: the data chunk gets a pad byte
    blob = wav.mulaw_8k_wav(codes)
    assert len(blob) % 2 == 0
    parsed = wav.read(io.BytesIO(blob))
    assert parsed == wav.Wav(codes, 8000, 1, "mulaw", 1)
    assert wav.to_mulaw_8k(parsed) == codes  # already what Twilio wants: untouched


@pytest.mark.skipif(shutil.which("sox") is None, reason="sox not installed")
def test_reads_sox_mulaw_and_agrees_on_conversion(tmp_path: Path) -> None:
    source = tmp_path / "in.wav"
    wav.write(source, sine(8000), 8000)
    converted = tmp_path / "ulaw.wav"  # -D: no dither
    subprocess.run(["sox", "-D", str(source), "-e", "u-law", str(converted)], check=True)
    parsed = wav.read(converted)
    assert (parsed.encoding, parsed.sample_rate, parsed.sample_width) == ("mulaw", 8000, 1)
    # sox rounds where G.711's reference truncates: codes may differ by one quantization step
    original = np.frombuffer(sine(8000), np.int16).astype(int)
    theirs = np.frombuffer(mulaw.decode(parsed.data), np.int16).astype(int)
    ours = np.frombuffer(mulaw.decode(mulaw.encode(sine(8000))), np.int16).astype(int)
    step = np.maximum(16, np.abs(original) // 8)
    assert np.all(np.abs(theirs - ours) <= step)
    assert np.all(np.abs(theirs - original) <= step)


def test_other_pcm_widths_become_the_same_signal() -> None:
    pcm16 = np.frombuffer(sine(8000), np.int16)
    as8 = ((pcm16 >> 8) + 128).astype(np.uint8).tobytes()
    as24 = b"".join(struct.pack("<i", int(v) << 8)[:3] for v in pcm16)
    as32 = (pcm16.astype("<i4") << 16).tobytes()
    for data, width in ((as24, 3), (as32, 4)):
        parsed = wav.Wav(data, 8000, 1, "pcm", width)
        assert wav.to_pcm16_mono(parsed) == pcm16.tobytes()
    eight = np.frombuffer(wav.to_pcm16_mono(wav.Wav(as8, 8000, 1, "pcm", 1)), np.int16)
    assert np.max(np.abs(eight.astype(int) - pcm16)) < 256


def test_to_mulaw_8k_resamples_and_encodes() -> None:
    pcm = sine(16000, 1.0)
    out = wav.read_mulaw_8k(io.BytesIO(wav.encode(pcm, 16000)))
    assert abs(len(out) - 8000) <= 2
    assert out == mulaw.encode(resample(pcm, 16000, 8000))


def test_extensible_header_is_understood() -> None:
    pcm = sine(8000, 0.05)
    fmt = struct.pack("<HHIIHHHHI16s", 0xFFFE, 1, 8000, 16000, 2, 16, 22, 16, 4,
                      b"\x01\x00" + b"\x00" * 14)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt \
        + b"LIST" + struct.pack("<I", 3) + b"abc\x00" \
        + b"data" + struct.pack("<I", len(pcm)) + pcm
    parsed = wav.read(b"RIFF" + struct.pack("<I", len(body)) + body)
    assert (parsed.data, parsed.encoding) == (pcm, "pcm")


@pytest.mark.parametrize("blob, message", [
    (b"", "not a RIFF"),
    (b"RIFF\x00\x00\x00\x00WAVX", "not a RIFF"),
    (b"RIFF\x04\x00\x00\x00WAVE", "no fmt"),
    (wav.encode(b"\x00\x00", 8000)[:36], "no data"),
    (wav.encode(b"\x00\x00", 8000).replace(b"\x01\x00\x01\x00", b"\x03\x00\x01\x00", 1),
     "unsupported WAV format tag 3"),
    (b"RIFF\x0c\x00\x00\x00WAVEdata\x00\x00\x00\x00", "data chunk before fmt"),
])
def test_errors_are_clear(blob: bytes, message: str) -> None:
    with pytest.raises(wav.WavError, match=message):
        wav.read(blob)
