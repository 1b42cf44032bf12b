"""Command line: `python -m app serve` starts the gateway, `python -m app simulate` plays a caller,
`python -m app prepare-model` assembles and verifies the offline Whisper model (Docker builds)."""

from __future__ import annotations

import argparse
import sys

from app.config import ConfigError, Settings, load_settings
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

    simulate.add_arguments(commands.add_parser(
        "simulate", help=simulate.__doc__.splitlines()[0], description=simulate.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter))

    args = parser.parse_args(argv)
    if args.command == "simulate":
        return simulate.run(args)

    try:
        settings = load_settings(args.config)
        if args.command == "prepare-model":
            print(prepare_model(settings, always=True))
            return 0
        if args.port is not None or args.workers is not None:
            settings = settings.replace(
                server={
                    "port": args.port if args.port is not None else settings.server.port,
                    "workers": args.workers or settings.server.workers,
                }
            )
        prepare_model(settings)  # before any worker starts: a bad model is one line, not N
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except ModelError as exc:
        print(f"model error: {exc}", file=sys.stderr)
        return 2

    from app.server import serve as run_server

    return run_server(settings, config_path=args.config)


def prepare_model(settings: Settings, always: bool = False) -> str:
    """Check (assembling it once) the Whisper model the gateway will load; its folder."""
    whisper = settings.stt.whisper
    if settings.stt.engine != "whisper" and not always:
        return ""
    return str(locate(whisper.model_dir, whisper.cache_dir))


if __name__ == "__main__":
    sys.exit(main())
