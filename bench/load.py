"""Load benchmark: N concurrent simulated Twilio calls against the gateway and a bare server.

    python bench/load.py --calls 10,50,100 --seconds 20
    python bench/load.py --calls 20 --seconds 20 --stt pocketsphinx --tts espeak
    python bench/load.py --calls 50 --seconds 20 --url http://127.0.0.1:5001 --auth-token TOKEN

Each server runs in its own process pinned to core 0; the load generator runs in another process
pinned to core 1 (this process, which also hosts the scripted Rasa bot, stays on core 1 too).
Every call is what Twilio does: a signed voice webhook, a signed websocket, 50 `media` frames a
second (speech then silence, in a loop), marks echoed once the audio before them has "played".
All calls' frames go out on one shared 20 ms clock. Runs alternate bare, gateway, bare, gateway
(`--rounds`) and the figures are the medians. bench/README.md explains every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.simulate import FRAME_BYTES, Playout, _websocket_address, load_wav, parse_twiml  # noqa: E402
from audio import mulaw  # noqa: E402
from streaming.stt.null import MARKER as NULL_STT_MARKER  # noqa: E402

AUTH_TOKEN = "bench-auth-token"
FRAME_SECONDS = 0.02
SERVER_CORE, LOAD_CORE = 0, 1
WARMUP_SECONDS = 3.0  # after every call has started, before the measurement window
FIXTURES = ROOT / "tests" / "fixtures"
SLOTS = 4  # instants per 20 ms at which calls' frames go out
# What the scripted bot answers every turn: two sentences, ~4 s of (null) speech.
BOT_REPLY = "Entendido. ¿Me confirma los cuatro últimos dígitos de la tarjeta?"
MiB = 1024 * 1024

TARGET_CPU_RATIO = 1.3
TARGET_TURN_P99 = 0.010
TARGET_TURN_CALLS = 100
TARGET_MEMORY = 2 * MiB


# -- the load generator (its own process on LOAD_CORE) -------------------------------------------


@dataclass
class _Call:
    index: int
    ws: ClientConnection
    call_sid: str
    stream_sid: str
    t0: float = field(default_factory=time.monotonic)
    playout: Playout = field(default_factory=Playout)
    echo_now: list[str] = field(default_factory=list)
    sequence: int = 2
    dropped: bool = False
    receiver: asyncio.Task[None] | None = None

    def message(self, event: str, body: str) -> str:
        self.sequence += 1
        return (f'{{"event":"{event}","sequenceNumber":"{self.sequence}",'
                f'"streamSid":"{self.stream_sid}",{body}}}')


class Generator:
    """Places the calls, paces every call's frames on one clock, echoes marks, counts."""

    def __init__(self, url: str, public_url: str, token: str, payloads: list[str]) -> None:
        self.url, self.public_url = url.rstrip("/"), public_url.rstrip("/")
        self.validator = RequestValidator(token)
        self.payloads = payloads  # base64 of each 20 ms frame of one caller's loop
        self.calls: list[_Call] = []
        self.failed = 0
        self.frames = self.late = 0
        self.worst_late = 0.0
        self.stopping = False

    async def place(self, http: httpx.AsyncClient, index: int) -> _Call | None:
        call_sid, stream_sid = "CA" + uuid.uuid4().hex, "MZ" + uuid.uuid4().hex
        params = {"AccountSid": "AC" + "0" * 32, "CallSid": call_sid, "CallStatus": "ringing",
                  "Direction": "inbound", "From": f"+346{index:08d}", "To": "+34910000000"}
        signature = self.validator.compute_signature(self.public_url + "/webhook/twilio/voice", params)
        try:
            response = await http.post(self.url + "/webhook/twilio/voice", data=params,
                                       headers={"X-Twilio-Signature": signature})
            response.raise_for_status()
            stream_url, custom = parse_twiml(response.text)
            ws = await connect(
                _websocket_address(stream_url, self.url), proxy=None, compression=None,
                max_size=None, open_timeout=30, ping_interval=None,
                additional_headers={
                    "X-Twilio-Signature": self.validator.compute_signature(stream_url, {})})
            await ws.send('{"event":"connected","protocol":"Call","version":"1.0.0"}')
            await ws.send(json.dumps({
                "event": "start", "sequenceNumber": "1", "streamSid": stream_sid,
                "start": {"streamSid": stream_sid, "accountSid": params["AccountSid"],
                          "callSid": call_sid, "tracks": ["inbound"], "customParameters": custom,
                          "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000,
                                          "channels": 1}}}))
        except Exception as exc:  # counted as a failed call; the run goes on
            print(f"call {index} failed to connect: {exc!r}", file=sys.stderr)
            self.failed += 1
            return None
        call = _Call(index, ws, call_sid, stream_sid)
        call.receiver = asyncio.create_task(self.receive(call))
        return call

    async def receive(self, call: _Call) -> None:
        """Twilio's output side: buffer the audio, schedule the marks, obey `clear`."""
        b64decode, loads = base64.b64decode, json.loads
        try:
            async for data in call.ws:
                now = time.monotonic() - call.t0
                msg = loads(data)
                event = msg["event"]
                if event == "media":
                    call.playout.add(now, b64decode(msg["media"]["payload"]))
                elif event == "mark":
                    call.playout.mark(now, msg["mark"]["name"])
                elif event == "clear":
                    call.echo_now.extend(call.playout.clear(now))
        except ConnectionClosed:
            pass
        if not self.stopping:
            call.dropped = True

    async def connect_all(self, count: int, first_index: int = 0) -> list[_Call]:
        limit = asyncio.Semaphore(10)

        async def one(http: httpx.AsyncClient, index: int) -> _Call | None:
            async with limit:
                return await self.place(http, index)

        async with httpx.AsyncClient(trust_env=False, timeout=30) as http:
            placed = await asyncio.gather(*(one(http, first_index + i) for i in range(count)))
        return [call for call in placed if call is not None]

    async def pace(self, calls: list[_Call], until: asyncio.Event) -> None:
        """Every 20 ms, one frame for every call (after its due marks), on one shared clock.
        The calls' frames are spread over SLOTS instants of the 20 ms, as independent calls'
        are, rather than all arriving in one burst."""
        payloads, n = self.payloads, len(self.payloads)
        groups = [calls[i::SLOTS] for i in range(SLOTS)]
        start, slot = time.monotonic(), 0
        while not until.is_set():
            slot += 1
            due = start + slot * FRAME_SECONDS / SLOTS
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            frame = slot // SLOTS
            for call in groups[slot % SLOTS]:
                if call.dropped:
                    continue
                marks = call.echo_now + call.playout.due_marks(time.monotonic() - call.t0)
                call.echo_now.clear()
                try:
                    for name in marks:
                        await call.ws.send(call.message("mark", f'"mark":{{"name":"{name}"}}'))
                    await call.ws.send(call.message("media", (
                        f'"media":{{"track":"inbound","chunk":"{frame}","timestamp":"{frame * 20}",'
                        f'"payload":"{payloads[(frame + call.index * 37) % n]}"}}')))
                except ConnectionClosed:
                    call.dropped = True
                    continue
                late = time.monotonic() - due
                self.frames += 1
                if late > FRAME_SECONDS:
                    self.late += 1
                    self.worst_late = max(self.worst_late, late)

    async def hang_up(self, calls: list[_Call]) -> None:
        self.stopping = True

        async def one(call: _Call) -> None:
            try:
                await call.ws.send(call.message("stop", f'"stop":{{"callSid":"{call.call_sid}"}}'))
                await call.ws.close()
            except ConnectionClosed:
                pass
            if call.receiver is not None:
                call.receiver.cancel()
                await asyncio.gather(call.receiver, return_exceptions=True)

        await asyncio.gather(*(one(call) for call in calls))
        self.stopping = False

    async def run(self, conn: Connection, count: int) -> dict[str, float]:
        loop = asyncio.get_running_loop()
        # One short call first, so one-time costs (imports, caches) land before the idle baseline.
        warm, stop_warm = await self.connect_all(1, first_index=count), asyncio.Event()
        loop.call_later(2.0, stop_warm.set)
        await self.pace(warm, stop_warm)
        await self.hang_up(warm)
        await asyncio.sleep(1.0)
        conn.send("warm")
        await loop.run_in_executor(None, conn.recv)  # "go": the idle baseline is taken
        calls = await self.connect_all(count)
        stop = asyncio.Event()
        pacer = asyncio.create_task(self.pace(calls, stop))
        await asyncio.sleep(WARMUP_SECONDS)
        frames_before, late_before = self.frames, self.late
        conn.send({"connected": len(calls)})
        await loop.run_in_executor(None, conn.recv)  # "stop": the window is over
        held = sum(not call.dropped for call in calls)
        frames, late = self.frames - frames_before, self.late - late_before
        stop.set()
        await pacer
        await self.hang_up(calls)
        return {"held": held, "dropped": count - held, "failed": self.failed, "frames": frames,
                "late": late, "worst_late": self.worst_late}


