"""Google Text-to-Speech v1 synthesis straight to mu-law 8 kHz: one request per text.

The session already hands the synthesizer one sentence at a time, and synthesizes the next one
while the caller hears this one (streaming/playback.py), so the first audio comes after one short
request; this engine never splits again.

Streaming synthesis (`streaming_synthesize`) is not used: it only serves Chirp 3 HD voices, takes
neither pitch nor volume gain nor a voice gender, and the sentence-by-sentence playback already
bounds the wait for the first audio by the first sentence, which is what a phone prompt needs.
"""

from __future__ import annotations

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

from audio.framing import SAMPLE_RATE
from streaming.google_client import build_client, describe
from streaming.ports import SynthesisError

_WAVE_FORMAT_MULAW = 7
_ERRORS = (google_exceptions.GoogleAPICallError, grpc.RpcError, auth_exceptions.GoogleAuthError)


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
            if (format_tag, channels, rate) != (_WAVE_FORMAT_MULAW, 1, SAMPLE_RATE):
                raise SynthesisError(
                    f"synthesized audio is format {format_tag}, {channels} channel(s), {rate} Hz;"
                    f" expected mu-law mono {SAMPLE_RATE} Hz"
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
        voice_name: str,
        ssml_gender: str,
        speaking_rate: float,
        pitch: float,
        volume_gain_db: float,
        endpoint: str,
        insecure: bool,
        timeout_seconds: float,
    ) -> None:
        self.voice_name = voice_name
        self.ssml_gender = SsmlVoiceGender[ssml_gender]
        self.audio_config = AudioConfig(
            audio_encoding=AudioEncoding.MULAW,
            sample_rate_hertz=SAMPLE_RATE,
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
        """The whole text's audio in one chunk (the session sends one sentence at a time)."""
        if text.strip():
            audio = await self._synthesize_one(text.strip(), language)
            if audio:
                yield audio

    async def _synthesize_one(self, text: str, language: str) -> bytes:
        request = SynthesizeSpeechRequest(
            input=SynthesisInput(text=text),
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
