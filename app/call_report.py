"""What a simulated call did and heard (app/simulate.py places the call): its events on the
call's clock, the audio the caller heard, the turns' latencies, and the timeline printed for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from audio import mulaw, wav
from audio.framing import FRAME_BYTES, FRAME_SECONDS, SAMPLE_RATE


@dataclass(frozen=True, slots=True)
class Event:
    t: float
    kind: str
    detail: str = ""


@dataclass
class SimulationResult:
    call_sid: str
    stream_sids: list[str]  # the call's streams, in order: more than one when it was resumed
    twiml: str  # the voice webhook's answer
    heard: bytes  # mu-law 8 kHz: the gateway's audio as played, silence where nothing played
    events: list[Event]
    # Per turn: end of the caller's speech (or last key, without speech) -> first bot audio after.
    latencies: list[float | None]
    protocol_errors: list[str]  # what Twilio would reject (binary frames, bad JSON, wrong sid)
    close_code: int | None  # set when the gateway closed (or lost) the last stream itself
    duration: float
    outcome: str = ""  # how the simulation ended: the caller hung up, or the TwiML verb it ran
    started_at: float = 0.0  # time.monotonic() at stream time 0 (real time: to compare clocks)
    ends: list[float] = field(default_factory=list)  # per turn: stream time the caller stopped
    # Wall seconds from the voice webhook's answer to the gateway's first audio (the greeting).
    first_audio: float | None = None

    @property
    def stream_sid(self) -> str:
        """The first stream's SID."""
        return self.stream_sids[0] if self.stream_sids else ""

    def times(self, kind: str) -> list[float]:
        return [e.t for e in self.events if e.kind == kind]

    @property
    def marks(self) -> list[str]:
        """Names of the marks echoed back to the gateway, in order."""
        return [e.detail for e in self.events if e.kind == "mark"]

    @property
    def clears(self) -> list[float]:
        return self.times("clear")

    def clear_delays(self) -> list[float]:
        """Per `clear`: seconds since the onset of the caller speech it interrupted."""
        onsets = self.times("caller_speech_start")
        return [t - max(o for o in onsets if o <= t)
                for t in self.clears if onsets and onsets[0] <= t]

    def heard_pcm16(self) -> bytes:
        return mulaw.decode(self.heard)

    def audible_seconds(self, threshold: int = 200) -> float:
        """Seconds of heard audio in 20 ms frames louder than `threshold` RMS."""
        heard = self.heard
        loud = sum(mulaw.level(heard[i:i + FRAME_BYTES]) > threshold
                   for i in range(0, len(heard), FRAME_BYTES))
        return loud * FRAME_SECONDS

    def write_wav(self, path: str | Path) -> None:
        """16-bit PCM at 8 kHz, which every player opens."""
        wav.write(path, self.heard_pcm16(), SAMPLE_RATE)

    def timeline(self) -> str:
        lines = [f"t={e.t:7.2f}s  {e.kind:<20} {e.detail}".rstrip() for e in self.events]
        if self.first_audio is not None:
            lines.append(f"first bot audio {self.first_audio:.2f}s after the voice webhook "
                         "answered")
        for number, (end, latency) in enumerate(zip(self.ends, self.latencies), start=1):
            heard = ("no bot audio after it" if latency is None else
                     f"first bot audio at t={end + latency:.2f}s: waited {latency:.2f}s")
            lines.append(f"turn {number}: the caller stopped at t={end:.2f}s, {heard}")
        shown = ", ".join("-" if x is None else f"{x:.2f}s" for x in self.latencies)
        lines.append(f"turn latencies (end of caller speech -> first bot audio): {shown or '-'}")
        if self.clears:
            lines.append("barge-in (caller speech onset -> clear): "
                         + ", ".join(f"{d:.2f}s" for d in self.clear_delays()))
        for error in self.protocol_errors:
            lines.append(f"protocol error: {error}")
        lines.append(f"call: {self.outcome}")
        return "\n".join(lines)