def _generator_process(conn: Connection, url: str, public_url: str, token: str, count: int,
                       payloads: list[str]) -> None:
    os.sched_setaffinity(0, {LOAD_CORE})
    try:
        import uvloop

        run = uvloop.run
    except ImportError:  # pragma: no cover
        run = asyncio.run
    conn.send(run(Generator(url, public_url, token, payloads).run(conn, count)))


def caller_payloads() -> list[str]:
    """One caller's turn, looped, base64 per 20 ms frame: an utterance, the frame that makes the
    null recognizer emit its final (streaming/stt/null.py), then the line's noise floor while
    the bot answers (BOT_REPLY) and a pause: a turn every 8.8 s."""
    end_of_turn = NULL_STT_MARKER.ljust(FRAME_BYTES, NULL_STT_MARKER[:1])
    audio = load_wav(FIXTURES / "block_my_card.wav")
    audio += mulaw.silence(-len(audio) % FRAME_BYTES) + end_of_turn
    audio += load_wav(FIXTURES / "silence.wav") * 3
    audio += mulaw.silence(-len(audio) % FRAME_BYTES)
    return [base64.b64encode(audio[i:i + FRAME_BYTES]).decode()
            for i in range(0, len(audio), FRAME_BYTES)]


# -- the servers (pinned to SERVER_CORE) ----------------------------------------------------------


