// The softphone: a Twilio Media Stream from the browser. The microphone becomes 8 kHz mu-law
// 20 ms frames (capture-worklet.js) sent as Twilio's `media` events; the gateway's `media` is
// played at 8 kHz, each `mark` is echoed once the audio before it has played, `clear` drops what
// is queued. Two messages only the softphone gets: `timeline` (what the call session did) and
// `call_ended` (a transfer or hang-up: there is no phone line to move, so the call ends here).
import { DECODE_FLOAT } from "./g711.js";

const params = new URLSearchParams(location.search);
const TOKEN = params.get("token") || "";
const CALLER = params.get("from") || "softphone";
const STREAM_URL = (() => {
  const url = new URL("../stream", import.meta.url);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
})();
const LOWPASS_HZ = 3400; // below the 4 kHz Nyquist limit of 8 kHz audio
const LEAD_SECONDS = 0.08; // playback starts this far ahead, so jittery chunks join without gaps
const KEYS = "123456789*0#";

const $ = (id) => document.getElementById(id);

function randomSid(prefix) {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return prefix + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function base64(bytes) {
  let text = "";
  for (const byte of bytes) text += String.fromCharCode(byte);
  return btoa(text);
}

function unbase64(text) {
  const raw = atob(text);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

/** One call: microphone, websocket, playback. `ui` shows what happens. */
class Call {
  constructor(ui) {
    this.ui = ui;
    this.callSid = randomSid("softphone-"); // the server keeps softphone calls apart from calls
    this.streamSid = randomSid("MZ");
    this.accountSid = "AC" + "0".repeat(32);
    this.sequence = 0;
    this.chunk = 0;
    this.muted = false;
    this.over = false;
    this.playing = new Set(); // scheduled AudioBufferSourceNodes
    this.marksAfter = new Map(); // source node -> mark names to echo when it has played
    this.last = null;
    this.playEnd = 0;
  }

  async start() {
    // Created inside the click's handler, so the browser lets it play.
    this.context = new AudioContext({ latencyHint: "interactive" });
    this.microphone = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
    await this.context.audioWorklet.addModule(new URL("capture-worklet.js", import.meta.url));
    let node = this.context.createMediaStreamSource(this.microphone);
    for (const q of [0.54, 1.31]) { // two sections: a 4th-order Butterworth low-pass
      const filter = new BiquadFilterNode(this.context, {
        type: "lowpass", frequency: LOWPASS_HZ, Q: 20 * Math.log10(q), // Web Audio takes dB
      });
      node.connect(filter);
      node = filter;
    }
    this.capture = new AudioWorkletNode(this.context, "mulaw-capture", { numberOfOutputs: 0 });
    this.capture.port.onmessage = (event) => this.onFrame(event.data);
    node.connect(this.capture);

    this.socket = new WebSocket(STREAM_URL, ["softphone", "token." + TOKEN]);
    this.socket.onopen = () => this.onOpen();
    this.socket.onmessage = (event) => this.onMessage(JSON.parse(event.data));
    this.socket.onclose = (event) => this.onClose(event);
  }

  send(message) {
    if (this.socket && this.socket.readyState === WebSocket.OPEN) {
      this.socket.send(JSON.stringify(message));
    }
  }

  next() {
    return String(++this.sequence);
  }

  onOpen() {
    this.send({ event: "connected", protocol: "Call", version: "1.0.0" });
    this.send({
      event: "start", sequenceNumber: this.next(), streamSid: this.streamSid,
      start: {
        streamSid: this.streamSid, accountSid: this.accountSid, callSid: this.callSid,
        tracks: ["inbound"],
        customParameters: { callSid: this.callSid, from: CALLER, to: "softphone" },
        mediaFormat: { encoding: "audio/x-mulaw", sampleRate: 8000, channels: 1 },
      },
    });
    this.started = true;
    this.ui.connected(this);
  }

  onFrame({ frame, level }) {
    this.ui.level(this.muted ? 0 : level);
    if (!this.started || this.over) return;
    if (this.muted) frame.fill(0xff); // mu-law silence: the line stays open, like a muted phone
    this.send({
      event: "media", sequenceNumber: this.next(), streamSid: this.streamSid,
      media: { track: "inbound", chunk: String(++this.chunk),
               timestamp: String((this.chunk - 1) * 20), payload: base64(frame) },
    });
  }

  onMessage(message) {
    switch (message.event) {
      case "media": return this.play(unbase64(message.media.payload));
      case "mark": return this.markAfterPlayback(message.mark.name);
      case "clear": return this.clearPlayback();
      case "timeline": return this.ui.timeline(message.timeline);
      case "call_ended": return this.ended(message.call_ended);
    }
  }

  play(mulaw) {
    const samples = new Float32Array(mulaw.length);
    for (let i = 0; i < mulaw.length; i++) samples[i] = DECODE_FLOAT[mulaw[i]];
    const buffer = new AudioBuffer({ length: samples.length, numberOfChannels: 1, sampleRate: 8000 });
    buffer.copyToChannel(samples, 0);
    const source = new AudioBufferSourceNode(this.context, { buffer });
    source.connect(this.context.destination);
    const now = this.context.currentTime;
    if (this.playEnd < now) this.playEnd = now + LEAD_SECONDS;
    source.onended = () => this.played(source);
    source.start(this.playEnd);
    this.playEnd += buffer.duration;
    this.playing.add(source);
    this.last = source;
  }

  played(source) {
    this.playing.delete(source);
    for (const name of this.marksAfter.get(source) || []) this.echoMark(name);
    this.marksAfter.delete(source);
  }

  markAfterPlayback(name) {
    if (this.last && this.playing.has(this.last)) {
      const names = this.marksAfter.get(this.last) || [];
      names.push(name);
      this.marksAfter.set(this.last, names);
    } else {
      this.echoMark(name); // nothing is playing: the audio before it has been heard
    }
  }

  echoMark(name) {
    this.send({ event: "mark", sequenceNumber: this.next(), streamSid: this.streamSid, mark: { name } });
  }

  clearPlayback() {
    // Like Twilio: drop the queued audio; the marks waiting on it are echoed as it stops.
    for (const source of this.playing) source.stop();
    this.playEnd = 0;
    this.ui.note("clear", "Playback cleared", "the gateway dropped the rest of the reply");
  }

  dtmf(digit) {
    if (!this.started || this.over) return;
    this.send({ event: "dtmf", streamSid: this.streamSid, sequenceNumber: this.next(),
                dtmf: { track: "inbound_track", digit } });
    this.ui.keyed(digit);
  }

  toggleMute() {
    this.muted = !this.muted;
    return this.muted;
  }

  stop() {
    this.send({ event: "stop", sequenceNumber: this.next(), streamSid: this.streamSid,
                stop: { accountSid: this.accountSid, callSid: this.callSid } });
  }

  hangUp() {
    this.stop();
    this.finish("You hung up.");
  }

  ended({ action, number }) {
    const messages = {
      transfer: number
        ? `The bot transferred the call to ${number}. On the phone, Twilio would now dial the agent.`
        : "The bot transferred the call, but no agent number is set (twilio.fallback_phone_number): "
          + "a caller would hear the no-answer prompt.",
      hang_up: "The bot hung up.",
      redirect_to_gather: "A speech engine failed. A phone call would go on with Twilio's Gather "
        + "recognition; the softphone cannot.",
    };
    this.stop(); // what Twilio does once a call leaves its stream
    this.finish(messages[action] || `The call ended (${action}).`);
  }

  onClose(event) {
    if (this.over) return;
    if (event.code === 1008) {
      this.finish(`Refused by the gateway: ${event.reason}. Check ?token= in the address.`);
    } else {
      this.finish(`The connection closed (code ${event.code}${event.reason ? ": " + event.reason : ""}).`);
    }
  }

  finish(message) {
    if (this.over) return;
    this.over = true;
    for (const source of this.playing) source.onended = null;
    if (this.socket) this.socket.close(1000);
    if (this.microphone) for (const track of this.microphone.getTracks()) track.stop();
    if (this.context) this.context.close();
    this.ui.ended(message);
  }
}

/** The page: buttons, keypad, level meter, timeline. Text only ever goes in as textContent. */
class Page {
  constructor() {
    this.call = null;
    this.startedAt = 0;
    $("call").onclick = () => this.toggleCall();
    $("mute").onclick = () => {
      const muted = this.call.toggleMute();
      $("mute").textContent = muted ? "Unmute" : "Mute";
      $("mute").setAttribute("aria-pressed", String(muted));
    };
    for (const key of KEYS) {
      const button = document.createElement("button");
      button.textContent = key;
      button.dataset.digit = key;
      button.disabled = true;
      button.onclick = () => this.call && this.call.dtmf(key);
      $("keypad").append(button);
    }
    document.addEventListener("keydown", (event) => {
      if (this.call && KEYS.includes(event.key) && !event.repeat) this.call.dtmf(event.key);
    });
    if (!TOKEN) this.status("No token: open this page as /softphone?token=…", "error");
  }

  async toggleCall() {
    if (this.call && !this.call.over) return this.call.hangUp();
    $("timeline").replaceChildren();
    $("keyed").textContent = "";
    this.startedAt = performance.now();
    this.call = new Call(this);
    $("call").textContent = "Hang up";
    $("call").classList.add("active");
    this.status("Calling…");
    this.note("local", "Calling", STREAM_URL);
    try {
      await this.call.start();
    } catch (error) {
      this.call.finish(`Could not start the call: ${error.message || error}`);
    }
  }

  connected(call) {
    this.status(`In call · ${call.callSid}`, "live");
    this.note("local", "Connected", `CallSid ${call.callSid}`);
    $("mute").disabled = false;
    for (const button of $("keypad").children) button.disabled = false;
  }

  ended(message) {
    this.status("Call ended");
    this.note("ended", "Call ended", message);
    $("notice").textContent = message;
    $("call").textContent = "Call";
    $("call").classList.remove("active");
    $("mute").disabled = true;
    $("mute").textContent = "Mute";
    for (const button of $("keypad").children) button.disabled = true;
    this.level(0);
  }

  status(text, kind = "") {
    $("status").textContent = text;
    $("status").className = kind;
  }

  level(rms) {
    const db = rms > 0 ? 20 * Math.log10(rms) : -100;
    $("level").style.width = `${Math.max(0, Math.min(100, (db + 60) * (100 / 60)))}%`;
  }

  keyed(digit) {
    $("keyed").textContent += digit;
  }

  timeline(event) {
    const [who, text, extra] = describe(event);
    this.note(event.kind, who, text, extra);
  }

  note(kind, who, text, extra = []) {
    const item = document.createElement("li");
    item.dataset.kind = kind;
    const time = document.createElement("time");
    time.textContent = `${((performance.now() - this.startedAt) / 1000).toFixed(1)} s`;
    const label = document.createElement("b");
    label.textContent = who;
    const body = document.createElement("span");
    body.className = "text";
    body.textContent = text;
    item.append(time, label, body);
    for (const chip of extra) {
      const element = document.createElement("code");
      element.textContent = chip;
      item.append(element);
    }
    $("timeline").append(item);
    item.scrollIntoView({ block: "nearest" });
  }
}

/** A timeline event as [who, text, chips]. Unknown kinds and fields still show. */
function describe(event) {
  switch (event.kind) {
    case "caller_input":
      return [event.source === "dtmf" ? "You keyed" : "You said", event.text];
    case "bot_reply": {
      const texts = event.messages.filter((m) => m.text).map((m) => m.text);
      const actions = event.messages.filter((m) => m.custom).map((m) => JSON.stringify(m.custom));
      return ["Bot", texts.join(" ") || "(no text)", actions];
    }
    case "bot_failed":
      return ["Bot failed", `${event.error}: the caller hears the apology and is transferred`];
    case "prompt": // the gateway's own words: greeting, resume, reprompt, apology, goodbye, thinking
      return [event.name[0].toUpperCase() + event.name.slice(1), event.text];
    case "barge_in": {
      const heard = event.played.length, of = heard + event.interrupted.length;
      return ["Barge-in", `${event.cause === "dtmf" ? "a key" : "speech"} interrupted the reply `
              + `after ${heard} of ${of} sentences`, event.interrupted.map((s) => `cut: ${s}`)];
    }
    case "turn_latency":
      return ["Turn latency", stages(event)];
    default: {
      const { kind, ...fields } = event;
      return [kind, JSON.stringify(fields)];
    }
  }
}

/** Every `*_ms` field, total first: "total 812 ms · bot 120 ms". */
function stages(event) {
  return Object.entries(event)
    .filter(([key, value]) => key.endsWith("_ms") && value !== null && value !== undefined)
    .sort(([a], [b]) => (b === "total_ms") - (a === "total_ms"))
    .map(([key, value]) => `${key.slice(0, -3).replaceAll("_", " ")} ${Math.round(value)} ms`)
    .join(" · ");
}

new Page();
