"""Local gRPC stand-ins for Google Speech-to-Text v1 and Text-to-Speech v1 on 127.0.0.1.

They run in the test's own event loop (grpc.aio) and speak the real wire format: generic handlers
(de)serialize with the client libraries' own proto-plus message classes.
"""

from __future__ import annotations

import asyncio
import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Self

import grpc
from google.cloud.speech_v1.types import (
    SpeechRecognitionAlternative,
    StreamingRecognitionConfig,
    StreamingRecognitionResult,
    StreamingRecognizeRequest,
    StreamingRecognizeResponse,
)
from google.cloud.texttospeech_v1.types import SynthesizeSpeechRequest, SynthesizeSpeechResponse

from audio import mulaw
from tests.support.caller_audio import FRAME_BYTES

SAMPLES_PER_MS = 8


def transcript_for(audio: bytes) -> str:
    """The fake recognizer's 'text' for a piece of audio: identifies exactly which bytes it heard."""
    return "heard-" + hashlib.sha1(audio).hexdigest()[:12]


@dataclass
class RecordedStream:
    """What one StreamingRecognize call received."""

    config: StreamingRecognitionConfig | None = None
    first_request_had_audio: bool = False
    configs_after_first: int = 0
    audio: bytearray = field(default_factory=bytearray)
    request_sizes: list[int] = field(default_factory=list)
    finals_sent: list[int] = field(default_factory=list)  # result_end_time of each final, in bytes
    # Why each final was sent: "every" (final_every), "endpointer", "half_close" (the client
    # ended its requests).
    final_causes: list[str] = field(default_factory=list)


class _LocalServer:
    """A grpc.aio server on a free 127.0.0.1 port serving the handler a subclass gives.

    `async with` starts and stops it; `start()` also returns its address.
    """

    address = ""
    _server: grpc.aio.Server | None = None

    def _handler(self) -> grpc.GenericRpcHandler:
        raise NotImplementedError

    async def start(self) -> str:
        self._server = grpc.aio.server()
        self._server.add_generic_rpc_handlers((self._handler(),))
        port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        self.address = f"127.0.0.1:{port}"
        return self.address

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=None)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


class FakeSpeechServer(_LocalServer):
    """Scriptable StreamingRecognize that finalizes like Google does.

    Per stream, a final result covers the bytes since the previous final (its text is
    `transcript_for` those bytes, its result_end_time the stream's byte count / 8 ms), sent:
    - by its endpointer, late as Google's: once `endpoint_ms` of quiet audio (20 ms frames at
      most `threshold` loud) follow speech (louder frames) since the previous final;
    - at once when the client half-closes (ends its requests), if speech came since the previous
      final; then the stream ends normally;
    - every `final_every` bytes since the previous final, whatever they hold (None: never).
    An interim result every `interim_every` bytes. `fail_after[i] = k` aborts stream `i`
    (0-based) with `fail_code` once it has received `k` audio requests. `half_close_gate(i)`
    holds stream `i`'s half-close final until the event is set (Google finalizing slowly).
    """

    def __init__(
        self,
        *,
        final_every: int | None = 4000,
        endpoint_ms: int = 1500,
        threshold: int = 500,
        interim_every: int = 1600,
        confidence: float = 0.875,
        fail_after: dict[int, int] | None = None,
        fail_code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
    ) -> None:
        self.final_every = final_every
        self.endpoint_bytes = endpoint_ms * SAMPLES_PER_MS
        self.threshold = threshold
        self.interim_every = interim_every
        self.confidence = confidence
        self.fail_after = dict(fail_after or {})
        self.fail_code = fail_code
        self.streams: list[RecordedStream] = []
        self.half_close_gates: dict[int, asyncio.Event] = {}

    def half_close_gate(self, index: int) -> asyncio.Event:
        return self.half_close_gates.setdefault(index, asyncio.Event())

    async def stop(self) -> None:
        for gate in self.half_close_gates.values():  # finals still held back are released first
            gate.set()
        await super().stop()

    def _handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            "google.cloud.speech.v1.Speech",
            {
                "StreamingRecognize": grpc.stream_stream_rpc_method_handler(
                    self._recognize,
                    request_deserializer=StreamingRecognizeRequest.deserialize,
                    response_serializer=StreamingRecognizeResponse.serialize,
                )
            },
        )

    def audio_requests(self, index: int) -> int:
        return len(self.streams[index].request_sizes)

    async def _recognize(self, requests, context: grpc.aio.ServicerContext):
        index = len(self.streams)
        stream = RecordedStream()
        self.streams.append(stream)
        final_at = 0  # bytes of this stream covered by finals sent so far
        scanned = 0  # bytes the endpointer has looked at, in whole frames
        speech = False  # loud frames since the last final
        quiet = 0  # quiet bytes since the last loud frame
        interims = 0
        first = True

        def final(end: int, cause: str) -> StreamingRecognizeResponse:
            nonlocal final_at, interims, speech
            heard = bytes(stream.audio[final_at:end])
            final_at, interims, speech = end, 0, False
            stream.finals_sent.append(end)
            stream.final_causes.append(cause)
            return self._response(transcript_for(heard), end, is_final=True)

        async for request in requests:
            if first:
                first = False
                stream.config = request.streaming_config
                stream.first_request_had_audio = bool(request.audio_content)
                continue
            if "streaming_config" in request:
                stream.configs_after_first += 1
            stream.audio += request.audio_content
            stream.request_sizes.append(len(request.audio_content))
            if self.fail_after.get(index) == len(stream.request_sizes):
                await context.abort(self.fail_code, "scripted failure")
            while scanned + FRAME_BYTES <= len(stream.audio):
                loud = mulaw.level(bytes(stream.audio[scanned:scanned + FRAME_BYTES]))
                scanned += FRAME_BYTES
                speech, quiet = (True, 0) if loud > self.threshold else (speech, quiet + FRAME_BYTES)
                if speech and quiet >= self.endpoint_bytes:
                    yield final(scanned, "endpointer")
            every = self.final_every
            while every is not None and len(stream.audio) - final_at >= every:
                yield final(final_at + every, "every")
            pending = len(stream.audio) - final_at
            while pending >= (interims + 1) * self.interim_every:
                interims += 1
                yield self._response(f"partial {interims}", final_at + pending, is_final=False)
        if speech:
            if index in self.half_close_gates:
                await self.half_close_gates[index].wait()
            yield final(len(stream.audio), "half_close")

    def _response(self, text: str, end_bytes: int, *, is_final: bool) -> StreamingRecognizeResponse:
        result = StreamingRecognitionResult(
            alternatives=[
                SpeechRecognitionAlternative(
                    transcript=text, confidence=self.confidence if is_final else 0.0
                )
            ],
            is_final=is_final,
            result_end_time=timedelta(milliseconds=end_bytes / SAMPLES_PER_MS),
        )
        return StreamingRecognizeResponse(results=[result])


