"""Twilio's audio: 8 kHz mu-law, one byte per sample, in fixed-duration chunks (Twilio sends 20 ms
frames, we send tens of ms each). SAMPLE_RATE is the one place the telephone rate is written, and
FRAME_MS / FRAME_BYTES / FRAME_SECONDS the one place for Twilio's frame."""

from __future__ import annotations

SAMPLE_RATE = 8000  # Hz; mu-law: one byte per sample, so also bytes per second
FRAME_MS = 20
FRAME_BYTES = SAMPLE_RATE * FRAME_MS // 1000  # 160: one Twilio media frame of mu-law
FRAME_SECONDS = FRAME_MS / 1000
BYTES_PER_MS = SAMPLE_RATE // 1000  # mu-law: one byte per sample
SILENCE = b"\xff"  # mu-law code for 0


def chunk_size(ms: int, sample_rate: int = SAMPLE_RATE) -> int:
    """Bytes (= samples, one byte each) in `ms` milliseconds of mu-law."""
    return sample_rate * ms // 1000


def split(mulaw: bytes, ms: int = FRAME_MS, sample_rate: int = SAMPLE_RATE,
          pad: bool = True) -> list[bytes]:
    """Cut mu-law into `ms` chunks; the last one is padded with silence unless `pad` is false."""
    size = chunk_size(ms, sample_rate)
    if size <= 0:
        raise ValueError(f"chunk of {ms} ms at {sample_rate} Hz holds no sample")
    chunks = [mulaw[i:i + size] for i in range(0, len(mulaw), size)]
    if pad and chunks and len(chunks[-1]) < size:
        chunks[-1] = chunks[-1] + SILENCE * (size - len(chunks[-1]))
    return chunks


class Rechunker:
    """Regroups a synthesizer's arbitrarily sized chunks into fixed-size outbound chunks."""

    __slots__ = ("size", "_buffer")

    def __init__(self, size: int) -> None:
        if size <= 0:
            raise ValueError("chunk size must be positive")
        self.size = size
        self._buffer = bytearray()

    def push(self, data: bytes) -> list[bytes]:
        """Add audio; return the complete chunks now available (possibly none)."""
        buffer = self._buffer
        buffer += data
        size = self.size
        if len(buffer) < size:
            return []
        whole = len(buffer) - len(buffer) % size
        chunks = [bytes(buffer[i:i + size]) for i in range(0, whole, size)]
        del buffer[:whole]
        return chunks

    def flush(self, pad: bool = True) -> bytes:
        """The remainder (padded with silence to a full chunk unless `pad` is false), or b""."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        if rest and pad:
            rest += SILENCE * (self.size - len(rest))
        return rest
