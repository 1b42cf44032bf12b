"""Google Text-to-Speech v1 synthesis straight to mu-law 8 kHz, one sentence at a time.

The text is split into sentences; while the caller hears one sentence the next one is already
being synthesized, so the first audio comes after one short request, not after the whole reply.

Streaming synthesis (`streaming_synthesize`) is not used: it only serves Chirp 3 HD voices, takes
neither pitch nor volume gain nor a voice gender, and the sentence prefetch already bounds the
wait for the first audio by the first sentence, which is what a phone prompt needs.
"""

from __future__ import annotations

import asyncio
import re
import struct
from collections.abc import AsyncIterator

import grpc
from google.api_core import exceptions as google_exceptions
from google.auth import exceptions as auth_exceptions
from google.cloud.texttospeech_v1 import TextToSpeechAsyncClient
from google.cloud.texttospeech_v1.services.text_to_speech.transports import (
    TextToSpeechGrpcAsyncIOTransport,
)
from google.cloud.texttospeech_v1.types import (
    AudioConfig,
    AudioEncoding,
    SsmlVoiceGender,
    SynthesisInput,
    SynthesizeSpeechRequest,
    VoiceSelectionParams,
)

from streaming.google_client import build_client, describe
from streaming.ports import SynthesisError
from streaming.tasks import cancel_and_wait

_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")
_MIN_SENTENCE_CHARS = 12  # shorter pieces ("Sr.", "Adiós.") ride along with a neighbour
_WAVE_FORMAT_MULAW = 7
_ERRORS = (google_exceptions.GoogleAPICallError, grpc.RpcError, auth_exceptions.GoogleAuthError)


def split_sentences(text: str) -> list[str]:
    """Sentences to synthesize one by one; very short pieces are merged with their neighbour."""
    sentences: list[str] = []
    carry = ""
    for piece in _SENTENCE_END.split(text.strip()):
        piece = f"{carry} {piece}".strip() if carry else piece.strip()
        if len(piece) < _MIN_SENTENCE_CHARS:
            carry = piece
            continue
        sentences.append(piece)
        carry = ""
    if carry:
        if sentences:
            sentences[-1] = f"{sentences[-1]} {carry}"
        else:
            sentences.append(carry)
    return sentences


def strip_wav_header(audio: bytes) -> bytes:
    """The samples of a RIFF/WAVE answer (walking its chunks to `data`); raw audio unchanged."""
    if not audio.startswith(b"RIFF"):
        return audio
    try:
        return _wav_data(audio)
    except struct.error:
        raise SynthesisError("synthesized WAV audio is truncated") from None


def _wav_data(audio: bytes) -> bytes:
    if audio[8:12] != b"WAVE":
        raise SynthesisError("synthesized audio is RIFF but not WAVE")
    position = 12
    while position + 8 <= len(audio):
        chunk_id = audio[position : position + 4]
        (size,) = struct.unpack_from("<I", audio, position + 4)
        body = position + 8
        if chunk_id == b"fmt ":
            (format_tag, channels, rate) = struct.unpack_from("<HHI", audio, body)
            if (format_tag, channels, rate) != (_WAVE_FORMAT_MULAW, 1, 8000):
                raise SynthesisError(
                    f"synthesized audio is format {format_tag}, {channels} channel(s), {rate} Hz;"
                    " expected mu-law mono 8000 Hz"
                )
        elif chunk_id == b"data":
            return audio[body : body + size]  # a streaming-style size past the end means "all"
        position = body + size + (size & 1)
    raise SynthesisError("synthesized WAV audio has no data chunk")


class GoogleTextToSpeech:
    """One shared gRPC client (created lazily inside the running loop) for all calls."""

    name = "google"

    def __init__(
        self,
        *,
        voice_name: str = "es-ES-Standard-A",
        ssml_gender: str = "FEMALE",
        speaking_rate: float = 1.0,
        pitch: float = 0.0,
        volume_gain_db: float = 0.0,
        endpoint: str = "",
        insecure: bool = False,
        timeout_seconds: float = 10,
    ) -> None:
        self.voice_name = voice_name
        self.ssml_gender = SsmlVoiceGender[ssml_gender]
        self.audio_config = AudioConfig(
            audio_encoding=AudioEncoding.MULAW,
            sample_rate_hertz=8000,
            speaking_rate=speaking_rate,
            pitch=pitch,
            volume_gain_db=volume_gain_db,
        )
        self.endpoint = endpoint
        self.insecure = insecure
        self.timeout_seconds = timeout_seconds
        self._client: TextToSpeechAsyncClient | None = None
        self._closed = False

    def client(self) -> TextToSpeechAsyncClient:
        """The shared client; built on first use because grpc.aio channels bind to the loop."""
        if self._closed:
            raise SynthesisError("the Google synthesizer is closed")
        if self._client is None:
            self._client = build_client(
                TextToSpeechAsyncClient, TextToSpeechGrpcAsyncIOTransport, self.endpoint,
                self.insecure,
            )
        return self._client

    async def synthesize(self, text: str, language: str) -> AsyncIterator[bytes]:
        """One chunk per sentence; the next sentence is requested while this one is consumed."""
        sentences = split_sentences(text)
        if not sentences:
            return
        loop = asyncio.get_running_loop()
        pending = loop.create_task(self._synthesize_one(sentences[0], language))
        try:
            for index in range(len(sentences)):
                audio = await pending
                if index + 1 < len(sentences):
                    pending = loop.create_task(self._synthesize_one(sentences[index + 1], language))
                if audio:
                    yield audio
        finally:
            await cancel_and_wait(pending)  # the prefetch nobody will hear (no-op when finished)

    async def _synthesize_one(self, sentence: str, language: str) -> bytes:
        request = SynthesizeSpeechRequest(
            input=SynthesisInput(text=sentence),
            voice=VoiceSelectionParams(
                language_code=language, name=self.voice_name, ssml_gender=self.ssml_gender
            ),
            audio_config=self.audio_config,
        )
        try:
            response = await self.client().synthesize_speech(
                request=request, retry=None, timeout=self.timeout_seconds
            )
        except _ERRORS as exc:
            raise SynthesisError(f"Google synthesis failed: {describe(exc)}") from exc
        return strip_wav_header(response.audio_content)

    async def aclose(self) -> None:
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            await client.transport.close()
