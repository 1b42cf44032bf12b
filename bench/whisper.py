"""Whisper recognizer benchmark: decode cost, accuracy, loop lag, latency and capacity.

    python bench/whisper.py                          # every figure, ~4 min on 2 cores
    python bench/whisper.py --callers 1,4,8 --turns 3 --capacity-calls 4 --capacity-seconds 40
    python bench/whisper.py --quick                  # the least of each, for the smoke test

1. Decoding, in this process with the gateway's settings: each Spanish fixture cut as the
   gateway cuts it (`audio.segmenter`) and decoded `--repeat` times one after another: process
   CPU seconds per utterance (all CTranslate2 threads), real-time factor (decode wall time /
   utterance length), word error rate against the words the fixtures say.
2. Event-loop lag while 6 utterances decode (`--lag-decodes`): a 5 ms asyncio timer, with the
   engine's thread pool
   and, for comparison, with a single-process pool holding its own model.
3. End to end, through `python -m app serve` (Whisper, espeak, one worker) and `app.simulate` in
   real time: N callers speak the fixtures at the same moments; end of speech -> transcript
   (arrival at the local Rasa-compatible bot) and end of speech -> first reply audio, p50/p95.
4. Capacity: callers who speak again as soon as the bot's short reply has played (~every 6 s),
   for a window; the gateway's CPU per caller gives the calls one core carries.

Settings come from config.yaml and the environment, for this process and the gateway alike
(`STT_ENDPOINT_SILENCE_MS=300 python bench/whisper.py`). Figures are printed, nothing is
asserted. The machine's load is printed first and last: other work on the cores moves every
figure.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import unicodedata
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.config import load_settings  # noqa: E402
from app.engines import build_stt  # noqa: E402
from app.simulate import SimulationResult, Turn, load_wav, simulate_call  # noqa: E402
from audio import wav  # noqa: E402
from audio.framing import SAMPLE_RATE  # noqa: E402
from audio.segmenter import UtteranceSegmenter  # noqa: E402
from bench.servers import wait_healthy  # noqa: E402
from streaming.stt.whisper import WhisperSpeechToText  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
AUTH_TOKEN = "bench-auth-token"
# What each Spanish fixture says (tests/fixtures/make_fixtures.sh).
SPOKEN = {
    "spanish_bloquear": "quiero bloquear mi tarjeta de crédito",
    "es_bloquear_tarjeta": "quiero bloquear mi tarjeta",
    "es_robaron_debito": "me robaron la tarjeta de débito",
    "es_hablar_ejecutivo": "quiero hablar con un ejecutivo",
    "es_si_por_favor": "sí, por favor",
    "es_perdi_credito": "perdí mi tarjeta de crédito",
    "es_no_gracias": "no, gracias",
}
REPLY = "De acuerdo. Un momento."
QUICK_FIXTURE = "es_bloquear_tarjeta"  # --quick's one utterance: short, always heard


def words(text: str) -> list[str]:
    letters = unicodedata.normalize("NFKD", text.lower())
    return "".join(c if c.isalnum() else " " for c in letters
                   if not unicodedata.combining(c)).split()


def edits(reference: list[str], hypothesis: list[str]) -> int:
    """Word-level Levenshtein distance."""
    row = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, 1):
        previous, row[0] = row[0], i
        for j, hyp in enumerate(hypothesis, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (ref != hyp))
    return row[-1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def utterance(engine: WhisperSpeechToText, name: str) -> bytes:
    """The fixture's speech as the gateway would hand it to the decoder."""
    segmenter = UtteranceSegmenter(threshold=engine.energy_threshold,
                                   end_silence_ms=engine.endpoint_silence_ms)
    found = list(segmenter.push(wav.read_mulaw_8k(FIXTURES / f"{name}.wav")))
    last = segmenter.flush()
    return b"".join(u.audio for u in found + ([last] if last else []))


