"""Property tests of the sans-I/O protocol: whatever arrives, `parse` and `StreamState.parse` raise
nothing but ProtocolError (with a known reason); valid messages survive a build/parse round trip."""

from __future__ import annotations

import base64
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streaming.protocol import (
    REASONS,
    Dtmf,
    Mark,
    Media,
    ProtocolError,
    Start,
    Stop,
    StreamState,
    clear_message,
    mark_message,
    media_message,
    parse,
)
from streaming.twilio_side import TwilioSide
from tests.support.twilio_fuzz import json_values, twilio_shaped

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def only_protocol_errors(text: str | bytes, state: StreamState | None = None) -> None:
    try:
        (state.parse if state else parse)(text)
    except ProtocolError as exc:
        assert exc.reason in REASONS
        assert str(exc)


@FUZZ
@given(st.one_of(st.text(max_size=200), st.binary(max_size=64)))
def test_arbitrary_text_only_raises_protocol_error(text: str | bytes) -> None:
    only_protocol_errors(text)
    only_protocol_errors(text, StreamState())


@FUZZ
@given(json_values)
def test_arbitrary_json_only_raises_protocol_error(value: Any) -> None:
    only_protocol_errors(json.dumps(value))


@settings(FUZZ, max_examples=100)
@given(st.lists(twilio_shaped(), min_size=1, max_size=6))
def test_twilio_shaped_sequences_only_raise_protocol_error(messages: list[dict[str, Any]]) -> None:
    state = StreamState()
    twilio = TwilioSide(stream_sid="MZ1")
    only_protocol_errors(twilio.start(), state)
    for message in messages:
        only_protocol_errors(json.dumps(message), state)
    # The stream is still usable after any garbage: a valid frame parses.
    if not state.stopped:
        assert isinstance(state.parse(twilio.media(b"\x7f" * 160)), Media)


stream_sids = st.text(min_size=1, max_size=40)


@FUZZ
@given(stream_sids, st.binary(max_size=800))
def test_outbound_media_round_trips(stream_sid: str, audio: bytes) -> None:
    message = json.loads(media_message(stream_sid, audio))
    assert message["event"] == "media"
    assert message["streamSid"] == stream_sid
    assert base64.b64decode(message["media"]["payload"], validate=True) == audio


@FUZZ
@given(stream_sids, st.text(max_size=40))
def test_outbound_mark_and_clear_round_trip(stream_sid: str, name: str) -> None:
    assert json.loads(mark_message(stream_sid, name)) == {
        "event": "mark", "streamSid": stream_sid, "mark": {"name": name}}
    assert json.loads(clear_message(stream_sid)) == {"event": "clear", "streamSid": stream_sid}


@FUZZ
@given(
    st.text(st.characters(codec="utf-8"), min_size=1, max_size=30),
    st.text(st.characters(codec="utf-8"), min_size=1, max_size=30),
    st.lists(st.binary(min_size=1, max_size=320), max_size=5),
    st.lists(st.sampled_from("0123456789*#"), max_size=3),
    st.text(min_size=1, max_size=20),
)
def test_inbound_messages_round_trip(call_sid: str, stream_sid: str, frames: list[bytes],
                                     digits: list[str], mark: str) -> None:
    twilio = TwilioSide(call_sid=call_sid, stream_sid=stream_sid)
    state = StreamState()
    start = state.parse(twilio.start())
    assert isinstance(start, Start)
    assert (start.stream_sid, start.call.call_sid) == (stream_sid, call_sid)
    for number, frame in enumerate(frames, start=1):
        media = state.parse(twilio.media(frame))
        assert isinstance(media, Media)
        assert (media.payload, media.chunk, media.stream_sid) == (frame, number, stream_sid)
    for digit in digits:
        assert state.parse(twilio.dtmf(digit)) == Dtmf(stream_sid, digit, twilio.sequence)
    assert state.parse(twilio.mark(mark)) == Mark(stream_sid, mark, twilio.sequence)
    stop = state.parse(twilio.stop())
    assert isinstance(stop, Stop) and stop.call_sid == call_sid and state.stopped
