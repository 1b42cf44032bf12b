"""Command line: `python -m app serve` starts the gateway, `python -m app simulate` plays a caller,
`python -m app prepare-model` assembles and verifies the offline Whisper model (Docker builds)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from app.config import ConfigError, Settings, load_settings
from streaming.stt import whisper_model
from streaming.stt.whisper_model import ModelError, locate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="start the gateway")
    serve.add_argument("--config", help="config file (default: config.yaml or $GATEWAY_CONFIG)")
    serve.add_argument("--port", type=int, help="override server.port")
    serve.add_argument("--workers", type=int, help="override server.workers")

    prepare = commands.add_parser(
        "prepare-model", help="assemble and verify the Whisper model in its cache folder")
    prepare.add_argument("--config", help="config file (default: config.yaml or $GATEWAY_CONFIG)")

    from app import simulate

    add_simulate_arguments(commands.add_parser(
        "simulate", help=simulate.__doc__.splitlines()[0], description=simulate.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter))

    args = parser.parse_args(argv)
    if args.command == "simulate":
        return run_simulation(args)

    try:
        settings = load_settings(args.config)
        if args.command == "prepare-model":
            print(prepare_model(settings))
            return 0
        if args.port is not None or args.workers is not None:
            settings = settings.replace(
                server={
                    "port": args.port if args.port is not None else settings.server.port,
                    "workers": args.workers or settings.server.workers,
                }
            )
        check_model(settings)  # before any worker starts: a bad model is one line, not N
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except ModelError as exc:
        print(f"model error: {exc}", file=sys.stderr)
        return 2

    from app.server import serve as run_server

    return run_server(settings, config_path=args.config)


def prepare_model(settings: Settings) -> str:
    """Assemble (once) and verify the Whisper model in its cache folder; the folder."""
    return str(locate(settings.stt.whisper.model_dir, settings.stt.whisper.cache_dir))


def check_model(settings: Settings) -> None:
    """Verify and load the Whisper model the gateway will serve with, on the configured device
    and compute type: a model that cannot load stops startup here, in one line, not with a
    traceback in every worker. One worker serves with the model loaded here; spawned workers
    load their own, so then the load is tried in a short-lived child process and the supervisor
    keeps neither a model nor a CUDA context. Raises ModelError."""
    if settings.stt.engine != "whisper":
        return
    whisper = settings.stt.whisper
    options = (whisper.model_dir, whisper.cache_dir, whisper.device, whisper.compute_type,
               whisper.cpu_threads, whisper.workers)
    if settings.server.workers == 1:
        from streaming.stt import whisper as engine

        engine.load_model(*options)  # the one worker's engines use it
        return
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool
    from multiprocessing import get_context

    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        try:
            pool.submit(whisper_model.try_load, *options).result()
        except BrokenProcessPool:
            raise ModelError("stt.whisper: the process checking the model died while loading "
                             "it (CTranslate2 or the device's driver crashed)") from None


def add_simulate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wav", help="caller audio (any PCM WAV; converted to 8 kHz mu-law)")
    parser.add_argument("--dtmf", default="", help="keys to press, e.g. 1234#")
    parser.add_argument("--dtmf-at", type=float, help="press the keys at this stream second "
                        "instead of after the audio")
    parser.add_argument("--out", help="write what the caller heard to this WAV (8 kHz, 16-bit)")
    parser.add_argument("--url", default="http://127.0.0.1:5001",
                        help="where the gateway listens (default %(default)s)")
    parser.add_argument("--public-url", help="the gateway's server.public_url, to sign the "
                        "webhook as Twilio would (default: config.yaml/environment, else --url)")
    parser.add_argument("--auth-token", default="", help="Twilio auth token the gateway validates "
                        "with (default: twilio.auth_token from config.yaml/environment)")
    parser.add_argument("--from", dest="from_number", default="+34600000001")
    parser.add_argument("--to", dest="to_number", default="+34910000000")
    parser.add_argument("--fast", action="store_true",
                        help="send audio as fast as possible; wait in real time only for the "
                        "gateway")
    parser.add_argument("--tail", type=float, default=15.0,
                        help="most seconds to wait for the bot to answer and finish "
                        "(default %(default)s)")
    parser.add_argument("--no-wait-greeting", action="store_true",
                        help="speak at once instead of after the greeting has played")
    parser.add_argument("--no-follow", action="store_true",
                        help="stop when the stream ends instead of running the TwiML after it "
                        "as Twilio does (the <Redirect>, then a new stream, <Gather> or <Dial>)")


def run_simulation(args: argparse.Namespace) -> int:
    """`python -m app simulate`: one call from a WAV file and/or keys; the timeline printed."""
    import httpx
    import websockets

    from app.simulate import SimulationError, Turn, load_wav, simulate_call

    if not args.wav and not args.dtmf:
        print("simulate: give --wav and/or --dtmf", file=sys.stderr)
        return 2
    try:
        audio = load_wav(args.wav) if args.wav else b""
    except (OSError, SimulationError) as exc:
        print(f"simulate: cannot read {args.wav}: {exc}", file=sys.stderr)
        return 2
    auth_token, public_url = args.auth_token, args.public_url
    if not auth_token or public_url is None:
        try:  # sign like the gateway configured here expects (config.yaml + environment)
            settings = load_settings()
        except ConfigError as exc:
            print(f"simulate: configuration error: {exc}", file=sys.stderr)
            return 2
        auth_token = auth_token or settings.twilio.auth_token
        if public_url is None:
            public_url = settings.server.public_url or None
    dtmf_at = [(args.dtmf_at, args.dtmf)] if args.dtmf_at is not None and args.dtmf else []
    turn = Turn(audio=audio, digits="" if dtmf_at else args.dtmf, wait_limit=10.0,
                when="now" if args.no_wait_greeting else "bot_idle")
    try:
        result = asyncio.run(simulate_call(
            args.url, [turn], auth_token=auth_token, public_url=public_url,
            from_number=args.from_number, to_number=args.to_number,
            realtime=not args.fast, tail=args.tail, dtmf_at=dtmf_at, follow=not args.no_follow))
    except (SimulationError, OSError, httpx.HTTPError, websockets.InvalidHandshake) as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return 1
    if args.fast:
        print("(fast mode: times are stream time, not what a caller would wait)")
    print(result.timeline())
    if args.out:
        result.write_wav(args.out)
        audible = result.audible_seconds()
        print(f"heard {result.duration:.2f}s ({audible:.2f}s of it audible) -> {args.out}")
    if result.close_code not in (None, 1000):
        print(f"simulate: the gateway closed the stream with code {result.close_code}",
              file=sys.stderr)
        return 1
    return 1 if result.protocol_errors else 0


if __name__ == "__main__":
    sys.exit(main())
