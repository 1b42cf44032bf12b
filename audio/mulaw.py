"""G.711 mu-law <-> 16-bit little-endian linear PCM, bit-exact with the ITU reference."""

from __future__ import annotations

import sys

if sys.version_info >= (3, 13):  # pragma: no cover - audioop left the stdlib in 3.13
    import audioop  # provided by the audioop-lts package
else:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop

SAMPLE_WIDTH = 2
SILENCE_BYTE = 0xFF  # mu-law code for 0


def decode(mulaw: bytes) -> bytes:
    """mu-law bytes -> 16-bit signed little-endian PCM (two bytes per sample)."""
    return audioop.ulaw2lin(mulaw, SAMPLE_WIDTH)


def encode(pcm16: bytes) -> bytes:
    """16-bit signed little-endian PCM -> mu-law bytes (one byte per sample)."""
    return audioop.lin2ulaw(pcm16, SAMPLE_WIDTH)


def rms(pcm16: bytes) -> int:
    """Root-mean-square level of 16-bit PCM: a C loop, cheap enough for every frame."""
    return audioop.rms(pcm16, SAMPLE_WIDTH)


def level(mulaw: bytes) -> int:
    """RMS of mu-law audio as 16-bit PCM, in one call: the VAD's per-frame measure."""
    return audioop.rms(audioop.ulaw2lin(mulaw, SAMPLE_WIDTH), SAMPLE_WIDTH)


def silence(samples: int) -> bytes:
    """mu-law silence of the given length."""
    return bytes([SILENCE_BYTE]) * samples
