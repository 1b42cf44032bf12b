// G.711 mu-law, bit-exact with the gateway's codec (audio/mulaw.py: the ITU reference code that
// Python's audioop uses). Twilio and the gateway speak 8 kHz mu-law; the page converts at its edge.

const SEGMENT_ENDS = [0x3f, 0x7f, 0xff, 0x1ff, 0x3ff, 0x7ff, 0xfff, 0x1fff];

/** One 16-bit linear sample (-32768..32767) to its mu-law byte. */
export function encodeSample(sample) {
  let value = sample >> 2; // the reference works on 14 bits
  let mask = 0xff;
  if (value < 0) {
    value = -value;
    mask = 0x7f;
  }
  value = Math.min(value, 8159) + (0x84 >> 2);
  let segment = 0;
  while (segment < 8 && value > SEGMENT_ENDS[segment]) segment++;
  if (segment >= 8) return 0x7f ^ mask;
  return ((segment << 4) | ((value >> (segment + 1)) & 0x0f)) ^ mask;
}

/** One mu-law byte to its 16-bit linear sample. */
export function decodeSample(byte) {
  const u = ~byte & 0xff;
  const t = (((u & 0x0f) << 3) + 0x84) << ((u & 0x70) >> 4);
  return u & 0x80 ? 0x84 - t : t - 0x84;
}

/** mu-law byte -> sample in [-1, 1), for Web Audio. */
export const DECODE_FLOAT = Float32Array.from({ length: 256 }, (_, byte) => decodeSample(byte) / 32768);
