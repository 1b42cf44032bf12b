"""The decoding side of the pocketsphinx engine: what runs inside each worker process.

streaming/stt/pocketsphinx.py (the event-loop side) submits `decode(stream_id, ops)` batches to a
single-process pool whose initializer is `init_worker(spec)`; here each utterance gets a Decoder
from a small pool for its duration only, 8 kHz audio is resampled to the model's 16 kHz, and a
phrase grammar (with a "garbage" loop of phones) decides what counts as a final.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pocketsphinx

from audio.framing import SAMPLE_RATE
from audio.resample import StreamResampler

DECODER_RATE = 16000
PHONES = (
    "AA AE AH AO AW AY B CH D DH EH ER EY F G HH IH IY JH K L M N NG OW OY P R S SH T TH "
    "UH UW V W Y Z ZH"
).split()
# Cepstral mean to start a call's first utterance from. The model's default suits wideband
# audio; 8 kHz telephone audio upsampled to 16 kHz has nothing above 4 kHz and a very different
# mean: a fresh decoder recognized 18/80 test phrases with the default, 73/80 with this one.
# Measured as the mean over 124 English utterances of tests/fixtures' pipeline (espeak-ng voices
# through 8 kHz mu-law); each call then carries its own mean from one utterance to the next.
TELEPHONE_CMN = "45.2,22.6,-40.2,40.7,-30.3,0.1,9.8,-33.1,19.9,-16.8,3.0,8.2,-16.1"
_GARBAGE = "_"  # prefix of the phone "words"; phrase words are letters and apostrophes only

# ("start", ms) | ("audio", pcm16 at 8 kHz) | ("end", ms): what a worker is asked to do.
Op = tuple[str, Any]
# (kind, text, start_ms, end_ms) with kind "final", "interim" or "rejected".
Result = tuple[str, str, int, int]


@dataclass(frozen=True, slots=True)
class Spec:
    """Everything a worker needs to build decoders; sent once to each worker process."""

    phrases: tuple[str, ...]  # normalized: lower case words separated by one space
    pronunciations: dict[str, tuple[str, ...]]
    garbage_probability: float
    max_idle_decoders: int
    interim_ms: int


_STATE: _Decoding | None = None


def init_worker(spec: Spec) -> None:
    global _STATE
    pocketsphinx.set_loglevel("FATAL")
    _STATE = _Decoding(spec)


def warm() -> int:
    assert _STATE is not None
    _STATE.release(_STATE.acquire())
    return len(_STATE.idle)


def decode(stream_id: int, ops: list[Op]) -> list[Result]:
    assert _STATE is not None
    return _STATE.run(stream_id, ops)


def forget(stream_id: int) -> None:
    assert _STATE is not None
    _STATE.forget(stream_id)


@dataclass(slots=True)
class _Utterance:
    decoder: pocketsphinx.Decoder
    resampler: StreamResampler
    start_ms: int
    decoded: int = 0  # 16 kHz bytes
    unreported: int = 0  # bytes decoded since the last interim
    interim: str = ""


class _Decoding:
    """A worker's decoders and the utterances in progress, by stream id. Single-threaded."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.idle: list[pocketsphinx.Decoder] = []
        self.utterances: dict[int, _Utterance] = {}
        self.cmn: dict[int, str] = {}  # each call's channel estimate, carried across utterances
        self.interim_bytes = spec.interim_ms * DECODER_RATE * 2 // 1000

    def acquire(self) -> pocketsphinx.Decoder:
        return self.idle.pop() if self.idle else self._build()

    def release(self, decoder: pocketsphinx.Decoder) -> None:
        if len(self.idle) < self.spec.max_idle_decoders:
            self.idle.append(decoder)

    def _build(self) -> pocketsphinx.Decoder:
        if not self.spec.phrases:
            return pocketsphinx.Decoder(samprate=DECODER_RATE, loglevel="FATAL")
        # Only the grammar's words: ~6 MB per decoder instead of ~29 MB with all of CMUdict.
        # The lattice best path loses the last words of FSG results when decoding live.
        decoder = pocketsphinx.Decoder(samprate=DECODER_RATE, loglevel="FATAL",
                                       lm=None, dict=None, bestpath=False)
        for word, prons in self.spec.pronunciations.items():
            for n, phones in enumerate(prons, start=1):
                decoder.add_word(word if n == 1 else f"{word}({n})", phones, False)
        for phone in PHONES:
            decoder.add_word(_GARBAGE + phone.lower(), phone, False)
        fsg = decoder.create_fsg("phrases", 0, 1, list(self._transitions()))
        decoder.add_fsg("phrases", fsg)
        decoder.activate_search("phrases")
        return decoder

    def _transitions(self) -> Iterable[tuple[Any, ...]]:
        """State 0 starts, 1 ends; each phrase is a chain of words, garbage a loop of phones."""
        states = itertools.count(2)
        first = 1.0 / len(self.spec.phrases)
        for phrase in self.spec.phrases:
            words = phrase.split()
            previous = 0
            for n, word in enumerate(words):
                following = 1 if n == len(words) - 1 else next(states)
                yield previous, following, first if n == 0 else 1.0, word
                previous = following
        garbage = next(states)
        for phone in PHONES:
            word = _GARBAGE + phone.lower()
            yield 0, garbage, self.spec.garbage_probability, word
            yield garbage, garbage, self.spec.garbage_probability, word
        yield garbage, 1, 1.0

    def run(self, stream_id: int, ops: list[Op]) -> list[Result]:
        results: list[Result] = []
        try:
            for kind, value in ops:
                if kind == "start":
                    self._abandon(stream_id)
                    decoder = self.acquire()
                    decoder.set_cmn(self.cmn.get(stream_id, TELEPHONE_CMN))
                    decoder.start_utt()
                    self.utterances[stream_id] = _Utterance(
                        decoder, StreamResampler(SAMPLE_RATE, DECODER_RATE), value
                    )
                elif kind == "audio" and stream_id in self.utterances:
                    utterance = self.utterances[stream_id]
                    self._process(utterance, utterance.resampler.process(value))
                elif kind == "end" and stream_id in self.utterances:
                    results.append(self._finish(stream_id, value))
            utterance = self.utterances.get(stream_id)
            if utterance is not None and utterance.unreported >= self.interim_bytes:
                utterance.unreported = 0
                interim = self._interim(utterance)
                if interim is not None:
                    results.append(interim)
        except Exception as exc:
            self.utterances.pop(stream_id, None)  # its decoder may be inconsistent: dropped
            raise RuntimeError(f"decoder error: {exc!r}") from None
        return results

    def _process(self, utterance: _Utterance, pcm: bytes) -> None:
        if pcm:  # process_raw rejects empty buffers
            utterance.decoder.process_raw(pcm)
            utterance.decoded += len(pcm)
            utterance.unreported += len(pcm)

    def _finish(self, stream_id: int, end_ms: int) -> Result:
        utterance = self.utterances.pop(stream_id)
        decoder = utterance.decoder
        self._process(utterance, utterance.resampler.process(b"", last=True))
        decoder.end_utt()
        hypothesis = decoder.hyp()
        self.cmn[stream_id] = decoder.get_cmn(False)
        self.release(decoder)
        text = self._accept(hypothesis.hypstr if hypothesis is not None else "")
        if text is None:
            return "rejected", "", utterance.start_ms, end_ms
        return "final", text, utterance.start_ms, end_ms

    def _interim(self, utterance: _Utterance) -> Result | None:
        hypothesis = utterance.decoder.hyp()
        text = hypothesis.hypstr if hypothesis is not None else ""
        if not text or text == utterance.interim or _GARBAGE in text:
            return None
        utterance.interim = text
        heard_ms = utterance.decoded * 1000 // (DECODER_RATE * 2)
        return "interim", text, utterance.start_ms, utterance.start_ms + heard_ms

    def _accept(self, text: str) -> str | None:
        """Grammar: exactly one phrase (a partial path or garbage is a rejection)."""
        if not self.spec.phrases:
            return text or None
        return text if text in self.spec.phrases else None

    def forget(self, stream_id: int) -> None:
        self._abandon(stream_id)
        self.cmn.pop(stream_id, None)

    def _abandon(self, stream_id: int) -> None:
        utterance = self.utterances.pop(stream_id, None)
        if utterance is not None:
            utterance.decoder.end_utt()
            self.release(utterance.decoder)
