"""WAV files in and out (16-bit PCM, G.711 mu-law) and conversion to Twilio's 8 kHz mu-law.

The stdlib `wave` module only knows PCM, so the RIFF chunks are read and written here directly;
the format is small (a `fmt ` chunk and a `data` chunk) and the tests check it against `wave`
and sox.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import BinaryIO, Literal

import numpy as np

from audio import mulaw
from audio.framing import SAMPLE_RATE
from audio.resample import resample

Encoding = Literal["pcm", "mulaw"]
_PCM, _MULAW, _EXTENSIBLE = 1, 7, 0xFFFE
Source = str | os.PathLike[str] | bytes | BinaryIO


class WavError(ValueError):
    """The file is not a WAV this module can read."""


@dataclass(frozen=True, slots=True)
class Wav:
    data: bytes  # interleaved samples exactly as stored (little-endian PCM or mu-law codes)
    sample_rate: int
    channels: int = 1
    encoding: Encoding = "pcm"
    sample_width: int = 2  # bytes per sample: 1 for mu-law, 1-4 for PCM

    @property
    def duration(self) -> float:
        return len(self.data) / (self.sample_rate * self.channels * self.sample_width)


def read(source: Source) -> Wav:
    """Parse a WAV from a path, bytes or a binary file."""
    if isinstance(source, (bytes, bytearray)):
        raw = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as file:
            raw = file.read()
    else:
        raw = source.read()
    if len(raw) < 12 or raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        raise WavError("not a RIFF/WAVE file")
    fmt: tuple[int, int, int, int] | None = None
    offset = 12
    while offset + 8 <= len(raw):
        chunk_id, size = struct.unpack_from("<4sI", raw, offset)
        body = raw[offset + 8:offset + 8 + size]
        if chunk_id == b"fmt ":
            fmt = _parse_fmt(body)
        elif chunk_id == b"data":
            if fmt is None:
                raise WavError("data chunk before fmt chunk")
            tag, channels, rate, bits = fmt
            width = bits // 8
            usable = len(body) - len(body) % (width * channels)
            encoding: Encoding = "mulaw" if tag == _MULAW else "pcm"
            return Wav(body[:usable], rate, channels, encoding, width)
        offset += 8 + size + (size & 1)  # chunks are padded to even sizes
    raise WavError("no fmt chunk" if fmt is None else "no data chunk")


def _parse_fmt(body: bytes) -> tuple[int, int, int, int]:
    if len(body) < 16:
        raise WavError("fmt chunk too short")
    tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", body)
    if tag == _EXTENSIBLE and len(body) >= 26:
        tag = struct.unpack_from("<H", body, 24)[0]  # first two bytes of the SubFormat GUID
    if channels < 1 or rate < 1:
        raise WavError(f"invalid fmt chunk: {channels} channels at {rate} Hz")
    if tag == _PCM and bits in (8, 16, 24, 32):
        return tag, channels, rate, bits
    if tag == _MULAW and bits == 8:
        return tag, channels, rate, bits
    raise WavError(f"unsupported WAV format tag {tag} with {bits} bits (PCM or mu-law only)")


def encode(data: bytes, sample_rate: int, encoding: Encoding = "pcm", channels: int = 1) -> bytes:
    """A complete WAV file: 16-bit PCM or 8-bit mu-law samples with a minimal header."""
    width = 2 if encoding == "pcm" else 1
    tag = _PCM if encoding == "pcm" else _MULAW
    if encoding == "pcm":
        fmt = struct.pack("<HHIIHH", tag, channels, sample_rate,
                          sample_rate * channels * width, channels * width, width * 8)
    else:  # non-PCM formats carry a cbSize field
        fmt = struct.pack("<HHIIHHH", tag, channels, sample_rate,
                          sample_rate * channels * width, channels * width, width * 8, 0)
    pad = b"\x00" if len(data) & 1 else b""
    body = (b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
            + b"data" + struct.pack("<I", len(data)) + data + pad)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def write(destination: str | os.PathLike[str] | BinaryIO, data: bytes, sample_rate: int,
          encoding: Encoding = "pcm", channels: int = 1) -> None:
    blob = encode(data, sample_rate, encoding, channels)
    if isinstance(destination, (str, os.PathLike)):
        with open(destination, "wb") as file:
            file.write(blob)
    else:
        destination.write(blob)


def to_pcm16_mono(wav: Wav) -> bytes:
    """16-bit mono PCM at the file's own rate (channels averaged)."""
    if wav.encoding == "mulaw":
        pcm = mulaw.decode(wav.data)
    elif wav.sample_width == 2:
        pcm = wav.data
    elif wav.sample_width == 1:  # 8-bit WAV PCM is unsigned
        pcm = ((np.frombuffer(wav.data, np.uint8).astype(np.int16) - 128) << 8).tobytes()
    else:
        raw = np.frombuffer(wav.data, np.uint8).reshape(-1, wav.sample_width)
        # keep the two most significant bytes of each sample
        pcm = raw[:, -2:].copy().view("<i2").ravel().tobytes()
    if wav.channels == 1:
        return pcm
    frames = np.frombuffer(pcm, np.int16).reshape(-1, wav.channels)
    return frames.mean(axis=1).round().astype(np.int16).tobytes()


def to_mulaw_8k(wav: Wav) -> bytes:
    """Raw 8 kHz mono mu-law, what Twilio streams: downmix, resample, encode."""
    if wav.encoding == "mulaw" and wav.sample_rate == SAMPLE_RATE and wav.channels == 1:
        return wav.data
    return mulaw.encode(resample(to_pcm16_mono(wav), wav.sample_rate, SAMPLE_RATE))


def read_mulaw_8k(source: Source) -> bytes:
    """Any supported WAV as raw 8 kHz mono mu-law."""
    return to_mulaw_8k(read(source))


def mulaw_8k_wav(mulaw_audio: bytes) -> bytes:
    """Raw 8 kHz mu-law as a playable WAV file (for recordings of what a caller heard)."""
    return encode(mulaw_audio, SAMPLE_RATE, "mulaw")


__all__ = ["Wav", "WavError", "read", "write", "encode", "to_pcm16_mono", "to_mulaw_8k",
           "read_mulaw_8k", "mulaw_8k_wav"]
