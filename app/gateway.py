"""The process-wide objects every request and call shares, built once at startup."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from app import metrics
from app.config import Settings
from app.prompts import spoken_prompts
from app.resume import FailedHandovers
from app.security import UsedStreamTokens
from streaming.ports import SpeechToText, TextToSpeech
from streaming.playback import split_sentences
from streaming.tasks import cancel_and_wait

if TYPE_CHECKING:
    from app.rasa import RasaClient
    from app.twilio_rest import TwilioCallControl
    from streaming.session import CallSession


@dataclass
class Gateway:
    settings: Settings
    rasa: RasaClient
    call_control: TwilioCallControl
    stt: SpeechToText
    tts: TextToSpeech
    # Live streamed calls by CallSid; the status webhook and drain look here.
    calls: dict[str, CallSession] = field(default_factory=dict)
    # Hand-overs Twilio refused in this process, for the resume webhook (app/resume.py).
    failed_handovers: FailedHandovers = field(default_factory=FailedHandovers)
    # Stream tokens that opened a stream, shared by the instance's workers (app/security.py).
    stream_tokens: UsedStreamTokens = field(default_factory=UsedStreamTokens.for_instance)
    draining: bool = False
    warming: asyncio.Task[int] | None = None

    @classmethod
    def build(cls, settings: Settings) -> Gateway:
        from app.engines import build_stt, build_tts
        from app.rasa import RasaClient
        from app.twilio_rest import TwilioCallControl

        return cls(
            settings=settings,
            rasa=RasaClient(settings.rasa),
            call_control=TwilioCallControl(settings),
            stt=build_stt(settings),
            tts=build_tts(settings),
        )

    def at_capacity(self) -> bool:
        """The instance carries server.max_active_calls streamed calls: it takes no new stream.

        Counted over the whole instance, not this worker: /ready and the voice webhook are
        answered by whichever worker takes the connection, and the call's websocket then goes to
        whichever worker accepts it.
        """
        return metrics.live_calls() >= self.settings.server.max_active_calls

    def start_warming(self) -> None:
        """Synthesize the greetings and prompts in the background, so calls hear them at once.

        The session synthesizes sentence by sentence, so the cache is filled the same way.
        """
        warm = getattr(self.tts, "warm", None)
        if warm is None:
            return
        sentences = [s for text in spoken_prompts(self.settings) for s in split_sentences(text)]
        self.warming = asyncio.create_task(
            warm(sentences, self.settings.language.code), name="tts-warm"
        )

    async def aclose(self) -> None:
        if self.warming is not None:
            await cancel_and_wait(self.warming)
        for session in list(self.calls.values()):
            await session.aclose()
        await self.stt.aclose()
        await self.tts.aclose()
        await self.call_control.aclose()
        await self.rasa.aclose()
