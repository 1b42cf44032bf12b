"""streaming/protocol.py: every Twilio Media Streams event, every way a frame can be wrong."""

from __future__ import annotations

import base64
import json

import pytest

from streaming import protocol
from streaming.ports import CallInfo
from streaming.protocol import (
    Connected,
    Dtmf,
    Mark,
    Media,
    MediaFormat,
    ProtocolError,
    Start,
    Stop,
    StreamState,
    parse,
)
from streaming.twilio_side import TwilioSide

SID = "MZ" + "1" * 32


def twilio() -> TwilioSide:
    return TwilioSide(call_sid="CAabc", stream_sid=SID, account_sid="ACdef",
                        from_number="+34600111222", to_number="+34910000000")


def reason(text: str | bytes) -> str:
    with pytest.raises(ProtocolError) as info:
        parse(text)
    assert info.value.reason in protocol.REASONS
    assert str(info.value).startswith(info.value.reason)
    return info.value.reason


def mutate(message: str, change) -> str:
    data = json.loads(message)
    change(data)
    return json.dumps(data)


def test_connected() -> None:
    assert parse(twilio().connected()) == Connected("Call", "1.0.0")
    assert parse('{"event":"connected"}') == Connected()


def test_start_carries_call_info_and_media_format() -> None:
    event = parse(twilio().start())
    assert event == Start(
        stream_sid=SID,
        call=CallInfo(call_sid="CAabc", stream_sid=SID, account_sid="ACdef",
                      from_number="+34600111222", to_number="+34910000000",
                      custom_parameters={"callSid": "CAabc", "from": "+34600111222",
                                         "to": "+34910000000"}),
        media_format=MediaFormat("audio/x-mulaw", 8000, 1),
        tracks=("inbound",),
        sequence=1,
    )


def test_media_is_decoded() -> None:
    stream = twilio()
    audio = bytes(range(160))
    stream.media(b"\xff" * 160)
    event = parse(stream.media(audio))
    assert event == Media(SID, audio, timestamp=20, chunk=2, sequence=2)
    # Twilio numbers are strings; plain JSON integers are accepted too
    data = json.loads(stream.media(audio))
    data["media"]["timestamp"], data["media"]["chunk"], data["sequenceNumber"] = 7, 8, 9
    assert parse(json.dumps(data)) == Media(SID, audio, 7, 8, 9)


def test_dtmf_mark_stop() -> None:
    stream = twilio()
    assert parse(stream.dtmf("#")) == Dtmf(SID, "#", 1)
    assert parse(stream.mark("g0-s1")) == Mark(SID, "g0-s1", 2)
    assert parse(stream.stop()) == Stop(SID, "CAabc", "ACdef", 3)
    # a stop without its body is still the end of the stream
    assert parse(json.dumps({"event": "stop", "streamSid": SID, "sequenceNumber": "4"})) \
        == Stop(SID, "", "", 4)


def test_events_are_frozen() -> None:
    event = parse(twilio().mark("x"))
    with pytest.raises(AttributeError):
        event.name = "y"  # type: ignore[misc]


@pytest.mark.parametrize("text, expected", [
    (b'{"event":"media"}', "binary_frame"),
    (bytearray(b"{}"), "binary_frame"),
    ("", "invalid_json"),
    ("{not json", "invalid_json"),
    ('{"event":"media",}', "invalid_json"),
    ("[1,2]", "not_an_object"),
    ('"media"', "not_an_object"),
    ("null", "not_an_object"),
    ("{}", "unknown_event"),
    ('{"event":"hello"}', "unknown_event"),
    ('{"event":"clear","streamSid":"MZ1"}', "unknown_event"),
    ('{"event":42}', "unknown_event"),
])
def test_malformed_messages(text: str | bytes, expected: str) -> None:
    assert reason(text) == expected


def _del(*path: str):
    def change(data: dict) -> None:
        for key in path[:-1]:
            data = data[key]
        del data[path[-1]]
    return change


def _set(value, *path: str):
    def change(data: dict) -> None:
        for key in path[:-1]:
            data = data[key]
        data[path[-1]] = value
    return change


MEDIA_CASES = [
    (_del("streamSid"), "missing_field"),
    (_del("sequenceNumber"), "missing_field"),
    (_del("media"), "missing_field"),
    (_del("media", "payload"), "missing_field"),
    (_del("media", "timestamp"), "missing_field"),
    (_del("media", "chunk"), "missing_field"),
    (_set("not-a-number", "media", "timestamp"), "bad_value"),
    (_set(None, "media", "chunk"), "missing_field"),
    (_set([1], "media", "chunk"), "bad_value"),
    (_set("x", "sequenceNumber"), "bad_value"),
    (_set([], "media"), "bad_value"),
    (_set(12, "media", "payload"), "bad_value"),
    (_set("AAE", "media", "payload"), "bad_base64"),          # bad padding
    (_set("AA!A", "media", "payload"), "bad_base64"),         # not the alphabet
    (_set("AA AA", "media", "payload"), "bad_base64"),        # whitespace is not allowed
    (_set("ñññ=", "media", "payload"), "bad_base64"),         # not even ASCII
]


@pytest.mark.parametrize("change, expected", MEDIA_CASES)
def test_malformed_media(change, expected: str) -> None:
    assert reason(mutate(twilio().media(), change)) == expected


