"""Load benchmark: N concurrent simulated Twilio calls against the gateway and a bare server.

    python bench/load.py --calls 10,50,100 --seconds 20
    python bench/load.py --calls 100 --seconds 20 --no-turns
    python bench/load.py --calls 20 --seconds 20 --stt pocketsphinx --tts espeak
    python bench/load.py --calls 50 --seconds 20 --url http://127.0.0.1:5001 --auth-token TOKEN

Servers run in their own processes pinned to core 0 (bench/servers.py); the load generator runs
in another process pinned to core 1 (bench/generator.py; this process, which also hosts the
scripted Rasa bot, stays on core 1 too). Each round runs the gateway alone (latency, memory) and
then bare server and gateway side by side on one core (the CPU ratio, per second, immune to this
shared machine's swings; bench/measure.py); figures are medians over rounds (bench/report.py,
which also says what the exit status means). bench/README.md explains every figure.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.generator import WARMUP_SECONDS, caller_frames  # noqa: E402
from bench.measure import measure_gateway, measure_pair  # noqa: E402
from bench.report import EXIT_BROKEN, EXIT_USAGE, Verdict, fmt, report  # noqa: E402
from bench.servers import AUTH_TOKEN, LOAD_CORE, SERVER_CORE, ServerOptions  # noqa: E402

# What the scripted bot answers every turn: two sentences, ~4 s of (null) speech.
BOT_REPLY = "Entendido. ¿Me confirma los cuatro últimos dígitos de la tarjeta?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", default="10,50,100", help="comma-separated call counts")
    parser.add_argument("--seconds", type=float, default=20, help="measurement window per run")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds per call count, each a solo and a side-by-side run "
                        "(default %(default)s)")
    parser.add_argument("--warmup", type=float, default=WARMUP_SECONDS,
                        help="seconds between the calls connecting and each window "
                        "(default %(default)s; shorter: less steady figures, for smoke tests)")
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
        return EXIT_USAGE
    os.sched_setaffinity(0, {LOAD_CORE})
    from tests.support.rasa_bot import RasaBot
    from tests.support.servers import running

    frames = caller_frames(turns=not args.no_turns)
    options = ServerOptions(stt=args.stt, tts=args.tts, url=args.url, public_url=args.public_url,
                            auth_token=args.auth_token)
    logs = Path(tempfile.mkdtemp(prefix="bench-"))
    print(f"servers on core {SERVER_CORE}, load on core {LOAD_CORE}; engines stt={args.stt} "
          f"tts={args.tts}; {'no turns' if args.no_turns else 'a turn every 8.8 s'}; "
          f"{args.seconds:g} s windows; server logs in {logs}")
    verdict = Verdict()
    bot = RasaBot(reply=lambda text: [{"recipient_id": "bench", "text": BOT_REPLY}])
    try:
        with running(bot.app()) as rasa:
            rasa_url = rasa.url + "/webhooks/rest/webhook"
            for count in counts:
                solos, pairs = [], []
                for round_ in range(args.rounds):
                    solo = measure_gateway(count, options, rasa_url, logs, frames, args.seconds,
                                           profiling=args.profile, warmup=args.warmup)
                    solos.append(solo)
                    line = (f"  round {round_ + 1}: gateway alone CPU/call "
                            f"{fmt(solo.cpu_per_call, 100, '%', 3)}, turn p99 "
                            f"{fmt(solo.turn_p99, 1000, ' ms')}")
                    if not args.url:
                        pair = measure_pair(count, options, rasa_url, logs, frames, args.seconds,
                                            args.warmup)
                        pairs.append(pair)
                        line += f"; side by side gateway/bare {pair.ratio:.2f}x"
                    print(line, flush=True)
                report(count, solos, pairs, verdict)
    except (RuntimeError, OSError, httpx.HTTPError) as exc:  # a server or generator failed
        print(f"bench: the run broke: {exc}", file=sys.stderr)
        return EXIT_BROKEN
    return verdict.print()


if __name__ == "__main__":
    sys.exit(main())
