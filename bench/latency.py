"""Turn latency benchmark: end of the caller's speech -> the reply's first audio, stage by stage,
and the time to the first greeting, for the gateway's engine setups.

    python bench/latency.py                       # every setup, 8 turns each, ~5 min on 2 cores
    python bench/latency.py --setups google,google-late --turns 20
    python bench/latency.py --quick               # one short turn and greeting each (smoke test)

Setups (the gateway as `python -m app serve`, one worker, not pinned; Rasa is the Rasa-compatible
test bot answering every turn after `--rasa-ms`, 100 ms, with "Entendido <n>, <what it heard>.",
a new sentence each turn, so no reply comes from the synthesis cache):
- null: the zero-cost engines (the recognizer's final is a marker frame right at the end of
  speech): what the gateway itself adds, plus Rasa;
- offline: the default offline engines, Whisper and espeak-ng;
- google / google-late: the Google engines against the local fakes of tests/support with
  realistic delays: the fake recognizer's own endpointer finalizes 1.5 s of audio after the
  speech, a half-close finalizes at once; the fake synthesizer answers after 150 ms.
  `google` has early finalization on (the default), `google-late` off.

Per turn, one caller (app.simulate in real time) speaks a Spanish fixture once the bot's previous
reply has played. Figures: what the caller observed (the simulator's end of speech, by its own
energy detector, -> first reply audio received), and the gateway's own stages from its `turn`
log lines (streaming/turns.py: endpointing, bot, synthesis, total); p50 / p95. Time to first
greeting: `--greetings` calls (fast mode) from the voice webhook's answer to the first greeting
audio on the socket, and the same as the gateway measures it (gateway_stream_greeting_seconds:
from the stream's `issued` parameter, the webhook's answer, to the first frame sent). Figures
are printed, nothing is asserted; the machine's load is printed first and last.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import sys
import tempfile
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.simulate import SimulationResult, Turn, load_wav, simulate_call, speech_segments  # noqa: E402
from audio import mulaw  # noqa: E402
from audio.framing import FRAME_BYTES, SAMPLE_RATE  # noqa: E402
from bench.servers import ROOT, Server, ServerOptions, started  # noqa: E402
from streaming.stt.null import MARKER  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
CALLER = ["es_bloquear_tarjeta", "es_si_por_favor", "es_robaron_debito", "es_no_gracias",
          "es_hablar_ejecutivo", "es_perdi_credito", "spanish_bloquear"]
SETUPS = ("null", "offline", "google", "google-late")
STAGES = ("endpointing", "bot", "synthesis", "total")
GOOGLE_ENDPOINTER_MS = 1500
GOOGLE_TTS_SECONDS = 0.15
GREETING = "{salutation}, le atiende el asistente virtual. ¿En qué puedo ayudarle?"
QUICK_GREETING, QUICK_CALLER = "{salutation}.", "es_si_por_favor"  # the shortest of each


@dataclass
class Figures:
    setup: str
    observed: list[float] = field(default_factory=list)  # the caller's, seconds
    stages: dict[str, list[float]] = field(default_factory=dict)  # the gateway's, ms
    turns: int = 0
    greetings: list[float] = field(default_factory=list)  # webhook answered -> first audio
    greeting_share: float | None = None  # the gateway's mean, webhook answer -> first frame sent


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def caller_audio(name: str, null_final: bool) -> bytes:
    """A fixture as the caller says it; for the null recognizer its final's marker frame right
    where the speech ends (then the fixture's trailing silence)."""
    audio = load_wav(FIXTURES / f"{name}.wav")
    if not null_final:
        return audio
    end = round(speech_segments(audio)[-1][1] * SAMPLE_RATE) // FRAME_BYTES * FRAME_BYTES
    return audio[:end] + MARKER.ljust(FRAME_BYTES, MARKER[:1]) + mulaw.silence(len(audio) - end)


def environment(setup: str, speech: str = "", voice: str = "",
                greeting: str = GREETING) -> dict[str, str]:
    env = {"GREETING_TEXT": greeting, "CALL_NO_INPUT_SECONDS": "60", "LOGGING_LEVEL": "INFO"}
    if setup == "null":
        return {**env, "STT_ENGINE": "null", "TTS_ENGINE": "null"}
    if setup == "offline":
        return {**env, "STT_ENGINE": "whisper", "TTS_ENGINE": "espeak"}
    return {**env, "STT_ENGINE": "google", "TTS_ENGINE": "google",
            "STT_GOOGLE_ENDPOINT": speech, "STT_GOOGLE_INSECURE": "true",
            "STT_GOOGLE_EARLY_FINALIZATION": str(setup == "google").lower(),
            "TTS_GOOGLE_ENDPOINT": voice, "TTS_GOOGLE_INSECURE": "true"}


def turn_lines(log: Path) -> list[dict[str, float | None]]:
    lines = []
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        if '"event": "turn"' in line:
            lines.append(json.loads(line))
    return lines


def greeting_share(url: str) -> tuple[float, float]:
    """gateway_stream_greeting_seconds: (sum, count)."""
    text = httpx.get(url + "/metrics", trust_env=False, timeout=5).text
    found = {s.name: s.value for f in text_string_to_metric_families(text)
             if f.name == "gateway_stream_greeting_seconds" for s in f.samples}
    return (found.get("gateway_stream_greeting_seconds_sum", 0.0),
            found.get("gateway_stream_greeting_seconds_count", 0.0))


async def measure(setup: str, turns: int, greetings: int, rasa_url: str, logs: Path,
                  quick: bool = False) -> Figures:
    figures = Figures(setup)
    async with AsyncExitStack() as stack:
        speech = voice = ""
        if setup.startswith("google"):
            from tests.support.google_fakes import FakeSpeechServer, FakeTextToSpeechServer

            stt = FakeSpeechServer(final_every=None, endpoint_ms=GOOGLE_ENDPOINTER_MS)
            tts = FakeTextToSpeechServer(delay_seconds=GOOGLE_TTS_SECONDS,
                                         audio_for=lambda text: mulaw.silence(480 * len(text)))
            speech = (await stack.enter_async_context(stt)).address
            voice = (await stack.enter_async_context(tts)).address
        options = ServerOptions(pinned=False, stt="", tts="",
                                environment=environment(setup, speech, voice,
                                                        QUICK_GREETING if quick else GREETING))
        server: Server = await asyncio.to_thread(
            stack.enter_context, started("gateway", options, rasa_url, logs))
        [log] = logs.glob("gateway-*.log")  # bench/servers.py: one per server process
        await asyncio.sleep(1.0)  # the prompts are synthesized into the cache at startup
        before = greeting_share(server.url)
        for _ in range(greetings):
            result = await simulate_call(server.url, [], auth_token=server.token,
                                         realtime=False, tail=3)
            if result.first_audio is not None:
                figures.greetings.append(result.first_audio)
        after = greeting_share(server.url)
        if after[1] > before[1]:
            figures.greeting_share = (after[0] - before[0]) / (after[1] - before[1])
        caller = [QUICK_CALLER] if quick else CALLER
        plays = [Turn(audio=caller_audio(caller[k % len(caller)], setup == "null"), wait_limit=15)
                 for k in range(turns)]
        result: SimulationResult = await simulate_call(server.url, plays, auth_token=server.token,
                                                       tail=15)
        figures.observed = [x for x in result.latencies if x is not None]
        lines = turn_lines(log)
        figures.turns = len(lines)
        figures.stages = {stage: [line[f"{stage}_ms"] for line in lines
                                  if line.get(f"{stage}_ms") is not None] for stage in STAGES}
    return figures


def shown(values: list[float], scale: float = 1.0) -> str:
    if not values:
        return "-"
    return f"{percentile(values, 0.5) * scale:.2f} / {percentile(values, 0.95) * scale:.2f}"


def report(all_figures: list[Figures], turns: int) -> None:
    print("\nend of speech -> first reply audio, seconds, p50 / p95")
    print(f"{'setup':<12} {'turns':>6}  {'caller observed':>16}  "
          + "  ".join(f"{stage:>13}" for stage in STAGES))
    for f in all_figures:
        stages = "  ".join(f"{shown(f.stages.get(stage, []), 0.001):>13}" for stage in STAGES)
        print(f"{f.setup:<12} {f'{f.turns}/{turns}':>6}  {shown(f.observed):>16}  {stages}")
    print("\ntime to first greeting (voice webhook answered -> first greeting audio), seconds")
    for f in all_figures:
        share = "-" if f.greeting_share is None else f"{f.greeting_share * 1000:.1f} ms"
        spread = (f"p50 {percentile(f.greetings, 0.5):.3f}, p95 {percentile(f.greetings, 0.95):.3f}"
                  f", max {max(f.greetings):.3f}" if f.greetings else "none heard")
        print(f"{f.setup:<12} {spread} ({len(f.greetings)} calls); as the gateway measures "
              f"it (answer -> first frame sent): mean {share}")


def machine(label: str) -> None:
    load = os.getloadavg()
    print(f"{label}: {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f}", flush=True)


async def run(setups: list[str], turns: int, greetings: int, rasa_ms: int,
              quick: bool = False) -> list[Figures]:
    from tests.support.rasa_bot import RasaBot
    from tests.support.servers import running

    numbers = itertools.count(1)
    bot = RasaBot(delay_seconds=rasa_ms / 1000, reply=lambda text: [
        {"recipient_id": "bench", "text": f"Entendido {next(numbers)}, {text}."}])
    results = []
    with tempfile.TemporaryDirectory(prefix="latency-") as folder, running(bot.app()) as rasa:
        for setup in setups:
            logs = Path(folder) / setup
            logs.mkdir()
            print(f"{setup}: measuring", flush=True)
            results.append(await measure(setup, turns, greetings,
                                         f"{rasa.url}/webhooks/rest/webhook", logs, quick))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setups", default=",".join(SETUPS),
                        help=f"comma-separated, from {', '.join(SETUPS)}")
    parser.add_argument("--turns", type=int, default=8, help="caller turns per setup")
    parser.add_argument("--greetings", type=int, default=5, help="greeting calls per setup")
    parser.add_argument("--rasa-ms", type=int, default=100, help="the bot's answer delay")
    parser.add_argument("--quick", action="store_true",
                        help="one turn of the shortest fixture and one one-word greeting each")
    args = parser.parse_args(argv)
    setups = [name.strip() for name in args.setups.split(",") if name.strip()]
    if unknown := set(setups) - set(SETUPS):
        print(f"latency: unknown setups {sorted(unknown)}", file=sys.stderr)
        return 2
    if args.quick:
        args.turns, args.greetings = 1, 1
    machine("before")
    print(f"Rasa answers after {args.rasa_ms} ms; the Google fakes: endpointer "
          f"{GOOGLE_ENDPOINTER_MS} ms after speech, synthesis {GOOGLE_TTS_SECONDS * 1000:.0f} ms")
    figures = asyncio.run(run(setups, args.turns, args.greetings, args.rasa_ms, args.quick))
    report(figures, args.turns)
    machine("after")
    return 0


if __name__ == "__main__":
    sys.exit(main())