@dataclass
class Server:
    url: str
    public_url: str
    token: str
    process: psutil.Process | None  # None when measuring a gateway started elsewhere (--url)


@contextmanager
def started(kind: str, args: argparse.Namespace, rasa_url: str, logs: Path) -> Iterator[Server]:
    if args.url:
        yield Server(args.url, args.public_url or args.url, args.auth_token, None)
        return
    from tests.support.servers import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if kind == "bare":
        command = [sys.executable, str(ROOT / "bench" / "bare_server.py"), "--port", str(port)]
    else:
        command = [sys.executable, str(ROOT / "bench" / "gateway_server.py"), "--port", str(port)]
        env.update({
            "SERVER_PUBLIC_URL": url, "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "RASA_URL": rasa_url,
            "STT_ENGINE": args.stt, "TTS_ENGINE": args.tts,
            # Nothing may reach the real Twilio: a transfer fails fast and shows as a dropped call.
            "TWILIO_API_BASE_URL": "http://127.0.0.1:9", "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
        })
    log = open(logs / f"{kind}-{port}.log", "wb")
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                            preexec_fn=lambda: os.sched_setaffinity(0, {SERVER_CORE}))
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{kind} server did not start; see {log.name}")
            try:
                if httpx.get(url + "/health", timeout=1, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        yield Server(url, url, AUTH_TOKEN, psutil.Process(proc.pid))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# -- figures ------------------------------------------------------------------------------------


def scrape(url: str) -> dict[str, dict[str, float]]:
    """Histogram buckets (name -> {le: cumulative count}) and plain samples (name -> {"": v})."""
    text = httpx.get(url + "/metrics", timeout=10, trust_env=False).text
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                out.setdefault(family.name, {})[sample.labels["le"]] = sample.value
            elif not sample.labels:
                out.setdefault(sample.name, {})[""] = sample.value
    return out


def percentile(before: dict[str, float], after: dict[str, float], q: float) -> float | None:
    """The q-quantile of what a histogram observed between two scrapes (linear in a bucket)."""
    bounds = sorted(((float(le), after[le] - before.get(le, 0.0)) for le in after),
                    key=lambda b: b[0])
    total = bounds[-1][1] if bounds else 0
    if not total:
        return None
    lower, below = 0.0, 0.0
    for upper, count in bounds:
        if count >= q * total:
            if upper == float("inf"):
                return lower
            return lower + (upper - lower) * (q * total - below) / max(count - below, 1e-9)
        lower, below = upper, count
    return None


@dataclass
class Run:
    kind: str
    calls: int
    held: int
    dropped: int
    failed: int
    frames: int
    late: int
    cpu_per_call: float | None  # share of one core per live call
    memory_per_call: float | None  # bytes
    lag_p50: float | None
    lag_p99: float | None
    turn_p50: float | None
    turn_p99: float | None
    bot_p50: float | None
    turns: int


def profile(server: Server, kind: str, count: int, args: argparse.Namespace,
            logs: Path) -> subprocess.Popen[bytes] | None:
    """py-spy samples the gateway over the window (it slows the server: not for figures).
    `--gil`: only samples where Python runs, so time waiting in epoll is not charged to the
    coroutine that ran last."""
    if not args.profile or kind != "gateway" or server.process is None:
        return None
    out = logs / f"profile-{count}-{server.process.pid}.txt"
    print(f"  profiling into {out}", flush=True)
    installed = Path(sys.executable).with_name("py-spy")  # pip install ".[bench]"
    return subprocess.Popen([str(installed) if installed.exists() else "py-spy", "record", "--pid", str(server.process.pid), "--gil", "--format",
                             "raw", "--rate", "200", "--duration", str(int(args.seconds)),
                             "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def measure(kind: str, count: int, args: argparse.Namespace, rasa_url: str, logs: Path,
            payloads: list[str]) -> Run:
    with started(kind, args, rasa_url, logs) as server:
        ctx = multiprocessing.get_context("spawn")
        ours, theirs = ctx.Pipe()
        generator = ctx.Process(target=_generator_process, daemon=True, args=(
            theirs, server.url, server.public_url, server.token, count, payloads))
        generator.start()
        try:
            if not ours.poll(60):
                raise RuntimeError("the load generator did not warm up")
            ours.recv()
            idle_rss = server.process.memory_info().rss if server.process else 0
            ours.send("go")
            if not ours.poll(120):
                raise RuntimeError("the load generator could not place the calls")
            ours.recv()
            profiler = profile(server, kind, count, args, logs)
            before = scrape(server.url)
            cpu0 = server.process.cpu_times() if server.process else None
            t0 = time.monotonic()
            time.sleep(args.seconds)
            cpu1 = server.process.cpu_times() if server.process else None
            elapsed = time.monotonic() - t0
            rss = server.process.memory_info().rss if server.process else 0
            after = scrape(server.url)
            ours.send("stop")
            stats = ours.recv()
            if profiler is not None:
                profiler.wait()
        finally:
            generator.join(30)
            if generator.is_alive():
                generator.kill()
    held = int(stats["held"])
    cpu = None
    if cpu0 is not None and cpu1 is not None and held:
        cpu = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / elapsed / held

    def pct(name: str, q: float) -> float | None:
        return percentile(before.get(name, {}), after[name], q) if name in after else None

    turns = "gateway_stream_turn_latency_seconds"
    total = after.get(turns, {}).get("+Inf", 0) - before.get(turns, {}).get("+Inf", 0)
    return Run(
        kind, count, held, int(stats["dropped"]), int(stats["failed"]), int(stats["frames"]),
        int(stats["late"]), cpu, (rss - idle_rss) / held if server.process and held else None,
        pct("bench_event_loop_lag_seconds", 0.5), pct("bench_event_loop_lag_seconds", 0.99),
        pct(turns, 0.5), pct(turns, 0.99), pct("gateway_stream_bot_latency_seconds", 0.5),
        int(total))


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def fmt(value: float | None, scale: float = 1.0, unit: str = "", digits: int = 1) -> str:
    return "n/a" if value is None else f"{value * scale:.{digits}f}{unit}"


def report(count: int, runs: list[Run], checks: list[tuple[str, bool]]) -> None:
    print(f"\n== {count} calls: medians of {len(runs) // 2 or len(runs)} runs each ==")
    by_kind = {kind: [r for r in runs if r.kind == kind] for kind in ("bare", "gateway")}
    for kind, rs in by_kind.items():
        if not rs:
            continue
        late = sum(r.late for r in rs) / max(1, sum(r.frames for r in rs))
        print(
            f"{kind:>8}: held {min(r.held for r in rs)}/{count}  "
            f"dropped {max(r.dropped + r.failed for r in rs)}  "
            f"late frames {late:.2%}  "
            f"CPU/call {fmt(median([r.cpu_per_call for r in rs]), 100, '% core', 2)}  "
            f"mem/call {fmt(median([r.memory_per_call for r in rs]), 1 / 1024, ' KiB', 0)}  "
            f"loop lag p50/p99 {fmt(median([r.lag_p50 for r in rs]), 1000, '')}/"
            f"{fmt(median([r.lag_p99 for r in rs]), 1000, ' ms')}"
            + (f"  turn p50/p99 {fmt(median([r.turn_p50 for r in rs]), 1000, '')}/"
               f"{fmt(median([r.turn_p99 for r in rs]), 1000, ' ms')}"
               f" ({sum(r.turns for r in rs)} turns; bot p50 "
               f"{fmt(median([r.bot_p50 for r in rs]), 1000, ' ms')})"
               if kind == "gateway" else ""))
    gateway, bare = by_kind["gateway"], by_kind["bare"]
    cpu_g = median([r.cpu_per_call for r in gateway])
    cpu_b = median([r.cpu_per_call for r in bare])
    if cpu_g is not None and cpu_b:
        ratio = cpu_g / cpu_b
        checks.append((f"{count} calls: gateway CPU per call {ratio:.2f}x bare "
                       f"(<= {TARGET_CPU_RATIO}x)", ratio <= TARGET_CPU_RATIO))
    memory = median([r.memory_per_call for r in gateway])
    if memory is not None:
        checks.append((f"{count} calls: memory per call {memory / MiB:.2f} MiB "
                       f"(<= {TARGET_MEMORY / MiB:.0f} MiB)", memory <= TARGET_MEMORY))
    turn = median([r.turn_p99 for r in gateway])
    if count == TARGET_TURN_CALLS and turn is not None:
        checks.append((f"{count} calls: turn latency p99 {turn * 1000:.1f} ms "
                       f"(<= {TARGET_TURN_P99 * 1000:.0f} ms)", turn <= TARGET_TURN_P99))
    if any(r.dropped or r.failed for r in runs):
        checks.append((f"{count} calls: no call dropped", False))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", default="10,50,100", help="comma-separated call counts")
    parser.add_argument("--seconds", type=float, default=20, help="measurement window per run")
    parser.add_argument("--rounds", type=int, default=2,
                        help="runs per server and call count, alternated (default %(default)s)")
    parser.add_argument("--url", help="measure a gateway already running there (no bare run, "
                        "no CPU/memory: its process is not ours)")
    parser.add_argument("--public-url", help="with --url: its server.public_url (default: --url)")
    parser.add_argument("--auth-token", default=AUTH_TOKEN, help="with --url: its Twilio token")
    parser.add_argument("--profile", action="store_true",
                        help="sample the gateway with py-spy during each window (collapsed "
                        "stacks in the log directory; the figures of such runs are skewed)")
    parser.add_argument("--stt", default="null", choices=["null", "pocketsphinx"])
    parser.add_argument("--tts", default="null", choices=["null", "espeak"])
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.calls.split(",")]
    if len(os.sched_getaffinity(0)) < 2:
        print("bench: needs two cores (server on one, load on the other)", file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {LOAD_CORE})
    from tests.support.rasa_bot import RasaBot
    from tests.support.servers import running

    payloads = caller_payloads()
    kinds = ["gateway"] if args.url else ["bare", "gateway"]
    checks: list[tuple[str, bool]] = []
    logs = Path(tempfile.mkdtemp(prefix="bench-"))
    print(f"server on core {SERVER_CORE}, load on core {LOAD_CORE}; engines stt={args.stt} "
          f"tts={args.tts}; {args.seconds:g} s windows; server logs in {logs}")
    bot = RasaBot(reply=lambda text: [{"recipient_id": "bench", "text": BOT_REPLY}])
    with running(bot.app()) as rasa:
        rasa_url = rasa.url + "/webhooks/rest/webhook"
        for count in counts:
            runs = []
            for round_ in range(args.rounds):
                for kind in kinds:
                    run = measure(kind, count, args, rasa_url, logs, payloads)
                    runs.append(run)
                    print(f"  round {round_ + 1} {kind:>7}: held {run.held}/{count}, CPU/call "
                          f"{fmt(run.cpu_per_call, 100, '% core', 2)}, turns {run.turns}",
                          flush=True)
            report(count, runs, checks)
    print("\n== targets ==")
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