def wav_mulaw(audio: bytes, *, extra_chunk: bool = True) -> bytes:
    """A RIFF/WAVE file holding mu-law 8 kHz mono audio, optionally with a LIST chunk before data."""
    fmt = struct.pack("<HHIIHH", 7, 1, 8000, 8000, 1, 8)
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt
    if extra_chunk:
        info = b"INFOISFT\x05\x00\x00\x00fake\x00\x00"  # odd-sized payload padded to even
        chunks += b"LIST" + struct.pack("<I", len(info) - 1) + info[:-1] + b"\x00"
    chunks += b"data" + struct.pack("<I", len(audio)) + audio
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


class FakeTextToSpeechServer(_LocalServer):
    """SynthesizeSpeech that answers `audio_for(text)` (wrapped in a WAV header when `wav`),
    `delay_seconds` after the request (the synthesizer's first byte: the answer is one message).

    `gates[text]` holds that text's answer until the event is set; `fail` lists texts answered
    with INVALID_ARGUMENT; `started[text]` is set when a request for `text` arrives.
    """

    def __init__(
        self,
        *,
        audio_for: Callable[[str], bytes] | None = None,
        wav: bool = False,
        delay_seconds: float = 0.0,
    ) -> None:
        self.audio_for = audio_for or (lambda text: text.encode("utf-8"))
        self.wav = wav
        self.delay_seconds = delay_seconds
        self.requests: list[SynthesizeSpeechRequest] = []
        self.gates: dict[str, asyncio.Event] = {}
        self.started: dict[str, asyncio.Event] = {}
        self.fail: set[str] = set()

    def texts(self) -> list[str]:
        return [request.input.text for request in self.requests]

    def arrival(self, text: str) -> asyncio.Event:
        return self.started.setdefault(text, asyncio.Event())

    def gate(self, text: str) -> asyncio.Event:
        return self.gates.setdefault(text, asyncio.Event())

    def _handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            "google.cloud.texttospeech.v1.TextToSpeech",
            {
                "SynthesizeSpeech": grpc.unary_unary_rpc_method_handler(
                    self._synthesize,
                    request_deserializer=SynthesizeSpeechRequest.deserialize,
                    response_serializer=SynthesizeSpeechResponse.serialize,
                )
            },
        )

    async def stop(self) -> None:
        for gate in self.gates.values():  # answers still held back are released first
            gate.set()
        await super().stop()

    async def _synthesize(
        self, request: SynthesizeSpeechRequest, context: grpc.aio.ServicerContext
    ) -> SynthesizeSpeechResponse:
        text = request.input.text
        self.requests.append(request)
        self.arrival(text).set()
        if text in self.gates:
            await self.gates[text].wait()
        if self.delay_seconds:
            await asyncio.sleep(self.delay_seconds)
        if text in self.fail:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"cannot say {text!r}")
        audio = self.audio_for(text)
        return SynthesizeSpeechResponse(audio_content=wav_mulaw(audio) if self.wav else audio)
