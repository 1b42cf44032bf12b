"""Twilio Media Streams messages, sans I/O: text in, typed events out; events out, text back.

`parse` turns one websocket text message into a frozen event or raises `ProtocolError` whose
`reason` is a short stable code (logged and used as a metric label). `StreamState` adds the checks
that need memory: one `start` first, then only events of that stream. The builders produce the
three messages we send: media, mark and clear.

The `media` path runs 50 times a second per call, so it is one C JSON decode (orjson: a quarter
of `json.loads`'s CPU), a strict C base64 decode and one plain object (a frozen dataclass costs
four times as much to build); precise error messages are worked out only once a frame has failed.
"""

from __future__ import annotations

import json
from binascii import Error as Base64Error
from binascii import a2b_base64, b2a_base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from audio.framing import SAMPLE_RATE
from streaming.ports import CallInfo

DTMF_KEYS = frozenset("0123456789*#")
SUPPORTED_ENCODING = "audio/x-mulaw"

# Every reason a frame can be rejected for; metrics pre-bind one counter child per reason.
REASONS = (
    "binary_frame", "invalid_json", "not_an_object", "unknown_event", "missing_field",
    "bad_value", "bad_base64", "before_start", "duplicate_start", "wrong_stream_sid",
    "unsupported_media_format",
)


