"""Offline synthesis with Debian's espeak-ng, streamed as 8 kHz mu-law while it speaks.

One `espeak-ng` process per text, started with asyncio (no shell: the text is one argv entry
after `--`), so synthesis never runs on the event loop. Its `--stdout` WAV (22050 Hz PCM, with a
placeholder length because it is written as a stream) is parsed as it arrives, resampled and
encoded chunk by chunk. Closing or cancelling the generator kills the process and reaps it.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import struct
import subprocess
from collections.abc import AsyncIterator

from audio import mulaw
from audio.framing import SAMPLE_RATE
from audio.resample import StreamResampler
from streaming.ports import SynthesisError

_READ_BYTES = 16384  # ~0.37 s of espeak's 22050 Hz audio
_PCM = 1


class EspeakTextToSpeech:
    """`voice` empty: derived from each call's language (es-ES -> es, es-MX -> es-419...)."""

    name = "espeak"

    def __init__(
        self,
        *,
        voice: str,
        words_per_minute: int,
        pitch: int,
        binary: str = "espeak-ng",
        timeout_seconds: float = 10,
    ) -> None:
        path = shutil.which(binary)
        if path is None:
            raise FileNotFoundError(
                f"{binary} not found on PATH: install it (Debian: apt-get install espeak-ng) "
                "or choose another tts.engine"
            )
        self.binary = path
        self.voice = voice
        self.words_per_minute = words_per_minute
        self.pitch = pitch
        self.timeout_seconds = timeout_seconds
        self.languages = _voice_languages(path)

    def voice_for(self, language: str) -> str:
        if self.voice:
            return self.voice
        code = language.strip().lower().replace("_", "-")
        primary = code.split("-")[0]
        if primary == "es":  # espeak-ng has Castilian (es) and Latin American (es-419) Spanish
            return "es" if code in ("es", "es-es") else "es-419"
        for candidate in (code, primary):
            if candidate in self.languages:
                return candidate
        raise SynthesisError(f"espeak-ng has no voice for {language!r}")

    async def synthesize(self, text: str, language: str) -> AsyncIterator[bytes]:
        text = text.strip()
        if not text:
            return
        command = [self.binary, "-v", self.voice_for(language), "-s", str(self.words_per_minute),
                   "-p", str(self.pitch), "--stdout", "--", text]
        try:
            process = await asyncio.create_subprocess_exec(
                *command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except OSError as exc:
            raise SynthesisError(f"espeak-ng could not start: {exc}") from exc
        assert process.stdout is not None and process.stderr is not None
        reader = _WavReader()
        produced = False
        try:
            while True:
                try:
                    data = await asyncio.wait_for(
                        process.stdout.read(_READ_BYTES), self.timeout_seconds
                    )
                except TimeoutError:
                    raise SynthesisError(
                        f"espeak-ng produced nothing for {self.timeout_seconds} s"
                    ) from None
                chunk = reader.feed(data) if data else reader.finish()
                if chunk:
                    produced = True
                    yield chunk
                if not data:
                    break
            code = await process.wait()
            if code != 0 or not produced:
                error = (await process.stderr.read()).decode(errors="replace").strip()
                raise SynthesisError(f"espeak-ng failed (exit {code}): {error or 'no audio'}")
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()

    async def aclose(self) -> None:
        return None


class _WavReader:
    """Streaming RIFF/WAVE parser: 16-bit mono PCM in, 8 kHz mu-law out."""

    def __init__(self) -> None:
        self._header = bytearray()
        self._rate: int | None = None
        self._resampler: StreamResampler | None = None
        self._odd = b""  # a sample split between two reads

    def feed(self, data: bytes) -> bytes:
        if self._resampler is None:
            self._header += data
            pcm = self._parse_header()
            if self._resampler is None:
                return b""
        else:
            pcm = data
        pcm = self._odd + pcm
        usable = len(pcm) & ~1
        self._odd = pcm[usable:]
        return mulaw.encode(self._resampler.process(pcm[:usable]))

    def finish(self) -> bytes:
        if self._resampler is None:
            if self._header:
                raise SynthesisError("espeak-ng output ended inside its WAV header")
            return b""
        return mulaw.encode(self._resampler.process(b"", last=True))

    def _parse_header(self) -> bytes:
        """Walk the chunks to `data`; its size is a placeholder, the samples run to the end."""
        header = self._header
        if len(header) >= 12 and (header[:4] != b"RIFF" or header[8:12] != b"WAVE"):
            raise SynthesisError("espeak-ng did not write a WAV stream")
        position = 12
        while len(header) >= position + 8:
            chunk_id, size = struct.unpack_from("<4sI", header, position)
            if chunk_id == b"data":
                if self._rate is None:
                    raise SynthesisError("espeak-ng WAV has no fmt chunk before its data")
                self._resampler = StreamResampler(self._rate, SAMPLE_RATE)
                return bytes(header[position + 8:])
            if len(header) < position + 8 + size:
                return b""
            if chunk_id == b"fmt ":
                tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", header,
                                                                     position + 8)
                if (tag, channels, bits) != (_PCM, 1, 16):
                    raise SynthesisError(f"espeak-ng WAV is not 16-bit mono PCM ({tag}, "
                                         f"{channels} channels, {bits} bits)")
                self._rate = rate
            position += 8 + size + (size & 1)
        return b""


def _voice_languages(binary: str) -> frozenset[str]:
    """Language codes espeak-ng has voices for; also proves the binary runs."""
    try:
        listing = subprocess.run([binary, "--voices"], capture_output=True, text=True,
                                 timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(f"{binary} --voices failed: {exc}") from exc
    languages = set()
    for line in listing.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 2:
            languages.add(fields[1].lower())
    return frozenset(languages)
