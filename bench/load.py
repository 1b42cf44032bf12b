"""Load benchmark: N concurrent simulated Twilio calls against the gateway and a bare server.

    python bench/load.py --calls 10,50,100 --seconds 20
    python bench/load.py --calls 100 --seconds 20 --no-turns
    python bench/load.py --calls 20 --seconds 20 --stt pocketsphinx --tts espeak
    python bench/load.py --calls 50 --seconds 20 --url http://127.0.0.1:5001 --auth-token TOKEN

Servers run in their own processes pinned to core 0; the load generator runs in another process
pinned to core 1 (this process, which also hosts the scripted Rasa bot, stays on core 1 too).
Every call is what Twilio does: a signed voice webhook, a signed websocket, 50 `media` frames a
second on one shared 20 ms clock, marks echoed once the audio before them has "played". Each
round runs the gateway alone (latency, memory) and then bare server and gateway side by side on
one core (the CPU ratio, per second, immune to this shared machine's swings); figures are medians
over rounds. bench/README.md explains every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
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
from typing import Any

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
        self.frames = self.late = 0
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
        except Exception as exc:  # counted as dropped; the run goes on
            print(f"call {index} failed to connect: {exc!r}", file=sys.stderr)
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
        # Calls that never connected or that the server closed count as dropped alike.
        return {"held": held, "frames": frames, "late": late}


def _generator_process(conn: Connection, url: str, public_url: str, token: str, count: int,
                       payloads: list[str]) -> None:
    os.sched_setaffinity(0, {LOAD_CORE})
    try:
        import uvloop

        run = uvloop.run
    except ImportError:  # pragma: no cover
        run = asyncio.run
    conn.send(run(Generator(url, public_url, token, payloads).run(conn, count)))


def caller_payloads(turns: bool = True) -> list[str]:
    """One caller's turn, looped, base64 per 20 ms frame: an utterance, the frame that makes the
    null recognizer emit its final (streaming/stt/null.py), then the line's noise floor while
    the bot answers (BOT_REPLY) and a pause: a turn every 8.8 s. Without `turns` the final never
    comes: the caller talks, the bot never answers (the per-frame path alone)."""
    end_of_turn = NULL_STT_MARKER.ljust(FRAME_BYTES, NULL_STT_MARKER[:1])
    audio = load_wav(FIXTURES / "block_my_card.wav")
    audio += mulaw.silence(-len(audio) % FRAME_BYTES)
    audio += end_of_turn if turns else mulaw.silence(FRAME_BYTES)
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
def started(kind: str, args: argparse.Namespace, rasa_url: str, logs: Path,
            probe: bool = False, root: Path = ROOT,
            overrides: dict[str, str] | None = None) -> Iterator[Server]:
    """A bare or gateway server process on SERVER_CORE; `probe`: the gateway measures its
    event-loop lag (bench/probe.py), only where latency is reported. `root`: the checkout whose
    server runs (bench/compare.py runs two); `overrides`: extra environment (settings)."""
    if args.url:
        yield Server(args.url, args.public_url or args.url, args.auth_token, None)
        return
    from tests.support.servers import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(root)}
    if kind == "bare":
        command = [sys.executable, str(root / "bench" / "bare_server.py"), "--port", str(port)]
    else:
        command = [sys.executable, str(root / "bench" / "gateway_server.py"), "--port", str(port),
                   *(["--probe"] if probe else [])]
        env.update({
            "SERVER_PUBLIC_URL": url, "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "RASA_URL": rasa_url,
            "STT_ENGINE": args.stt, "TTS_ENGINE": args.tts,
            # Nothing may reach the real Twilio: a transfer fails fast and shows as a dropped call.
            "TWILIO_API_BASE_URL": "http://127.0.0.1:9", "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
        })
    env.update(overrides or {})
    log = open(logs / f"{kind}-{port}.log", "wb")
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root,
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


# -- measuring -----------------------------------------------------------------------------------


class Load:
    """One load generator process placing `count` calls on one server, step by step."""

    def __init__(self, server: Server, count: int, payloads: list[str]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, theirs = ctx.Pipe()
        self.process = ctx.Process(target=_generator_process, daemon=True, args=(
            theirs, server.url, server.public_url, server.token, count, payloads))
        self.process.start()

    def expect(self, what: str, timeout: float) -> Any:
        if not self.conn.poll(timeout):
            raise RuntimeError(f"the load generator did not {what} within {timeout:.0f} s")
        return self.conn.recv()

    def warm(self) -> None:
        self.expect("warm up", 60)

    def place_calls(self) -> None:
        self.conn.send("go")

    def connected(self) -> None:
        self.expect("place its calls", 120)

    def stop(self) -> dict[str, float]:
        self.conn.send("stop")
        return self.expect("hang up", 60)

    def close(self) -> None:
        self.process.join(30)
        if self.process.is_alive():
            self.process.kill()


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of the process, in nanoseconds from the scheduler
    (/proc/PID/task/*/schedstat): psutil's cpu_times count 10 ms ticks, too coarse here."""
    total = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        with contextlib.suppress(OSError):  # a thread that just ended
            total += int(stat.read_text().split()[0])
    return total / 1e9


