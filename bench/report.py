"""What a load benchmark run says: the figures per call count, the targets, the exit status.

The exit status tells "ran and measured" from "broke", so a script or test can check it without
judging speed: EXIT_MET (every target met), EXIT_MISSED (measured, a performance target missed:
the figures are valid), EXIT_USAGE, EXIT_BROKEN (a call dropped or never connected, a server or
the load generator failed: the figures mean nothing).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from bench.measure import Pair, Solo

EXIT_MET, EXIT_MISSED, EXIT_USAGE, EXIT_BROKEN = 0, 1, 2, 3

MiB = 1024 * 1024
TARGET_CPU_RATIO = 1.3
TARGET_TURN_P99 = 0.010
TARGET_TURN_CALLS = 100
TARGET_MEMORY = 2 * MiB


@dataclass
class Verdict:
    targets: list[tuple[str, bool]] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)

    def print(self) -> int:
        """The targets and what broke; returns the exit status."""
        print("\n== targets ==")
        for text, ok in self.targets:
            print(f"{'PASS' if ok else 'FAIL'}  {text}")
        for text in self.broken:
            print(f"BROKEN  {text}")
        if self.broken:
            return EXIT_BROKEN
        return EXIT_MET if all(ok for _, ok in self.targets) else EXIT_MISSED


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def fmt(value: float | None, scale: float = 1.0, unit: str = "", digits: int = 1) -> str:
    return "n/a" if value is None else f"{value * scale:.{digits}f}{unit}"


def report(count: int, solos: list[Solo], pairs: list[Pair], verdict: Verdict) -> None:
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
    targets = verdict.targets
    if pairs:
        late = sum(p.late for p in pairs) / max(1, sum(p.frames for p in pairs))
        ratio = statistics.median(p.ratio for p in pairs)
        print(f"side by side:  held {min(p.held for p in pairs)}/{count} each, dropped "
              f"{max(p.dropped for p in pairs)}, late frames {late:.2%}; CPU/call bare "
              f"{fmt(median([p.bare_cpu_per_call for p in pairs]), 100, '', 3)}% vs gateway "
              f"{fmt(median([p.gateway_cpu_per_call for p in pairs]), 100, '', 3)}% of a core: "
              f"gateway/bare {ratio:.2f}x (rounds: "
              + ", ".join(f"{p.ratio:.2f}" for p in pairs) + ")")
        targets.append((f"{count} calls: gateway CPU per call {ratio:.2f}x bare "
                        f"(<= {TARGET_CPU_RATIO}x)", ratio <= TARGET_CPU_RATIO))
    if m["memory_per_call"] is not None:
        targets.append((f"{count} calls: memory per call {m['memory_per_call'] / MiB:.2f} MiB "
                        f"(<= {TARGET_MEMORY / MiB:.0f} MiB)", m["memory_per_call"] <= TARGET_MEMORY))
    if count == TARGET_TURN_CALLS and m["turn_p99"] is not None:  # None with --no-turns
        targets.append((f"{count} calls: turn latency p99 {m['turn_p99'] * 1000:.1f} ms "
                        f"(<= {TARGET_TURN_P99 * 1000:.0f} ms)", m["turn_p99"] <= TARGET_TURN_P99))
    dropped = max([r.dropped for r in solos] + [p.dropped for p in pairs])
    targets.append((f"{count} calls: no call dropped ({dropped})", dropped == 0))
    if dropped:
        verdict.broken.append(f"{count} calls: {dropped} calls dropped or never connected")
