"""audio/mulaw.py against an independent G.711 mu-law: the classic Sun Microsystems g711.c."""

from __future__ import annotations

import struct

from audio import mulaw

# --- reference: a line-by-line Python port of g711.c (Sun Microsystems, public domain) --------
_BIAS = 0x84
_CLIP = 8159
_SEG_UEND = (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF)


def _search(value: int, table: tuple[int, ...]) -> int:
    for index, end in enumerate(table):
        if value <= end:
            return index
    return len(table)


def ref_linear2ulaw(pcm_val: int) -> int:
    """16-bit two's complement sample -> mu-law code (g711.c, 14-bit magnitude path)."""
    pcm_val >>= 2
    if pcm_val < 0:
        pcm_val = -pcm_val
        mask = 0x7F
    else:
        mask = 0xFF
    if pcm_val > _CLIP:
        pcm_val = _CLIP
    pcm_val += _BIAS >> 2
    seg = _search(pcm_val, _SEG_UEND)
    if seg >= 8:
        return 0x7F ^ mask
    uval = (seg << 4) | ((pcm_val >> (seg + 1)) & 0xF)
    return uval ^ mask


def ref_ulaw2linear(u_val: int) -> int:
    u_val = ~u_val & 0xFF
    t = ((u_val & 0x0F) << 3) + _BIAS
    t <<= (u_val & 0x70) >> 4
    return (_BIAS - t) if (u_val & 0x80) else (t - _BIAS)


# --- tests ----------------------------------------------------------------------------------

def test_decode_all_256_codes_bit_exact() -> None:
    decoded = struct.unpack("<256h", mulaw.decode(bytes(range(256))))
    assert list(decoded) == [ref_ulaw2linear(code) for code in range(256)]


def test_encode_all_65536_values_bit_exact() -> None:
    values = range(-32768, 32768)
    encoded = mulaw.encode(struct.pack(f"<{len(values)}h", *values))
    expected = bytes(ref_linear2ulaw(v) for v in values)
    mismatches = [(v, encoded[i], expected[i]) for i, v in enumerate(values)
                  if encoded[i] != expected[i]]
    assert mismatches == []


def test_reference_sanity() -> None:
    """The reference itself: known anchor points of G.711 mu-law."""
    assert ref_linear2ulaw(0) == 0xFF and ref_ulaw2linear(0xFF) == 0
    assert ref_ulaw2linear(0x7F) == 0  # "negative zero"
    assert ref_ulaw2linear(0x00) == -32124 and ref_ulaw2linear(0x80) == 32124
    assert ref_linear2ulaw(32767) == 0x80 and ref_linear2ulaw(-32768) == 0x00


def test_roundtrip_is_stable() -> None:
    """Decoding then encoding any code gives the code back (0x7F, negative zero, becomes 0xFF)."""
    codes = bytes(range(256))
    again = mulaw.encode(mulaw.decode(codes))
    assert [c for c in range(256) if again[c] != c] == [0x7F]
    assert again[0x7F] == 0xFF


def test_silence_and_rms() -> None:
    assert mulaw.silence(160) == b"\xff" * 160
    assert mulaw.rms(mulaw.decode(mulaw.silence(160))) == 0
    loud = mulaw.encode(struct.pack("<4h", 1000, -1000, 1000, -1000))
    assert 900 < mulaw.rms(mulaw.decode(loud)) < 1100


def test_level_is_the_rms_of_the_decoded_audio() -> None:
    every_code = bytes(range(256))
    assert mulaw.level(every_code) == mulaw.rms(mulaw.decode(every_code)) > 0
    assert mulaw.level(mulaw.silence(160)) == 0
