"""The greetings and prompts are synthesized once at startup, sentence by sentence."""

from __future__ import annotations

from prometheus_client import REGISTRY

from app.config import Settings
from app.gateway import Gateway


def hits() -> float:
    return REGISTRY.get_sample_value("tts_cache_hits_total", {"engine": "null"}) or 0.0


async def test_startup_warms_every_sentence_the_session_speaks_on_its_own() -> None:
    settings = Settings().replace(stt={"engine": "null"}, tts={"engine": "null", "cache_size": 64})
    gateway = Gateway.build(settings)
    try:
        gateway.start_warming()
        assert gateway.warming is not None
        warmed = await gateway.warming
        # Each text the session speaks on its own, sentence by sentence as it synthesizes them.
        sentences = {
            "Buenos días, le atiende el asistente virtual de bloqueo de tarjetas.",
            "Buenas tardes, le atiende el asistente virtual de bloqueo de tarjetas.",
            "Buenas noches, le atiende el asistente virtual de bloqueo de tarjetas.",
            "¿En qué puedo ayudarle?",
            "¿Sigue ahí?", "Dígame en qué puedo ayudarle.",  # reprompt
            "Lo siento, estamos teniendo problemas técnicos.",  # apology
            "Gracias por llamar.", "Adiós.",  # goodbye
            "Disculpe, se ha cortado la comunicación.", "¿En qué estábamos?",  # resume
            "Un momento, por favor.",  # thinking
        }
        assert warmed == len(sentences)
        assert len(gateway.tts) == len(sentences)  # type: ignore[arg-type]

        before = hits()
        for sentence in sentences:  # exactly these are in the cache
            async for _ in gateway.tts.synthesize(sentence, settings.language.code):
                pass
        assert hits() == before + len(sentences)
    finally:
        await gateway.aclose()


async def test_no_warming_without_a_cache() -> None:
    settings = Settings().replace(stt={"engine": "null"}, tts={"engine": "null", "cache_size": 0})
    gateway = Gateway.build(settings)
    try:
        gateway.start_warming()
        assert gateway.warming is None
    finally:
        await gateway.aclose()