@pytest.mark.parametrize("change, expected", [
    (_del("streamSid"), "missing_field"),
    (_del("start"), "missing_field"),
    (_set("x", "start"), "bad_value"),
    (_del("start", "callSid"), "missing_field"),
    (_del("start", "mediaFormat"), "missing_field"),
    (_del("start", "mediaFormat", "sampleRate"), "missing_field"),
    (_set("fast", "start", "mediaFormat", "sampleRate"), "bad_value"),
    (_set(["a"], "start", "customParameters"), "bad_value"),
    (_set("inbound", "start", "tracks"), "bad_value"),
    (_set("MZother", "start", "streamSid"), "bad_value"),
    (_del("sequenceNumber"), "missing_field"),
])
def test_malformed_start(change, expected: str) -> None:
    assert reason(mutate(twilio().start(), change)) == expected


@pytest.mark.parametrize("message, change, expected", [
    ("dtmf", _del("dtmf"), "missing_field"),
    ("dtmf", _del("dtmf", "digit"), "missing_field"),
    ("dtmf", _set("A", "dtmf", "digit"), "bad_value"),
    ("dtmf", _set("12", "dtmf", "digit"), "bad_value"),
    ("dtmf", _del("streamSid"), "missing_field"),
    ("mark", _del("mark"), "missing_field"),
    ("mark", _del("mark", "name"), "missing_field"),
    ("mark", _set(3, "mark", "name"), "bad_value"),
    ("mark", _del("sequenceNumber"), "missing_field"),
    ("stop", _del("streamSid"), "missing_field"),
])
def test_malformed_other_events(message: str, change, expected: str) -> None:
    stream = twilio()
    text = {"dtmf": stream.dtmf("1"), "mark": stream.mark("m"), "stop": stream.stop()}[message]
    assert reason(mutate(text, change)) == expected


def test_stream_state_order_and_identity() -> None:
    stream, state = twilio(), StreamState()
    assert state.stream_sid is None
    assert isinstance(state.parse(stream.connected()), Connected)
    for text in (stream.media(), stream.dtmf("1"), stream.mark("m"), stream.stop()):
        with pytest.raises(ProtocolError) as info:
            state.parse(text)
        assert info.value.reason == "before_start"
    assert isinstance(state.parse(stream.start()), Start)
    assert state.stream_sid == SID
    with pytest.raises(ProtocolError) as info:
        state.parse(stream.start())
    assert info.value.reason == "duplicate_start"
    assert isinstance(state.parse(stream.media()), Media)
    # the media fast path leaves the streamSid check to the state, which catches any odd value
    odd = [stream.media(stream_sid="MZother"), mutate(stream.mark("m"), _set("MZx", "streamSid")),
           mutate(stream.media(), _set(12, "streamSid")),
           mutate(stream.media(), _set("", "streamSid"))]
    for text in odd:
        with pytest.raises(ProtocolError) as info:
            state.parse(text)
        assert info.value.reason == "wrong_stream_sid"
    assert not state.stopped
    assert isinstance(state.parse(stream.stop()), Stop)
    assert state.stopped


@pytest.mark.parametrize("media_format", [
    {"encoding": "audio/x-l16"}, {"sampleRate": 16000}, {"channels": 2},
])
def test_stream_state_rejects_other_media_formats(media_format) -> None:
    with pytest.raises(ProtocolError) as info:
        StreamState().parse(twilio().start(**media_format))
    assert info.value.reason == "unsupported_media_format"


def test_outbound_builders() -> None:
    audio = bytes(range(256)) * 2
    media = json.loads(protocol.media_message(SID, audio))
    assert media == {"event": "media", "streamSid": SID,
                     "media": {"payload": base64.b64encode(audio).decode()}}
    assert json.loads(protocol.mark_message(SID, 'g1-s2 "quoted"')) == {
        "event": "mark", "streamSid": SID, "mark": {"name": 'g1-s2 "quoted"'}}
    assert json.loads(protocol.clear_message(SID)) == {"event": "clear", "streamSid": SID}
    # a streamSid that needs escaping still yields valid JSON
    assert json.loads(protocol.media_message('a"b', b"\x00"))["streamSid"] == 'a"b'


def test_outbound_media_parses_back_as_twilio_would_see_it() -> None:
    audio = b"\x01\x02\xff" * 100
    data = json.loads(protocol.media_message(SID, audio))
    assert base64.b64decode(data["media"]["payload"], validate=True) == audio


def test_twilio_side_reads_what_a_gateway_may_send_and_nothing_else() -> None:
    side = TwilioSide(stream_sid=SID)
    assert side.read(protocol.mark_message(SID, "g1-s1")) == {
        "event": "mark", "streamSid": SID, "mark": {"name": "g1-s1"}}
    timeline = '{"event": "timeline", "streamSid": "%s", "timeline": {"kind": "x"}}' % SID
    assert side.read(timeline, extra_events={"timeline"})["timeline"] == {"kind": "x"}
    for text, why in ((timeline, "unknown_event"), (b"{}", "binary_frame"),
                      (protocol.clear_message("MZother"), "wrong_stream_sid")):
        with pytest.raises(ProtocolError) as info:
            side.read(text)
        assert info.value.reason == why


def test_twilio_side_playing_at_once_echoes_every_mark_received() -> None:
    side = TwilioSide(stream_sid=SID)
    assert side.receive(protocol.media_message(SID, b"\xff" * 800), 0.0) == "media"
    assert side.receive(protocol.mark_message(SID, "a"), 0.0) == "mark"
    assert side.receive(protocol.media_message(SID, b"\xff" * 400), 0.0) == "media"
    assert side.receive(protocol.mark_message(SID, "b"), 0.0) == "mark"
    assert side.due_marks(0.05) == []  # 400 of the 1200 samples played
    assert side.played_marks() == ["a", "b"]
    assert side.played_marks() == []
