"""The servers a benchmark measures, each in its own process pinned to SERVER_CORE: the gateway
as `python -m app serve` runs it (bench/gateway_server.py) or the bare websocket server
(bench/bare_server.py). The load generators run on LOAD_CORE.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
AUTH_TOKEN = "bench-auth-token"
SERVER_CORE, LOAD_CORE = 0, 1


@dataclass
class Server:
    url: str
    public_url: str
    token: str
    process: psutil.Process | None  # None when measuring a gateway started elsewhere (--url)


@dataclass(frozen=True)
class ServerOptions:
    """How to run the servers: a checkout (`root`), engines and extra environment (settings).
    With `url`, nothing is started: the gateway already running there is measured. `pinned`:
    on SERVER_CORE (CPU figures); off, on any core (latency with engines that use threads)."""

    root: Path = ROOT
    stt: str = "null"
    tts: str = "null"
    environment: dict[str, str] = field(default_factory=dict)
    url: str | None = None
    public_url: str | None = None
    auth_token: str = AUTH_TOKEN
    pinned: bool = True


@contextmanager
def started(kind: Literal["bare", "gateway"], options: ServerOptions, rasa_url: str, logs: Path,
            probe: bool = False) -> Iterator[Server]:
    """A bare or gateway server process on SERVER_CORE until the block ends; `probe`: the
    gateway measures its event-loop lag (bench/probe.py), only where latency is reported."""
    if options.url:
        # A gateway that does not answer breaks the run here, not after the calls' warm-up.
        httpx.get(options.url.rstrip("/") + "/health", timeout=5,
                  trust_env=False).raise_for_status()
        yield Server(options.url, options.public_url or options.url, options.auth_token, None)
        return
    from tests.support.servers import free_port

    root, port = options.root, free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(root)}
    if kind == "bare":
        command = [sys.executable, str(root / "bench" / "bare_server.py"), "--port", str(port)]
    else:
        command = [sys.executable, str(root / "bench" / "gateway_server.py"), "--port", str(port),
                   *(["--probe"] if probe else [])]
        env.update({
            "SERVER_PUBLIC_URL": url, "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "RASA_URL": rasa_url,
            "STT_ENGINE": options.stt, "TTS_ENGINE": options.tts,
            # Nothing may reach the real Twilio: a transfer fails fast and shows as a dropped call.
            "TWILIO_API_BASE_URL": "http://127.0.0.1:9", "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
        })
    env.update(options.environment)
    log = open(logs / f"{kind}-{port}.log", "wb")
    pin = (lambda: os.sched_setaffinity(0, {SERVER_CORE})) if options.pinned else None
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root,
                            preexec_fn=pin)
    try:
        wait_healthy(proc, url, 60, f"{kind} server (see {log.name})")  # Whisper loads in seconds
        yield Server(url, url, AUTH_TOKEN, psutil.Process(proc.pid))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def wait_healthy(proc: subprocess.Popen[bytes], url: str, timeout: float, what: str) -> None:
    """Until GET /health answers 200; RuntimeError naming `what` if `proc` exits or time is up."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the {what} did not start")
        try:
            if httpx.get(url + "/health", timeout=1, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
