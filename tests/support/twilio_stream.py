"""Twilio's side of a Media Stream for the tests: the JSON messages Twilio sends, and test audio.

    twilio = TwilioStream(call_sid="CA1")
    twilio.start()          # '{"event":"start",...}'
    twilio.media(frame)     # numbered like Twilio numbers them
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from audio import mulaw

FRAME_BYTES = 160  # 20 ms of 8 kHz mu-law
SILENT_FRAME = b"\xff" * FRAME_BYTES


def tone(ms: int, frequency: float = 440.0, amplitude: int = 8000) -> bytes:
    """A sine as 8 kHz mu-law: loud enough to count as speech for an energy VAD."""
    t = np.arange(8 * ms) / 8000
    pcm = (amplitude * np.sin(2 * math.pi * frequency * t)).astype("<i2").tobytes()
    return mulaw.encode(pcm)


def frames(audio: bytes) -> list[bytes]:
    return [audio[i:i + FRAME_BYTES] for i in range(0, len(audio), FRAME_BYTES)]


@dataclass
class TwilioStream:
    call_sid: str = "CA" + "0" * 32
    stream_sid: str = "MZ" + "1" * 32
    account_sid: str = "AC" + "2" * 32
    from_number: str = "+34600000001"
    to_number: str = "+34910000000"
    sequence: int = 0
    chunk: int = 0
    timestamp: int = 0
    extra_parameters: dict[str, str] = field(default_factory=dict)

    def _next(self) -> str:
        self.sequence += 1
        return str(self.sequence)

    def _dump(self, message: dict[str, Any]) -> str:
        return json.dumps(message, separators=(",", ":"))

    def connected(self) -> str:
        return self._dump({"event": "connected", "protocol": "Call", "version": "1.0.0"})

    def start(self, **media_format: Any) -> str:
        fmt = {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1, **media_format}
        params = {"callSid": self.call_sid, "from": self.from_number, "to": self.to_number,
                  **self.extra_parameters}
        return self._dump({
            "event": "start", "sequenceNumber": self._next(), "streamSid": self.stream_sid,
            "start": {"streamSid": self.stream_sid, "accountSid": self.account_sid,
                      "callSid": self.call_sid, "tracks": ["inbound"],
                      "customParameters": params, "mediaFormat": fmt},
        })

    def media(self, audio: bytes = SILENT_FRAME, stream_sid: str | None = None) -> str:
        self.chunk += 1
        message = {
            "event": "media", "sequenceNumber": self._next(),
            "streamSid": stream_sid or self.stream_sid,
            "media": {"track": "inbound", "chunk": str(self.chunk),
                      "timestamp": str(self.timestamp),
                      "payload": base64.b64encode(audio).decode()},
        }
        self.timestamp += len(audio) // 8
        return self._dump(message)

    def dtmf(self, digit: str) -> str:
        return self._dump({"event": "dtmf", "sequenceNumber": self._next(),
                           "streamSid": self.stream_sid,
                           "dtmf": {"track": "inbound_track", "digit": digit}})

    def mark(self, name: str) -> str:
        return self._dump({"event": "mark", "sequenceNumber": self._next(),
                           "streamSid": self.stream_sid, "mark": {"name": name}})

    def stop(self) -> str:
        return self._dump({"event": "stop", "sequenceNumber": self._next(),
                           "streamSid": self.stream_sid,
                           "stop": {"accountSid": self.account_sid, "callSid": self.call_sid}})
