"""Side-by-side A/B: two gateways on one core under the same load; B's CPU as a ratio of A's.

    git worktree add /tmp/before HEAD~1
    python bench/compare.py --a /tmp/before                          # HEAD~1 (A) vs this checkout (B)
    python bench/compare.py --b-env CALL_OUTBOUND_CHUNK_MS=80        # one setting changed
    python bench/compare.py --no-turns --runs 5                      # the per-frame path alone

Every run starts both gateways (zero-cost engines, each with its own N calls from its own load
generator, as bench/load.py's side-by-side runs) and takes B/A second by second; a run's figure
is the median of those, and the result is the median over runs. Two identical gateways read
0.99 and single runs scatter by about ±3%, so a change below ~2% needs many runs to show.
Exits 0 when every run measured, 3 (bench/report.py's EXIT_BROKEN) when a run dropped calls or a
server failed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.generator import WARMUP_SECONDS, caller_frames  # noqa: E402
from bench.load import BOT_REPLY  # noqa: E402
from bench.measure import side_by_side  # noqa: E402
from bench.report import EXIT_BROKEN, EXIT_MET, EXIT_USAGE  # noqa: E402
from bench.servers import LOAD_CORE, ROOT, ServerOptions, started  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", type=Path, default=ROOT, help="checkout of gateway A (default: this)")
    parser.add_argument("--b", type=Path, default=ROOT, help="checkout of gateway B (default: this)")
    parser.add_argument("--a-env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment (a setting) for A only; repeatable")
    parser.add_argument("--b-env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment (a setting) for B only; repeatable")
    parser.add_argument("--calls", type=int, default=100, help="calls on each gateway")
    parser.add_argument("--seconds", type=float, default=15, help="measurement window per run")
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--no-turns", action="store_true", help="the per-frame path alone")
    parser.add_argument("--warmup", type=float, default=WARMUP_SECONDS,
                        help="seconds between the calls connecting and each window "
                        "(default %(default)s; shorter: less steady figures, for smoke tests)")
    args = parser.parse_args(argv)
    if len(os.sched_getaffinity(0)) < 2:
        print("compare: needs two cores (servers on one, load on the other)", file=sys.stderr)
        return EXIT_USAGE
    os.sched_setaffinity(0, {LOAD_CORE})
    envs = {name: dict(item.split("=", 1) for item in items)
            for name, items in (("A", args.a_env), ("B", args.b_env))}
    roots = {"A": args.a.resolve(), "B": args.b.resolve()}
    options = {name: ServerOptions(root=roots[name], environment=envs[name]) for name in roots}
    frames = caller_frames(turns=not args.no_turns)
    logs = Path(tempfile.mkdtemp(prefix="compare-"))
    print(f"A: {roots['A']} {envs['A'] or ''}\nB: {roots['B']} {envs['B'] or ''}\n"
          f"{args.calls} calls each, {args.seconds:g} s windows; server logs in {logs}")
    from tests.support.rasa_bot import RasaBot
    from tests.support.servers import running

    ratios, broken = [], 0
    bot = RasaBot(reply=lambda text: [{"recipient_id": "bench", "text": BOT_REPLY}])
    try:
        with running(bot.app()) as rasa:
            rasa_url = rasa.url + "/webhooks/rest/webhook"
            for run in range(args.runs):
                with ExitStack() as stack:
                    servers = {name: stack.enter_context(started(
                        "gateway", options[name], rasa_url, logs)) for name in ("A", "B")}
                    rates, stats = side_by_side(servers, args.calls, frames, args.seconds,
                                                args.warmup)
                dropped = sum(args.calls - int(s["held"]) for s in stats.values())
                broken += dropped > 0
                ratio = statistics.median(b / a for a, b in zip(rates["A"], rates["B"]) if a > 0)
                ratios.append(ratio)
                print(f"run {run + 1}: CPU/call A {statistics.median(rates['A']) / args.calls:.3%} "
                      f"B {statistics.median(rates['B']) / args.calls:.3%} of a core; B/A "
                      f"{ratio:.3f}" + (f" ({dropped} calls dropped: not valid)" if dropped else ""),
                      flush=True)
    except (RuntimeError, OSError, httpx.HTTPError) as exc:  # a server or generator failed
        print(f"compare: the run broke: {exc}", file=sys.stderr)
        return EXIT_BROKEN
    print(f"B/A median of {len(ratios)} runs: {statistics.median(ratios):.3f}")
    return EXIT_BROKEN if broken else EXIT_MET

if __name__ == "__main__":
    sys.exit(main())
