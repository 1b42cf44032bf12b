"""Hypothesis strategies for what may arrive on the media websocket: anything at all, JSON of any
shape, and objects shaped like Twilio's messages with fields missing, mistyped or replaced."""

from __future__ import annotations

import base64
from typing import Any

from hypothesis import strategies as st

EVENTS = ["connected", "start", "media", "dtmf", "mark", "stop", "clear", "", None, 3]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)

# Zero bytes stand for nothing in real audio; the null recognizer reads 80 of them as "final".
audio = st.binary(max_size=200).map(lambda b: b.replace(b"\x00", b"\xff"))


@st.composite
def twilio_shaped(draw: st.DrawFn, stream_sid: str = "MZ1",
                  events: list[Any] = EVENTS) -> dict[str, Any]:
    """An object like Twilio's messages, where any field may be missing or any JSON value."""

    def field(valid: st.SearchStrategy[Any]) -> Any:
        return draw(st.one_of(valid, json_values))

    message: dict[str, Any] = {
        "event": draw(st.sampled_from(events)),
        "sequenceNumber": field(st.integers(-3, 10**6).map(str)),
        "streamSid": field(st.just(stream_sid)),
        "media": field(st.fixed_dictionaries({
            "track": st.just("inbound"),
            "chunk": st.integers(0, 100).map(str),
            "timestamp": st.integers(0, 10**6).map(str),
            "payload": st.one_of(audio.map(lambda b: base64.b64encode(b).decode()),
                                 st.text(max_size=30)),
        })),
        "start": field(st.fixed_dictionaries({
            "streamSid": st.just(stream_sid), "callSid": st.text(max_size=5),
            "customParameters": json_values, "tracks": json_values,
            "mediaFormat": st.fixed_dictionaries({
                "encoding": st.sampled_from(["audio/x-mulaw", "audio/l16"]),
                "sampleRate": st.sampled_from([8000, "8000", 16000, "x"]),
                "channels": st.sampled_from([1, 2, "1", None])}),
        })),
        "dtmf": field(st.fixed_dictionaries({"digit": st.text(max_size=2)})),
        "mark": field(st.fixed_dictionaries({"name": st.text(max_size=10)})),
        "stop": field(st.fixed_dictionaries({"callSid": st.text(max_size=5)})),
    }
    keep = draw(st.sets(st.sampled_from(sorted(message)), min_size=1))
    return {key: value for key, value in message.items() if key in keep}