def decoding(engine: WhisperSpeechToText, repeat: int, names: list[str]) -> None:
    print("\n1. decoding, one utterance at a time (this process, the gateway's settings)")
    cpu, rtf, total_edits, total_words = [], [], 0, 0
    for name in names:
        said = SPOKEN[name]
        audio = utterance(engine, name)
        for n in range(repeat):
            wall, used = time.perf_counter(), time.process_time()
            result = engine.decode(audio, "es")
            wall, used = time.perf_counter() - wall, time.process_time() - used
            cpu.append(used)
            rtf.append(wall / (len(audio) / SAMPLE_RATE))
            if n == 0:
                errors = edits(words(said), words(result.text))
                total_edits += errors
                total_words += len(words(said))
                heard = result.text or f"({result.rejected})"
                print(f"   {name:<22} {len(audio) / SAMPLE_RATE:4.1f} s  {wall:4.2f} s wall  "
                      f"{used:4.2f} s CPU  {errors} errors  {heard!r}")
    print(f"   CPU per utterance p50 {statistics.median(cpu):.2f} s, max {max(cpu):.2f} s; "
          f"real-time factor p50 {statistics.median(rtf):.2f}")
    print(f"   word error rate {total_edits}/{total_words} = {total_edits / total_words:.1%}")


_PROCESS_ENGINE: WhisperSpeechToText | None = None


def _process_init() -> None:
    global _PROCESS_ENGINE
    _PROCESS_ENGINE = build_stt(load_settings())  # type: ignore[assignment]


def _process_decode(audio: bytes) -> str:
    assert _PROCESS_ENGINE is not None
    return _PROCESS_ENGINE.decode(audio, "es").text


async def lag_while(decodes: Any, pool: Executor | None, audio: bytes,
                    count: int) -> list[float]:
    loop = asyncio.get_running_loop()
    lags: list[float] = []
    done = False

    async def ticker() -> None:
        while not done:
            due = loop.time() + 0.005
            await asyncio.sleep(0.005)
            lags.append(loop.time() - due)

    task = asyncio.create_task(ticker())
    await asyncio.gather(*(loop.run_in_executor(pool, decodes, audio) for _ in range(count)))
    done = True
    await task
    return lags


def loop_lag(engine: WhisperSpeechToText, count: int, name: str) -> None:
    print(f"\n2. event-loop lag while {count} utterances decode (5 ms timer)")
    audio = utterance(engine, name)
    pools: list[tuple[str, Any, Executor | None]] = [
        ("thread pool (the engine's)", lambda a: engine.decode(a, "es"), engine.pool)]
    process_pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_process_init)
    process_pool.submit(_process_decode, audio).result()  # loaded and warm
    pools.append(("process pool, 1 process", _process_decode, process_pool))
    try:
        for label, decodes, pool in pools:
            started = time.perf_counter()
            lags = asyncio.run(lag_while(decodes, pool, audio, count))
            wall = time.perf_counter() - started
            print(f"   {label:<28} lag p50 {percentile(lags, 0.5) * 1000:5.1f} ms  "
                  f"p99 {percentile(lags, 0.99) * 1000:5.1f} ms  max {max(lags) * 1000:5.1f} ms  "
                  f"({wall:.1f} s for {count})")
    finally:
        process_pool.shutdown()


# -- through the real gateway ---------------------------------------------------------------


class Arrivals:
    """The Rasa-compatible bot, and when each of a call's requests arrived (time.monotonic)."""

    def __init__(self) -> None:
        from tests.support.rasa_bot import RasaBot

        self.bot = RasaBot(reply=lambda text: [{"recipient_id": "x", "text": REPLY}])

    def count(self) -> int:
        return len(self.bot.received_at)

    def of(self, call_sid: str) -> list[tuple[float, str]]:
        return self.bot.received(call_sid)


