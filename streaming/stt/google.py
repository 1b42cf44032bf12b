"""Google Speech-to-Text v1 streaming recognition, fed Twilio's mu-law 8 kHz audio unchanged.

The engine holds what all calls share (one gRPC client, the recognition config); each call's
recognition, its Google streams one after the other and early finalization, is
streaming/stt/google_stream.py.
"""

from __future__ import annotations

from collections.abc import Sequence

from google.cloud.speech_v1 import SpeechAsyncClient
from google.cloud.speech_v1.services.speech.transports import SpeechGrpcAsyncIOTransport
from google.cloud.speech_v1.types import (
    RecognitionConfig,
    SpeechContext,
    StreamingRecognitionConfig,
    StreamingRecognizeRequest,
)

from audio.framing import SAMPLE_RATE
from streaming.google_client import build_client
from streaming.ports import SpeechError
from streaming.stt.google_stream import GoogleRecognitionStream


class GoogleSpeechToText:
    """One shared gRPC client (created lazily inside the running loop) for all calls.

    `timeout_seconds` bounds connecting a stream (each stream's gRPC deadline is
    `restart_seconds + timeout_seconds`, so it never cuts a stream we are about to replace).
    `max_carry_seconds` bounds the audio resent to a new stream when no final came for a long
    time (silence gives no final); older audio is dropped in 10 s steps. `early_finalization`:
    `speech_ended()` cuts the stream (streaming/stt/google_stream.py); off, Google's endpointer
    alone decides; `timeout_seconds` also bounds how long a cut stream may take to end.
    """

    name = "google"

    def __init__(
        self,
        *,
        model: str,
        use_enhanced: bool,
        interim_results: bool,
        phrase_hints: Sequence[str] = (),
        restart_seconds: float,
        endpoint: str,
        insecure: bool,
        timeout_seconds: float,
        max_carry_seconds: float = 30,
        early_finalization: bool,
    ) -> None:
        self.model = model
        self.use_enhanced = use_enhanced
        self.interim_results = interim_results
        self.phrase_hints = tuple(phrase_hints)
        self.restart_seconds = restart_seconds
        self.endpoint = endpoint
        self.insecure = insecure
        self.timeout_seconds = timeout_seconds
        self.max_carry_seconds = max_carry_seconds
        self.early_finalization = early_finalization
        self._client: SpeechAsyncClient | None = None
        self._closed = False

    def open(self, language: str) -> GoogleRecognitionStream:
        return GoogleRecognitionStream(self, language)

    def client(self) -> SpeechAsyncClient:
        """The shared client; built on first use because grpc.aio channels bind to the loop."""
        if self._closed:
            raise SpeechError("the Google recognizer is closed")
        if self._client is None:
            self._client = build_client(
                SpeechAsyncClient, SpeechGrpcAsyncIOTransport, self.endpoint, self.insecure
            )
        return self._client

    def config_request(self, language: str) -> StreamingRecognizeRequest:
        config = RecognitionConfig(
            encoding=RecognitionConfig.AudioEncoding.MULAW,
            sample_rate_hertz=SAMPLE_RATE,
            audio_channel_count=1,
            language_code=language,
            model=self.model,
            use_enhanced=self.use_enhanced,
            max_alternatives=1,
            speech_contexts=[SpeechContext(phrases=list(self.phrase_hints))]
            if self.phrase_hints
            else [],
        )
        return StreamingRecognizeRequest(
            streaming_config=StreamingRecognitionConfig(
                config=config, interim_results=self.interim_results, single_utterance=False
            )
        )

    async def aclose(self) -> None:
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            await client.transport.close()
