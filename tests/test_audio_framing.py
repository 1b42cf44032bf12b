"""audio/framing.py: fixed-duration chunks and regrouping a synthesizer's odd-sized output."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from audio.framing import (
    BYTES_PER_MS, FRAME_BYTES, FRAME_SECONDS, SAMPLE_RATE, Rechunker, chunk_size, split,
)


def test_twilios_frame() -> None:
    assert (SAMPLE_RATE, FRAME_BYTES, FRAME_SECONDS, BYTES_PER_MS) == (8000, 160, 0.02, 8)


def test_chunk_size() -> None:
    assert chunk_size(20) == 160
    assert chunk_size(40) == 320
    assert chunk_size(20, 16000) == 320


def test_split_pads_the_last_chunk_with_silence() -> None:
    chunks = split(bytes(range(200)), 20)
    assert [len(c) for c in chunks] == [160, 160]
    assert chunks[0] == bytes(range(160))
    assert chunks[1] == bytes(range(160, 200)) + b"\xff" * 120


def test_split_without_padding_and_exact_sizes() -> None:
    assert [len(c) for c in split(b"\x00" * 200, 20, pad=False)] == [160, 40]
    assert [len(c) for c in split(b"\x00" * 320, 20)] == [160, 160]
    assert split(b"", 20) == []
    with pytest.raises(ValueError):
        split(b"\x00", 0)


@given(st.lists(st.binary(max_size=700), max_size=30), st.sampled_from([20, 40, 60]))
def test_rechunker_keeps_every_byte_in_order(pieces: list[bytes], ms: int) -> None:
    size = chunk_size(ms)
    rechunker = Rechunker(size)
    out = [chunk for piece in pieces for chunk in rechunker.push(piece)]
    assert all(len(chunk) == size for chunk in out)
    tail = rechunker.flush(pad=False)
    assert len(tail) < size
    assert b"".join(out) + tail == b"".join(pieces)
    assert rechunker.flush() == b""


def test_rechunker_pads_the_tail() -> None:
    rechunker = Rechunker(320)
    assert rechunker.push(b"\x01" * 100) == []
    assert rechunker.push(b"\x02" * 300) == [b"\x01" * 100 + b"\x02" * 220]
    assert rechunker.flush() == b"\x02" * 80 + b"\xff" * 240
    with pytest.raises(ValueError):
        Rechunker(0)