@contextmanager
def gateway(rasa_url: str, logs: Path) -> Iterator[psutil.Process]:
    from tests.support.servers import free_port

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
           "RASA_URL": rasa_url, "SERVER_HOST": "127.0.0.1", "SERVER_PORT": str(port),
           "SERVER_PUBLIC_URL": f"http://127.0.0.1:{port}", "GREETING_TEXT": "{salutation}.",
           "TWILIO_API_BASE_URL": "http://127.0.0.1:9", "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
           "CALL_NO_INPUT_SECONDS": "60"}
    log = open(logs / "gateway.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "app", "serve", "--workers", "1"], cwd=ROOT,
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_healthy(proc, f"http://127.0.0.1:{port}", 60, f"gateway (see {log.name})")
        process = psutil.Process(proc.pid)
        process.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
        yield process
    finally:
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGINT)  # no drain: stop at once
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def turn_figures(result: SimulationResult, arrivals: Arrivals) -> tuple[list[float], list[float]]:
    """(end of speech -> transcript, end of speech -> first reply audio) of each turn heard."""
    ends = result.times("caller_speech_end")
    got = arrivals.of(result.call_sid)
    transcripts = [t - (result.started_at + end) for (t, _), end in zip(got, ends)]
    replies = [latency for latency in result.latencies if latency is not None]
    return transcripts, replies


async def callers_at_once(url: str, count: int, turns: int, arrivals: Arrivals,
                          names: list[str]) -> list[SimulationResult]:
    plays = [[Turn(audio=load_wav(FIXTURES / f"{names[(k + i) % len(names)]}.wav"))
              for k in range(turns)] for i in range(count)]
    return await asyncio.gather(*(simulate_call(url, play, auth_token=AUTH_TOKEN, tail=20)
                                  for play in plays))


def sums(url: str) -> dict[str, float]:
    """The gateway's Whisper histograms: `_sum` and `_count` of decode time and queue wait."""
    text = httpx.get(url + "/metrics", trust_env=False, timeout=5).text
    return {sample.name: sample.value for family in text_string_to_metric_families(text)
            if family.name.startswith("stt_whisper_") for sample in family.samples
            if sample.name.endswith(("_sum", "_count"))}


def end_to_end(url: str, arrivals: Arrivals, callers: list[int], turns: int,
               names: list[str]) -> None:
    print("\n3. end to end, callers speaking at the same moments (real time)")
    for count in callers:
        before = sums(url)
        results = asyncio.run(callers_at_once(url, count, turns, arrivals, names))
        after = sums(url)
        grew = {name: after[name] - before.get(name, 0.0) for name in after}
        transcripts, replies = [], []
        for result in results:
            t, r = turn_figures(result, arrivals)
            transcripts += t
            replies += r
        heard = sum(len(arrivals.of(r.call_sid)) for r in results)
        # The gateway closes the socket itself when it gave the call up (recognition fell
        # behind: Gather; the bench's Twilio API is a dead port, so the hand-over fails fast).
        ended = sum(r.close_code is not None for r in results)
        if not replies:
            print(f"   {count} callers: no turn was answered")
            continue
        print(f"   {count} callers: end of speech -> transcript p50 "
              f"{statistics.median(transcripts):.2f} s p95 {percentile(transcripts, 0.95):.2f} s; "
              f"-> first reply audio p50 {statistics.median(replies):.2f} s "
              f"p95 {percentile(replies, 0.95):.2f} s  ({heard}/{count * turns} turns heard, "
              f"{ended} calls given up by the gateway)")
        decodes = grew.get("stt_whisper_decode_seconds_count", 0)
        if decodes:
            print(f"      in the gateway: decode {grew['stt_whisper_decode_seconds_sum'] / decodes:.2f}"
                  f" s, wait for a decoder {grew['stt_whisper_queue_seconds_sum'] / decodes:.2f}"
                  f" s (means over {decodes:.0f} utterances)")


