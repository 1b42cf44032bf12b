"""GoogleTextToSpeech against a local gRPC TextToSpeech server."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator

import pytest
from google.cloud.texttospeech_v1.types import AudioEncoding, SsmlVoiceGender

from streaming.ports import SynthesisError
from streaming.tts.google import GoogleTextToSpeech, strip_wav_header
from tests.support.google_fakes import FakeTextToSpeechServer, wav_mulaw
from tests.support.servers import free_port

FIRST = "Buenas tardes, le atiende el asistente virtual."
SECOND = "¿En qué puedo ayudarle hoy?"


def make_engine(address: str, **overrides: object) -> GoogleTextToSpeech:
    options: dict[str, object] = dict(
        voice_name="es-ES-Standard-A", ssml_gender="FEMALE", speaking_rate=1.1, pitch=-2.0,
        volume_gain_db=3.0, endpoint=address, insecure=True, timeout_seconds=5,
    )
    options.update(overrides)
    return GoogleTextToSpeech(**options)  # type: ignore[arg-type]


@pytest.fixture
async def server() -> AsyncIterator[FakeTextToSpeechServer]:
    async with FakeTextToSpeechServer() as fake:
        yield fake


@pytest.fixture
async def engine(server: FakeTextToSpeechServer) -> AsyncIterator[GoogleTextToSpeech]:
    tts = make_engine(server.address)
    yield tts
    await tts.aclose()


async def collect(tts: GoogleTextToSpeech, text: str, language: str = "es-ES") -> list[bytes]:
    return [chunk async for chunk in tts.synthesize(text, language)]


async def test_request_fields_and_raw_mulaw(
    server: FakeTextToSpeechServer, engine: GoogleTextToSpeech
) -> None:
    assert await collect(engine, FIRST, "es-US") == [FIRST.encode()]
    (request,) = server.requests
    assert request.input.text == FIRST
    assert request.voice.language_code == "es-US"
    assert request.voice.name == "es-ES-Standard-A"
    assert request.voice.ssml_gender == SsmlVoiceGender.FEMALE
    config = request.audio_config
    assert config.audio_encoding == AudioEncoding.MULAW
    assert config.sample_rate_hertz == 8000
    assert (config.speaking_rate, config.pitch, config.volume_gain_db) == (1.1, -2.0, 3.0)


async def test_wav_answers_are_stripped_to_their_samples() -> None:
    samples = bytes(range(256)) * 3 + b"\x7f"  # odd length
    async with FakeTextToSpeechServer(audio_for=lambda text: samples, wav=True) as fake:
        tts = make_engine(fake.address)
        try:
            assert await collect(tts, FIRST) == [samples]
        finally:
            await tts.aclose()


def test_strip_wav_header_walks_the_chunks() -> None:
    samples = b"\x01\x02\x03"
    assert strip_wav_header(samples) == samples
    assert strip_wav_header(wav_mulaw(samples, extra_chunk=False)) == samples
    assert strip_wav_header(wav_mulaw(samples)) == samples
    # A data size bigger than the file (streamed WAVs) means "up to the end".
    streamed = wav_mulaw(samples).replace(
        b"data" + struct.pack("<I", 3), b"data" + struct.pack("<I", 0xFFFFFFFF)
    )
    assert strip_wav_header(streamed) == samples


@pytest.mark.parametrize(
    "bad",
    [
        wav_mulaw(b"xx").replace(struct.pack("<HHII", 7, 1, 8000, 8000),
                                 struct.pack("<HHII", 1, 1, 24000, 48000)),  # LINEAR16 24 kHz
        wav_mulaw(b"xx").split(b"data")[0],  # no data chunk
        b"RIFF\x10\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x07",  # truncated fmt
        b"RIFF\x04\x00\x00\x00AVI ",
    ],
)
def test_strip_wav_header_rejects_what_is_not_mulaw_8k(bad: bytes) -> None:
    with pytest.raises(SynthesisError):
        strip_wav_header(bad)


async def test_a_text_is_one_request_never_split_again(
    server: FakeTextToSpeechServer, engine: GoogleTextToSpeech
) -> None:
    # The session hands over one sentence at a time; a text with several is still one request.
    assert await collect(engine, f"  {FIRST} {SECOND} ") == [f"{FIRST} {SECOND}".encode()]
    assert server.texts() == [f"{FIRST} {SECOND}"]
    assert await collect(engine, "   ") == []
    assert server.texts() == [f"{FIRST} {SECOND}"]


async def test_server_error_is_a_synthesis_error(
    server: FakeTextToSpeechServer, engine: GoogleTextToSpeech
) -> None:
    server.fail.add(SECOND)
    assert await collect(engine, FIRST) == [FIRST.encode()]
    with pytest.raises(SynthesisError, match="INVALID_ARGUMENT"):
        await collect(engine, SECOND)


async def test_timeout_is_a_synthesis_error(server: FakeTextToSpeechServer) -> None:
    server.gate(FIRST)  # never answers
    tts = make_engine(server.address, timeout_seconds=0.3)
    try:
        with pytest.raises(SynthesisError, match="DEADLINE_EXCEEDED"):
            await asyncio.wait_for(collect(tts, FIRST), 10)
    finally:
        await tts.aclose()


async def test_unreachable_endpoint_is_a_synthesis_error() -> None:
    tts = make_engine(f"127.0.0.1:{free_port()}")
    try:
        with pytest.raises(SynthesisError):
            await asyncio.wait_for(collect(tts, FIRST), 10)
    finally:
        await tts.aclose()
