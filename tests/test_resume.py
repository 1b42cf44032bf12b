"""A call outlives its instance, through real processes: gateway instances behind one public URL
(a TCP load balancer in the test, tests/support/balancer.py), one Rasa-compatible bot for all
of them, the simulator (app/simulate.py) playing Twilio, which follows the TwiML after
`</Connect>` when a stream ends. Twilio's REST API is a dead port: every hand-over over REST is
refused, as when Twilio cannot be reached.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np

from app.config import Settings
from app.engines import build_tts
from app.prompts import salutation
from app.simulate import SimulatedCall, SimulationResult, Turn, load_wav, simulate_call
from app.twiml import STREAM_PATH
from audio import mulaw
from audio.framing import SAMPLE_RATE
from streaming.tts.null import NullTextToSpeech
from tests.support.balancer import Balancer, balancing
from tests.support.caller_audio import SILENT_FRAME
from tests.support.gateway_process import (
    AUTH_TOKEN,
    NULL_FINAL,
    NULL_TEXT,
    GatewayProcess,
    LiveCall,
    gateway_process,
    rasa_bot,
)
from tests.support.rasa_bot import RasaBot

FIXTURES = Path(__file__).parent / "fixtures"
AGENT = "+34910000099"
PROMPTS = Settings().prompts
# What the null recognizer hears as the caller finishing a sentence (NULL_TEXT).
NULL_UTTERANCE = SILENT_FRAME * 5 + NULL_FINAL + SILENT_FRAME * 5
NEVER = Turn(when="bot_idle", delay=120)  # a caller who listens (the test cuts the line)


def behind(balancer: Balancer, **env: str) -> dict[str, str]:
    """Settings of an instance reached at the balancer's URL (signatures are checked on it)."""
    return {"SERVER_PUBLIC_URL": balancer.url, "TWILIO_FALLBACK_PHONE_NUMBER": AGENT, **env}


def call(url: str, turns: list[Turn], **options: object) -> SimulatedCall:
    options = {"auth_token": AUTH_TOKEN, "public_url": url, "realtime": False, "tail": 10,
               **options}
    return SimulatedCall(url, turns, **options)  # type: ignore[arg-type]