def cpu_rates(pids: dict[str, int], seconds: float) -> dict[str, list[float]]:
    """Each process's CPU use (in cores) in every second of the window."""
    rates: dict[str, list[float]] = {name: [] for name in pids}
    last, then = {name: cpu_seconds(pid) for name, pid in pids.items()}, time.monotonic()
    for _ in range(max(1, round(seconds))):
        time.sleep(1.0)
        now, clock = {name: cpu_seconds(pid) for name, pid in pids.items()}, time.monotonic()
        for name in pids:
            rates[name].append((now[name] - last[name]) / (clock - then))
        last, then = now, clock
    return rates


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


def profile(server: Server, count: int, args: argparse.Namespace,
            logs: Path) -> subprocess.Popen[bytes] | None:
    """py-spy samples the gateway over the window (it slows the server: not for figures).
    `--gil`: only samples where Python runs, so time waiting in epoll is not charged to the
    coroutine that ran last."""
    if not args.profile or server.process is None:
        return None
    out = logs / f"profile-{count}-{server.process.pid}.txt"
    print(f"  profiling into {out}", flush=True)
    installed = Path(sys.executable).with_name("py-spy")  # pip install ".[bench]"
    return subprocess.Popen([str(installed) if installed.exists() else "py-spy", "record",
                             "--pid", str(server.process.pid), "--gil", "--format", "raw",
                             "--rate", "200", "--duration", str(int(args.seconds)),
                             "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@dataclass
class Solo:
    """The gateway alone on its core: what a caller would notice, and memory."""

    held: int
    dropped: int
    frames: int
    late: int
    cpu_per_call: float | None  # cores per live call
    memory_per_call: float | None  # bytes
    lag_p50: float | None
    lag_p99: float | None
    turn_p50: float | None
    turn_p99: float | None
    bot_p50: float | None
    turns: int


@dataclass
class Pair:
    """Bare server and gateway side by side on one core, loaded alike, sampled each second."""

    held: int  # fewest calls either server held
    dropped: int
    frames: int
    late: int
    bare_cpu_per_call: float
    gateway_cpu_per_call: float
    ratio: float  # median of the per-second gateway/bare CPU ratios


def measure_gateway(count: int, args: argparse.Namespace, rasa_url: str, logs: Path,
                    payloads: list[str]) -> Solo:
    with started("gateway", args, rasa_url, logs, probe=True) as server:
        load = Load(server, count, payloads)
        try:
            load.warm()
            idle_rss = server.process.memory_info().rss if server.process else 0
            load.place_calls()
            load.connected()
            profiler = profile(server, count, args, logs)
            before = scrape(server.url)
            if server.process:
                rates = cpu_rates({"gateway": server.process.pid}, args.seconds)["gateway"]
            else:
                time.sleep(args.seconds)
                rates = []
            rss = server.process.memory_info().rss if server.process else 0
            after = scrape(server.url)
            stats = load.stop()
            if profiler is not None:
                profiler.wait()
        finally:
            load.close()
    held = int(stats["held"])

    def pct(name: str, q: float) -> float | None:
        return percentile(before.get(name, {}), after[name], q) if name in after else None

    lag, turn = "bench_event_loop_lag_seconds", "gateway_stream_turn_latency_seconds"
    turns = after.get(turn, {}).get("+Inf", 0) - before.get(turn, {}).get("+Inf", 0)
    return Solo(
        held, count - held, int(stats["frames"]), int(stats["late"]),
        statistics.median(rates) / held if rates and held else None,
        (rss - idle_rss) / held if server.process and held else None,
        pct(lag, 0.5), pct(lag, 0.99), pct(turn, 0.5), pct(turn, 0.99),
        pct("gateway_stream_bot_latency_seconds", 0.5), int(turns))


def side_by_side(servers: dict[str, Server], count: int, payloads: list[str],
                 seconds: float) -> tuple[dict[str, list[float]], dict[str, dict[str, float]]]:
    """Load every server with its own `count` calls at once; each one's CPU (cores) in every
    second of the window, and each load generator's counts."""
    loads = {name: Load(server, count, payloads) for name, server in servers.items()}
    try:
        for load in loads.values():
            load.warm()
            load.place_calls()
        for load in loads.values():
            load.connected()
        rates = cpu_rates({name: s.process.pid for name, s in servers.items() if s.process},
                          seconds)
        stats = {name: load.stop() for name, load in loads.items()}
    finally:
        for load in loads.values():
            load.close()
    return rates, stats


def measure_pair(count: int, args: argparse.Namespace, rasa_url: str, logs: Path,
                 payloads: list[str]) -> Pair:
    with started("bare", args, rasa_url, logs) as bare, \
            started("gateway", args, rasa_url, logs) as gateway:
        rates, stats = side_by_side({"bare": bare, "gateway": gateway}, count, payloads,
                                    args.seconds)
    held = min(int(s["held"]) for s in stats.values())
    ratios = [g / b for g, b in zip(rates["gateway"], rates["bare"]) if b > 0]
    return Pair(
        held, sum(count - int(s["held"]) for s in stats.values()),
        sum(int(s["frames"]) for s in stats.values()), sum(int(s["late"]) for s in stats.values()),
        statistics.median(rates["bare"]) / max(held, 1),
        statistics.median(rates["gateway"]) / max(held, 1),
        statistics.median(ratios) if ratios else float("nan"))


# -- report ---------------------------------------------------------------------------------------


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def fmt(value: float | None, scale: float = 1.0, unit: str = "", digits: int = 1) -> str:
    return "n/a" if value is None else f"{value * scale:.{digits}f}{unit}"


def report(count: int, solos: list[Solo], pairs: list[Pair],
           checks: list[tuple[str, bool]]) -> None:
    print(f"\n== {count} calls: medians of {len(solos)} rounds ==")
    late = sum(r.late for r in solos) / max(1, sum(r.frames for r in solos))
    m = {name: median([getattr(r, name) for r in solos]) for name in (
        "cpu_per_call", "memory_per_call", "lag_p50", "lag_p99", "turn_p50", "turn_p99",
        "bot_p50")}
    print(f"gateway alone: held {min(r.held for r in solos)}/{count}, "
          f"dropped {max(r.dropped for r in solos)}, late frames {late:.2%}, "
          f"CPU/call {fmt(m['cpu_per_call'], 100, '% of a core', 3)}, "
          f"memory/call {fmt(m['memory_per_call'], 1 / 1024, ' KiB', 0)}")
    print(f"               frame wait (loop lag) p50/p99 {fmt(m['lag_p50'], 1000)}/"
          f"{fmt(m['lag_p99'], 1000, ' ms')}, turn latency p50/p99 {fmt(m['turn_p50'], 1000)}/"
          f"{fmt(m['turn_p99'], 1000, ' ms')} ({sum(r.turns for r in solos)} turns; bot round "
          f"trip p50 {fmt(m['bot_p50'], 1000, ' ms')})")
    if pairs:
        late = sum(p.late for p in pairs) / max(1, sum(p.frames for p in pairs))
        ratio = statistics.median(p.ratio for p in pairs)
        print(f"side by side:  held {min(p.held for p in pairs)}/{count} each, dropped "
              f"{max(p.dropped for p in pairs)}, late frames {late:.2%}; CPU/call bare "
              f"{fmt(median([p.bare_cpu_per_call for p in pairs]), 100, '', 3)}% vs gateway "
              f"{fmt(median([p.gateway_cpu_per_call for p in pairs]), 100, '', 3)}% of a core: "
              f"gateway/bare {ratio:.2f}x (rounds: "
              + ", ".join(f"{p.ratio:.2f}" for p in pairs) + ")")
        checks.append((f"{count} calls: gateway CPU per call {ratio:.2f}x bare "
                       f"(<= {TARGET_CPU_RATIO}x)", ratio <= TARGET_CPU_RATIO))
    if m["memory_per_call"] is not None:
        checks.append((f"{count} calls: memory per call {m['memory_per_call'] / MiB:.2f} MiB "
                       f"(<= {TARGET_MEMORY / MiB:.0f} MiB)", m["memory_per_call"] <= TARGET_MEMORY))
    if count == TARGET_TURN_CALLS and m["turn_p99"] is not None:  # None with --no-turns
        checks.append((f"{count} calls: turn latency p99 {m['turn_p99'] * 1000:.1f} ms "
                       f"(<= {TARGET_TURN_P99 * 1000:.0f} ms)", m["turn_p99"] <= TARGET_TURN_P99))
    dropped = max([r.dropped for r in solos] + [p.dropped for p in pairs])
    checks.append((f"{count} calls: no call dropped ({dropped})", dropped == 0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", default="10,50,100", help="comma-separated call counts")
    parser.add_argument("--seconds", type=float, default=20, help="measurement window per run")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds per call count, each a solo and a side-by-side run "
                        "(default %(default)s)")
    parser.add_argument("--url", help="measure a gateway already running there (no bare run, "
                        "no CPU/memory: its process is not ours)")
    parser.add_argument("--public-url", help="with --url: its server.public_url (default: --url)")
    parser.add_argument("--auth-token", default=AUTH_TOKEN, help="with --url: its Twilio token")
    parser.add_argument("--profile", action="store_true",
                        help="sample the gateway with py-spy during each solo window (collapsed "
                        "stacks in the log directory; the figures of such runs are skewed)")
    parser.add_argument("--no-turns", action="store_true",
                        help="the caller talks but never finishes a sentence: no bot turn, no "
                        "outbound audio; measures the per-frame path alone")
    parser.add_argument("--stt", default="null", choices=["null", "pocketsphinx"])
    parser.add_argument("--tts", default="null", choices=["null", "espeak"])
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.calls.split(",")]
    if len(os.sched_getaffinity(0)) < 2:
        print("bench: needs two cores (servers on one, load on the other)", file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {LOAD_CORE})
    from tests.support.rasa_bot import RasaBot
    from tests.support.servers import running

    payloads = caller_payloads(turns=not args.no_turns)
    checks: list[tuple[str, bool]] = []
    logs = Path(tempfile.mkdtemp(prefix="bench-"))
    print(f"servers on core {SERVER_CORE}, load on core {LOAD_CORE}; engines stt={args.stt} "
          f"tts={args.tts}; {'no turns' if args.no_turns else 'a turn every 8.8 s'}; "
          f"{args.seconds:g} s windows; server logs in {logs}")
    bot = RasaBot(reply=lambda text: [{"recipient_id": "bench", "text": BOT_REPLY}])
    with running(bot.app()) as rasa:
        rasa_url = rasa.url + "/webhooks/rest/webhook"
        for count in counts:
            solos, pairs = [], []
            for round_ in range(args.rounds):
                solo = measure_gateway(count, args, rasa_url, logs, payloads)
                solos.append(solo)
                line = (f"  round {round_ + 1}: gateway alone CPU/call "
                        f"{fmt(solo.cpu_per_call, 100, '%', 3)}, turn p99 "
                        f"{fmt(solo.turn_p99, 1000, ' ms')}")
                if not args.url:
                    pair = measure_pair(count, args, rasa_url, logs, payloads)
                    pairs.append(pair)
                    line += f"; side by side gateway/bare {pair.ratio:.2f}x"
                print(line, flush=True)
            report(count, solos, pairs, checks)
    print("\n== targets ==")
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
