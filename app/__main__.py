"""Command line: `python -m app serve` starts the gateway, `python -m app simulate` plays a caller."""

from __future__ import annotations

import argparse
import sys

from app.config import ConfigError, load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="start the gateway")
    serve.add_argument("--config", help="config file (default: config.yaml or $GATEWAY_CONFIG)")
    serve.add_argument("--port", type=int, help="override server.port")
    serve.add_argument("--workers", type=int, help="override server.workers")

    from app import simulate

    simulate.add_arguments(commands.add_parser(
        "simulate", help=simulate.__doc__.splitlines()[0], description=simulate.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter))

    args = parser.parse_args(argv)
    if args.command == "simulate":
        return simulate.run(args)

    try:
        settings = load_settings(args.config)
        if args.port is not None or args.workers is not None:
            settings = settings.replace(
                server={
                    "port": args.port if args.port is not None else settings.server.port,
                    "workers": args.workers or settings.server.workers,
                }
            )
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2

    from app.server import serve as run_server

    return run_server(settings, config_path=args.config)


if __name__ == "__main__":
    sys.exit(main())