class ProtocolError(ValueError):
    """A message that is not valid Twilio Media Streams; `reason` is one of REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class MediaFormat:
    encoding: str
    sample_rate: int
    channels: int


@dataclass(frozen=True, slots=True)
class Connected:
    protocol: str = ""
    version: str = ""


@dataclass(frozen=True, slots=True)
class Start:
    stream_sid: str
    call: CallInfo
    media_format: MediaFormat
    tracks: tuple[str, ...] = ("inbound",)
    sequence: int = 0


@dataclass(slots=True)  # not frozen: built 50 times a second per call
class Media:
    stream_sid: str
    payload: bytes  # decoded mu-law
    timestamp: int  # ms since the stream started
    chunk: int
    sequence: int


@dataclass(frozen=True, slots=True)
class Dtmf:
    stream_sid: str
    digit: str
    sequence: int = 0


@dataclass(frozen=True, slots=True)
class Mark:
    stream_sid: str
    name: str
    sequence: int = 0


@dataclass(frozen=True, slots=True)
class Stop:
    stream_sid: str
    call_sid: str = ""
    account_sid: str = ""
    sequence: int = 0


Event = Connected | Start | Media | Dtmf | Mark | Stop


def parse(text: str | bytes) -> Event:
    """One websocket message -> its event. Raises ProtocolError."""
    if not isinstance(text, str):
        raise ProtocolError("binary_frame", "Twilio sends text frames only")
    try:
        data = orjson.loads(text)
    except ValueError as exc:  # orjson.JSONDecodeError is a ValueError
        raise ProtocolError("invalid_json", str(exc)) from None
    if type(data) is not dict:
        raise ProtocolError("not_an_object", f"expected a JSON object, got {type(data).__name__}")
    event = data.get("event")
    if event == "media":
        try:
            media = data["media"]
            return Media(data["streamSid"], a2b_base64(media["payload"], strict_mode=True),
                         int(media["timestamp"]), int(media["chunk"]), int(data["sequenceNumber"]))
        except Exception:
            raise _media_error(data) from None
    parser = _PARSERS.get(event) if isinstance(event, str) else None
    if parser is None:
        raise ProtocolError("unknown_event", f"unknown event {event!r}")
    return parser(data)


def _media_error(data: dict[str, Any]) -> ProtocolError:
    """Why the fast path failed, field by field."""
    try:
        _str(data, "streamSid", "")
        media = _obj(data, "media")
        payload = _str(media, "payload", "media.")
        _int(media, "timestamp", "media.")
        _int(media, "chunk", "media.")
        _int(data, "sequenceNumber", "")
        try:
            a2b_base64(payload, strict_mode=True)
        except (Base64Error, ValueError) as exc:
            return ProtocolError("bad_base64", f"media.payload: {exc}")
    except ProtocolError as exc:
        return exc
    return ProtocolError("bad_value", "invalid media message")  # pragma: no cover - defensive


def _connected(data: dict[str, Any]) -> Connected:
    return Connected(str(data.get("protocol", "")), str(data.get("version", "")))


def _start(data: dict[str, Any]) -> Start:
    stream_sid = _str(data, "streamSid", "")
    start = _obj(data, "start")
    inner_sid = start.get("streamSid", stream_sid)
    if inner_sid != stream_sid:
        raise ProtocolError("bad_value", "start.streamSid differs from streamSid")
    call_sid = _str(start, "callSid", "start.")
    fmt = _obj(start, "mediaFormat", "start.")
    params = start.get("customParameters") or {}
    if not isinstance(params, Mapping):
        raise ProtocolError("bad_value", "start.customParameters must be an object")
    params = {str(k): str(v) for k, v in params.items()}
    tracks = start.get("tracks", ["inbound"])
    if not isinstance(tracks, list):
        raise ProtocolError("bad_value", "start.tracks must be a list")
    account_sid = start.get("accountSid", "")
    call = CallInfo(
        call_sid=call_sid,
        stream_sid=stream_sid,
        account_sid=account_sid if isinstance(account_sid, str) else "",
        from_number=params.get("from", ""),
        to_number=params.get("to", ""),
        custom_parameters=params,
    )
    media_format = MediaFormat(_str(fmt, "encoding", "start.mediaFormat."),
                               _int(fmt, "sampleRate", "start.mediaFormat."),
                               _int(fmt, "channels", "start.mediaFormat."))
    return Start(stream_sid, call, media_format, tuple(map(str, tracks)),
                 _int(data, "sequenceNumber", ""))


def _dtmf(data: dict[str, Any]) -> Dtmf:
    digit = _str(_obj(data, "dtmf"), "digit", "dtmf.")
    if digit not in DTMF_KEYS:
        raise ProtocolError("bad_value", f"dtmf.digit {digit!r} is not a DTMF key")
    return Dtmf(_str(data, "streamSid", ""), digit, _int(data, "sequenceNumber", ""))


def _mark(data: dict[str, Any]) -> Mark:
    name = _str(_obj(data, "mark"), "name", "mark.")
    return Mark(_str(data, "streamSid", ""), name, _int(data, "sequenceNumber", ""))


def _stop(data: dict[str, Any]) -> Stop:
    stop = data.get("stop")
    stop = stop if isinstance(stop, dict) else {}
    call_sid, account_sid = stop.get("callSid", ""), stop.get("accountSid", "")
    return Stop(_str(data, "streamSid", ""),
                call_sid if isinstance(call_sid, str) else "",
                account_sid if isinstance(account_sid, str) else "",
                _int(data, "sequenceNumber", ""))


_PARSERS = {"connected": _connected, "start": _start, "dtmf": _dtmf, "mark": _mark, "stop": _stop}


def _present(data: Mapping[str, Any], key: str, where: str) -> Any:
    value = data.get(key)
    if value is None:
        raise ProtocolError("missing_field", f"{where}{key} is missing")
    return value


def _obj(data: Mapping[str, Any], key: str, where: str = "") -> dict[str, Any]:
    value = _present(data, key, where)
    if not isinstance(value, dict):
        raise ProtocolError("bad_value", f"{where}{key} must be an object")
    return value


def _str(data: Mapping[str, Any], key: str, where: str) -> str:
    value = _present(data, key, where)
    if not isinstance(value, str) or not value:
        raise ProtocolError("bad_value", f"{where}{key} must be a non-empty string")
    return value


def _int(data: Mapping[str, Any], key: str, where: str) -> int:
    """Twilio sends numbers as strings ("sequenceNumber": "3"); both forms are accepted."""
    value = _present(data, key, where)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ProtocolError("bad_value", f"{where}{key} must be an integer")
    try:
        return int(value)
    except ValueError:
        raise ProtocolError("bad_value",
                            f"{where}{key} must be an integer, got {value!r}") from None


@dataclass(slots=True)
class StreamState:
    """The checks that need memory: `start` first and once, then events of that stream only."""

    start: Start | None = None
    stopped: bool = field(default=False)

    @property
    def stream_sid(self) -> str | None:
        return self.start.stream_sid if self.start else None

    def parse(self, text: str | bytes) -> Event:
        """`parse` plus the stream checks. Raises ProtocolError."""
        event = parse(text)
        start = self.start
        if type(event) is Media and start is not None and event.stream_sid == start.stream_sid:
            return event  # the 50-per-second case, first
        if type(event) is Connected:
            return event
        if type(event) is Start:
            if start is not None:
                raise ProtocolError("duplicate_start", "the stream has already started")
            fmt = event.media_format
            if (fmt.encoding, fmt.sample_rate, fmt.channels) != (SUPPORTED_ENCODING, SAMPLE_RATE, 1):
                raise ProtocolError("unsupported_media_format",
                                    f"{fmt.encoding} {fmt.sample_rate} Hz x{fmt.channels}")
            self.start = event
            return event
        if start is None:
            raise ProtocolError("before_start", f"{_name(event)} event before start")
        if event.stream_sid != start.stream_sid:  # type: ignore[union-attr]
            raise ProtocolError("wrong_stream_sid", f"{_name(event)} event of another stream")
        if type(event) is Stop:
            self.stopped = True
        return event


def _name(event: Event) -> str:
    return type(event).__name__.lower()


def media_message(stream_sid: str, mulaw: bytes) -> str:
    """Outbound audio: raw 8 kHz mu-law, base64, no header."""
    payload = b2a_base64(mulaw, newline=False).decode("ascii")
    sid = json.dumps(stream_sid)
    return f'{{"event":"media","streamSid":{sid},"media":{{"payload":"{payload}"}}}}'


def mark_message(stream_sid: str, name: str) -> str:
    """Twilio echoes this mark back once the audio sent before it has been played."""
    return json.dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}},
                      separators=(",", ":"))


def clear_message(stream_sid: str) -> str:
    """Drop all audio Twilio has buffered for the caller (barge-in)."""
    return json.dumps({"event": "clear", "streamSid": stream_sid}, separators=(",", ":"))
