"""Measuring a server under load: its CPU second by second, its metrics, and the two kinds of
run the benchmarks are made of (bench/README.md explains every figure).

- solo: the gateway alone on its core, for what a caller would notice (latency) and memory;
- side by side: two servers on one core under the same load, CPU sampled each second, so this
  shared machine's swings cancel out in the ratio.
"""

from __future__ import annotations

import contextlib
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.generator import WARMUP_SECONDS, Load
from bench.servers import Server, ServerOptions, started


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


def profile(server: Server, count: int, seconds: float,
            logs: Path) -> subprocess.Popen[bytes] | None:
    """py-spy samples the gateway over the window (it slows the server: not for figures).
    `--gil`: only samples where Python runs, so time waiting in epoll is not charged to the
    coroutine that ran last."""
    if server.process is None:
        return None
    out = logs / f"profile-{count}-{server.process.pid}.txt"
    print(f"  profiling into {out}", flush=True)
    installed = Path(sys.executable).with_name("py-spy")  # pip install ".[bench]"
    return subprocess.Popen([str(installed) if installed.exists() else "py-spy", "record",
                             "--pid", str(server.process.pid), "--gil", "--format", "raw",
                             "--rate", "200", "--duration", str(int(seconds)),
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


def measure_gateway(count: int, options: ServerOptions, rasa_url: str, logs: Path,
                    frames: list[bytes], seconds: float, profiling: bool = False,
                    warmup: float = WARMUP_SECONDS) -> Solo:
    """The gateway alone on its core under `count` calls: latency, memory, CPU."""
    with started("gateway", options, rasa_url, logs, probe=True) as server:
        load = Load(server, count, frames, warmup)
        try:
            load.warm()
            idle_rss = server.process.memory_info().rss if server.process else 0
            load.place_calls()
            load.connected()
            profiler = profile(server, count, seconds, logs) if profiling else None
            before = scrape(server.url)
            if server.process:
                rates = cpu_rates({"gateway": server.process.pid}, seconds)["gateway"]
            else:
                time.sleep(seconds)
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


def side_by_side(servers: dict[str, Server], count: int, frames: list[bytes], seconds: float,
                 warmup: float = WARMUP_SECONDS,
                 ) -> tuple[dict[str, list[float]], dict[str, dict[str, float]]]:
    """Load every server with its own `count` calls at once; each one's CPU (cores) in every
    second of the window, and each load generator's counts."""
    loads = {name: Load(server, count, frames, warmup) for name, server in servers.items()}
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


def measure_pair(count: int, options: ServerOptions, rasa_url: str, logs: Path,
                 frames: list[bytes], seconds: float, warmup: float = WARMUP_SECONDS) -> Pair:
    """Bare server and gateway side by side on one core, each under its own `count` calls."""
    with started("bare", options, rasa_url, logs) as bare, \
            started("gateway", options, rasa_url, logs) as gateway:
        rates, stats = side_by_side({"bare": bare, "gateway": gateway}, count, frames, seconds,
                                    warmup)
    held = min(int(s["held"]) for s in stats.values())
    ratios = [g / b for g, b in zip(rates["gateway"], rates["bare"]) if b > 0]
    return Pair(
        held, sum(count - int(s["held"]) for s in stats.values()),
        sum(int(s["frames"]) for s in stats.values()), sum(int(s["late"]) for s in stats.values()),
        statistics.median(rates["bare"]) / max(held, 1),
        statistics.median(rates["gateway"]) / max(held, 1),
        statistics.median(ratios) if ratios else float("nan"))
