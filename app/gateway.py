"""The process-wide objects every request and call shares, built once at startup."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from app.config import Settings
from streaming.ports import SpeechToText, TextToSpeech

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
    draining: bool = False
    # Set when the last live call ends while draining.
    idle: asyncio.Event = field(default_factory=asyncio.Event)

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

    async def aclose(self) -> None:
        for session in list(self.calls.values()):
            await session.aclose()
        await self.stt.aclose()
        await self.tts.aclose()
        await self.call_control.aclose()
        await self.rasa.aclose()
