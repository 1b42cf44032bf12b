// The microphone's path to the gateway, on the audio thread: the context's rate (44.1 or 48 kHz,
// already low-passed below 4 kHz by the page's filters) down to 8 kHz, mu-law, 20 ms frames of
// 160 bytes. Each frame is posted with its RMS level (0..1) for the level meter.
import { encodeSample } from "./g711.js";

const RATE = 8000;
const FRAME = 160;

class MulawCapture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / RATE; // input samples per output sample
    this.position = 0; // of the next output sample, in this block's samples (-1: the last one kept)
    this.previous = 0;
    this.frame = new Uint8Array(FRAME);
    this.filled = 0;
    this.energy = 0;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (!channel) return true;
    const length = channel.length;
    let position = this.position;
    while (position < length - 1) {
      const index = Math.floor(position);
      const before = index < 0 ? this.previous : channel[index];
      const sample = before + (channel[index + 1] - before) * (position - index);
      this.push(sample);
      position += this.step;
    }
    this.position = position - length;
    this.previous = channel[length - 1];
    return true;
  }

  push(sample) {
    const clipped = Math.max(-1, Math.min(1, sample));
    this.energy += clipped * clipped;
    this.frame[this.filled++] = encodeSample(Math.round(clipped * 32767));
    if (this.filled === FRAME) {
      const level = Math.sqrt(this.energy / FRAME);
      this.port.postMessage({ frame: this.frame, level }, [this.frame.buffer]);
      this.frame = new Uint8Array(FRAME);
      this.filled = 0;
      this.energy = 0;
    }
  }
}

registerProcessor("mulaw-capture", MulawCapture);