def capacity(url: str, process: psutil.Process, arrivals: Arrivals, calls: int,
             seconds: float, names: list[str]) -> None:
    print(f"\n4. capacity: {calls} callers speaking again once the reply has played, {seconds:g} s")
    turns_each = int(seconds // 4) + 2

    async def run() -> tuple[float, int]:
        plays = [[Turn(audio=load_wav(FIXTURES / f"{names[(k + i) % len(names)]}.wav"),
                       wait_limit=10) for k in range(turns_each)] for i in range(calls)]
        tasks = [asyncio.create_task(simulate_call(url, play, auth_token=AUTH_TOKEN, tail=5))
                 for play in plays]
        await asyncio.sleep(3)  # every call connected and greeted
        before = cpu_seconds(process)
        heard_before = arrivals.count()
        await asyncio.sleep(seconds)
        used, heard = cpu_seconds(process) - before, arrivals.count() - heard_before
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return used, heard

    used, heard = asyncio.run(run())
    per_call = used / seconds / calls  # cores
    period = seconds * calls / heard if heard else float("inf")
    rss = process.memory_info().rss / 2**20
    print(f"   gateway memory (RSS, model loaded) {rss:.0f} MiB")
    print(f"   gateway CPU {used / seconds:.2f} cores = {per_call:.2f} of a core per call; "
          f"{heard} turns heard, one per caller every {period:.1f} s; "
          f"{used / heard if heard else 0:.2f} CPU s per turn")
    if heard:
        per_core_at_6s = 6.0 / (used / heard)
        print(f"   calls per core at one turn every 6 s: {per_core_at_6s:.1f}")


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def machine(label: str) -> None:
    load = os.getloadavg()
    print(f"{label}: {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="decodes per fixture")
    parser.add_argument("--callers", default="1,4,8", help="callers speaking at once, e.g. 1,4,8")
    parser.add_argument("--turns", type=int, default=3, help="turns per caller")
    parser.add_argument("--capacity-calls", type=int, default=4)
    parser.add_argument("--capacity-seconds", type=float, default=40)
    parser.add_argument("--lag-decodes", type=int, default=6,
                        help="utterances decoding at once for the loop lag")
    parser.add_argument("--parts", default="1234", help="which figures, e.g. 34")
    parser.add_argument("--quick", action="store_true",
                        help="one utterance, the fewest decodes, calls and seconds (smoke test)")
    args = parser.parse_args(argv)
    names = list(SPOKEN)
    if args.quick:
        args.repeat, args.callers, args.turns, args.lag_decodes = 1, "1", 1, 1
        args.capacity_calls, args.capacity_seconds = 1, 2
        names = [QUICK_FIXTURE]
    machine("before")
    settings = load_settings()  # config.yaml and the environment, as the gateway reads them
    whisper = settings.stt.whisper
    print(f"settings: model {whisper.model_dir or 'embedded base'}, {whisper.device} "
          f"{whisper.compute_type}, beam {whisper.beam_size}, {whisper.cpu_threads} threads x "
          f"{whisper.workers} workers, endpoint silence {settings.stt.endpoint_silence_ms} ms")
    if "1" in args.parts or "2" in args.parts:
        engine = build_stt(settings)
        assert isinstance(engine, WhisperSpeechToText)
        try:
            engine.decode(utterance(engine, "es_si_por_favor"), "es")  # warm
            if "1" in args.parts:
                decoding(engine, args.repeat, names)
            if "2" in args.parts:
                loop_lag(engine, args.lag_decodes, names[0])
        finally:
            asyncio.run(engine.aclose())
    if "3" not in args.parts and "4" not in args.parts:
        machine("after")
        return 0

    from tests.support.servers import running

    arrivals = Arrivals()
    with tempfile.TemporaryDirectory() as logs, running(arrivals.bot.app()) as rasa, \
            gateway(f"{rasa.url}/webhooks/rest/webhook", Path(logs)) as process:
        url = process.url  # type: ignore[attr-defined]
        if "3" in args.parts:
            end_to_end(url, arrivals, [int(n) for n in args.callers.split(",")], args.turns,
                       names)
        if "4" in args.parts:
            capacity(url, process, arrivals, args.capacity_calls, args.capacity_seconds, names)
    machine("after")
    return 0


if __name__ == "__main__":
    sys.exit(main())