async def until(condition: Callable[[], Awaitable[bool]], what: str, timeout: float = 30,
                running: asyncio.Task[SimulationResult] | None = None) -> None:
    """Poll `condition`; fail after `timeout`, or at once if the simulated call ended early."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if running is not None and running.done():
            raise AssertionError(f"the call ended before {what}: {running.result().timeline()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def sample(gateway: GatewayProcess, name: str, **labels: str) -> float:
    return (await gateway.scrape()).get((name, frozenset(labels.items())), 0.0)


def streams_started(gateway: GatewayProcess, count: int,
                    live: int = 1) -> Callable[[], Awaitable[bool]]:
    """The instance has started `count` streams and `live` are on now."""

    async def started() -> bool:
        return (await sample(gateway, "gateway_stream_calls_total") == count
                and await sample(gateway, "gateway_stream_active_calls") == live)

    return started


def events(result: SimulationResult, kind: str) -> list[str]:
    return [e.detail for e in result.events if e.kind == kind]


def spans(result: SimulationResult) -> list[tuple[float, float]]:
    """(start, stop) of each stretch of bot audio the caller heard."""
    return list(zip(result.times("bot_audio_start"), result.times("bot_audio_stop")))


def pcm(audio: bytes) -> np.ndarray:
    return np.frombuffer(mulaw.decode(audio), np.int16).astype(float)


async def sentences(*texts: str) -> list[bytes]:
    """The sentences `texts` as the gateways' synthesizer (espeak, default settings) speaks them,
    one by one as the session plays them."""
    tts = build_tts(Settings())
    try:
        return [b"".join([chunk async for chunk in tts.synthesize(sentence, "es-ES")])
                for sentence in texts]
    finally:
        await tts.aclose()


def heard_as(result: SimulationResult, stream: int, spoken: list[bytes]) -> tuple[float, int]:
    """How closely what the caller heard first on the `stream`-th stream matches `spoken`, the
    sentences one after the other: the worst sentence's normalized correlation (1.0: the same),
    and the sample where the last one ended. The first is looked for in the stream's first half
    second, each other one within 0.1 s after the one before (in fast mode a sentence may come a
    few ms after the last one played out); espeak itself differs by a step of mu-law here and
    there."""
    at = round(result.times("stream_start")[stream] * SAMPLE_RATE)
    heard = pcm(result.heard)
    worst, window = 1.0, SAMPLE_RATE // 2
    for sentence in map(pcm, spoken):
        size, norm = len(sentence), np.linalg.norm(sentence)
        scores = [heard[at + shift:at + shift + size] @ sentence
                  / (np.linalg.norm(heard[at + shift:at + shift + size]) * norm or 1.0)
                  for shift in range(window) if at + shift + size <= len(heard)]
        if not scores:  # the caller heard less than that
            return 0.0, at
        best = int(np.argmax(scores))
        worst, at, window = min(worst, float(scores[best])), at + best + size, SAMPLE_RATE // 10
    return worst, at


async def test_a_call_goes_on_on_another_instance_after_kill_9_of_its_own() -> None:
    """The caller is understood on the first instance, which is killed mid-call; Twilio follows
    the Redirect to the second, which opens with prompts.resume (its audio, not the greeting's)
    and carries the same Rasa conversation: the next words reach Rasa with the same sender."""
    speech = {"STT_ENGINE": "pocketsphinx", "STT_POCKETSPHINX_WORKERS": "1",
              "STT_POCKETSPHINX_PHRASES": "block my card,talk to a person,yes,no",
              "TTS_ENGINE": "espeak"}
    with rasa_bot() as rasa, balancing() as balancer, \
            gateway_process(env=behind(balancer, **speech), rasa=rasa) as first, \
            gateway_process(env=behind(balancer, **speech), rasa=rasa) as second:
        balancer.route_to([first.url, second.url])
        bot = rasa[0]
        simulated = call(balancer.url, [Turn(audio=load_wav(FIXTURES / "block_my_card.wav")),
                                        Turn(audio=load_wav(FIXTURES / "talk_to_a_person.wav"),
                                             delay=0.5)])
        running = asyncio.create_task(simulated.run())

        async def first_turn_heard() -> bool:
            return bot.messages() == ["block my card"]

        await until(first_turn_heard, "the first turn to reach Rasa", running=running)
        first.kill()
        result = await asyncio.wait_for(running, 60)

        assert first.process.returncode == -signal.SIGKILL
        assert len(result.stream_sids) == 2
        assert events(result, "gateway_closed")[0] == "code 1006"  # the connection just died
        (redirect,) = events(result, "redirect")
        assert redirect.startswith(f"{balancer.url}/webhook/twilio/resume?resumes=0&started=")
        assert balancer.routed[:2] == [0, 0] and set(balancer.routed[2:]) == {1}
        # One conversation in Rasa across both instances, the caller understood on each.
        assert [(r["sender"], r["message"]) for r in bot.requests] == [
            (result.call_sid, "block my card"), (result.call_sid, "talk to a person")]
        assert result.latencies[-1] is not None  # and the reply to it was heard
        assert result.outcome == "the caller hung up"

        # What the caller heard on each stream first: the greeting, then prompts.resume.
        resume = await sentences("Disculpe, se ha cortado la comunicación.",
                                 "¿En qué estábamos?")
        greeting = await sentences(
            f"{salutation(Settings())}, le atiende el asistente virtual de bloqueo de tarjetas.",
            "¿En qué puedo ayudarle?")
        assert heard_as(result, 0, greeting)[0] > 0.9, result.timeline()
        resumed, end = heard_as(result, 1, resume)
        assert resumed > 0.9, result.timeline()
        assert heard_as(result, 1, greeting)[0] < 0.5
        # All of it, then quiet: the caller speaks next.
        assert mulaw.rms(mulaw.decode(result.heard[end:end + SAMPLE_RATE // 2])) < 50

        assert await sample(second, "gateway_resumes_total", outcome="stream") == 1
        assert '"event": "stream_resumed"' in second.output()


async def test_after_max_resumes_drops_the_caller_goes_to_the_agent() -> None:
    """Three network cuts on one call: two resumes (call.max_resumes), then the fallback."""
    with balancing() as balancer, gateway_process(env=behind(balancer)) as gateway:
        balancer.route_to([gateway.url])
        simulated = call(balancer.url, [NEVER])
        running = asyncio.create_task(simulated.run())
        for stream in (1, 2, 3):
            await until(streams_started(gateway, stream), f"stream {stream}", running=running)
            balancer.cut()
        result = await asyncio.wait_for(running, 30)

        assert len(result.stream_sids) == 3
        assert [side.custom_parameters["resumes"] for side in simulated.streams] == ["0", "1", "2"]
        assert [url.split("?")[1].split("&")[0] for url in events(result, "redirect")] == [
            "resumes=0", "resumes=1", "resumes=2"]
        # The call's start travels unchanged, so call.max_duration_seconds counts the whole call.
        (started,) = {side.custom_parameters["started"] for side in simulated.streams}
        assert [url.split("&")[1] for url in events(result, "redirect")] == [
            f"started={started}"] * 3
        assert 0 <= time.time() - int(started) < 30
        assert events(result, "say") == [PROMPTS.transfer]
        assert result.outcome == f"<Dial> {AGENT}"
        assert await sample(gateway, "gateway_resumes_total", outcome="stream") == 2
        assert await sample(gateway, "gateway_resumes_total", outcome="exhausted") == 1


async def test_a_full_or_draining_instance_resumes_the_call_on_the_gather_path() -> None:
    with balancing() as balancer, \
            gateway_process(env=behind(balancer, SERVER_MAX_ACTIVE_CALLS="2")) as gateway:
        balancer.route_to([gateway.url])
        signed = balancer.url.replace("http://", "ws://") + STREAM_PATH
        # Full: two more calls arrive on the instance (not through the balancer, so no cut
        # reaches them) while this one's stream drops.
        running = asyncio.create_task(call(balancer.url, [NEVER]).run())
        await until(streams_started(gateway, 1), "the call's stream", running=running)
        async with LiveCall.open(gateway.ws_url, "CA" + "1" * 32, signed_url=signed) as other:
            async with LiveCall.open(gateway.ws_url, "CA" + "2" * 32, signed_url=signed):
                await until(streams_started(gateway, 3, live=3), "three live calls")
                balancer.cut()
                full = await asyncio.wait_for(running, 30)
            assert await sample(gateway, "gateway_resumes_total", outcome="gather") == 1
            # Draining: a stream drops after SIGTERM (`other` keeps the drain going).
            running = asyncio.create_task(call(balancer.url, [NEVER]).run())
            await until(streams_started(gateway, 4, live=2), "the second call's stream",
                        running=running)
            gateway.signal(signal.SIGTERM)
            await gateway.until_not_ready()
            balancer.cut()
            draining = await asyncio.wait_for(running, 30)
            assert await sample(gateway, "gateway_resumes_total", outcome="gather") == 2
            await other.ws.send(other.twilio.stop())
        # Its last call over, the draining instance exits.
        assert await asyncio.to_thread(gateway.wait, 15) == 0

        for result in (full, draining):
            assert len(result.stream_sids) == 1
            assert result.outcome.startswith("<Gather input='speech dtmf'> " + PROMPTS.resume)
            assert result.outcome.endswith("/webhook/twilio/speech?noinput=0")
        resumes = [(r["outcome"], r["reason"]) for r in gateway.records("resume")]
        assert resumes == [("gather", "at_capacity"), ("gather", "draining")]


def transferring_bot() -> RasaBot:
    return RasaBot(reply=lambda text: [
        {"recipient_id": "x", "text": "Le paso."},
        {"recipient_id": "x", "custom": {"action": "transfer", "number": "+34911000111"}}])


async def test_a_transfer_twilio_refused_is_carried_out_by_the_redirect_it_comes_back_to() -> None:
    """One instance: the process that closed the stream answers the Redirect with the <Dial> to
    the number the bot asked for, instead of resuming."""
    with rasa_bot(transferring_bot()) as rasa, gateway_process(rasa=rasa) as gateway:
        result = await simulate_call(gateway.url, [Turn(audio=NULL_UTTERANCE)] * 2,
                                     auth_token=AUTH_TOKEN, realtime=False, tail=10)
        assert len(result.stream_sids) == 1  # never back to the bot
        assert result.outcome == "<Dial> +34911000111"
        assert events(result, "say") == [PROMPTS.transfer]
        assert [r["message"] for r in rasa[0].requests] == [NULL_TEXT]
        assert await sample(gateway, "gateway_resumes_total", outcome="handover") == 1
        assert '"event": "call_control_failed"' in gateway.output()


async def test_when_hand_overs_fail_on_other_instances_the_resumes_bound_the_loop() -> None:
    """The worst case: requests go round-robin over two instances, so the Redirect never comes
    back to the process whose hand-over failed. The call is resumed `call.max_resumes` times (the
    bot asks for the transfer on each stream), then the agent: three streams, not forever."""
    with rasa_bot(transferring_bot()) as rasa, balancing("round_robin") as balancer, \
            gateway_process(env=behind(balancer), rasa=rasa) as one, \
            gateway_process(env=behind(balancer), rasa=rasa) as other:
        balancer.route_to([one.url, other.url])
        result = await call(balancer.url, [Turn(audio=NULL_UTTERANCE)] * 5).run()

        assert len(result.stream_sids) == 3
        # voice, stream, Redirect, stream, Redirect, stream, Redirect: the streams on `other`,
        # every Redirect on `one`, which never knew why they ended.
        assert balancer.routed == [0, 1, 0, 1, 0, 1, 0]
        assert [(r["sender"], r["message"]) for r in rasa[0].requests] == [
            (result.call_sid, NULL_TEXT)] * 3
        assert result.outcome == f"<Dial> {AGENT}"  # the fallback's agent, not the bot's number
        assert await sample(one, "gateway_resumes_total", outcome="stream") == 2
        assert await sample(one, "gateway_resumes_total", outcome="exhausted") == 1
        assert await sample(other, "gateway_stream_call_control_errors_total",
                            action="transfer") == 3


async def test_the_longest_call_hears_goodbye_and_is_hung_up() -> None:
    """The hang-up over REST is refused too: the Redirect back to the instance hangs up."""
    with gateway_process(env={"CALL_MAX_DURATION_SECONDS": "2",
                              "GREETING_TEXT": "{salutation}."}) as gateway:
        result = await simulate_call(gateway.url, [NEVER], auth_token=AUTH_TOKEN, tail=10)
        assert result.outcome == "<Hangup>"
        (_, greeting_end), (goodbye, goodbye_end) = spans(result)
        assert goodbye >= 2.0 > greeting_end  # real time: the limit counts from the call's start
        # The null synthesizer speaks so many ms per character: the goodbye, whole.
        characters = len("Gracias por llamar.") + len("Adiós.")  # its two sentences
        assert abs(goodbye_end - goodbye - characters * NullTextToSpeech().ms_per_char / 1000
                   ) < 0.1
        assert await sample(gateway, "gateway_stream_max_duration_total") == 1
        assert await sample(gateway, "gateway_resumes_total", outcome="handover") == 1
        assert '"event": "max_duration"' in gateway.output()
