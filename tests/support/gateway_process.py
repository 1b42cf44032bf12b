"""`python -m app serve` as a real child process, for what needs real signals: drain and workers;
and a live call held open against it.

Null engines, a scripted Rasa bot in this process, Twilio's REST API on a dead loopback port
(nothing may leave the machine), signatures checked with AUTH_TOKEN.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from app.twiml import STREAM_PATH
from streaming.stt.null import MARKER, NullSpeechToText
from streaming.tasks import cancel_and_wait
from streaming.twilio_side import TwilioSide, new_sid
from tests.support.rasa_bot import RasaBot
from tests.support.servers import free_port, running
from tests.support.twilio_sign import answered, asigned_post, call_params, signed_headers
from tests.support.caller_audio import FRAME_BYTES, SILENT_FRAME

ROOT = Path(__file__).resolve().parent.parent.parent
AUTH_TOKEN = "process-test-auth-token"
NULL_FINAL = MARKER.ljust(FRAME_BYTES, MARKER[:1])  # the null recognizer's "end of sentence"
NULL_TEXT = NullSpeechToText().text  # what it then "hears"


@dataclass
class GatewayProcess:
    process: subprocess.Popen[bytes]
    url: str
    bot: RasaBot
    log: IO[bytes]

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + STREAM_PATH

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.process.send_signal(sig)

    def kill(self) -> None:
        """`kill -9` of the instance: the server and every process it started, at once."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout)

    async def voice(self, call_sid: str) -> str:
        """The TwiML the voice webhook answers a new call with (signed like Twilio's)."""
        async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
            response = await asigned_post(http, self.url + "/webhook/twilio/voice",
                                          call_params(call_sid), token=AUTH_TOKEN)
        response.raise_for_status()
        return response.text

    async def until_not_ready(self, timeout: float = 10) -> dict[str, object]:
        """Poll GET /ready until it answers 503; then GET /health's body."""
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(trust_env=False, timeout=5) as http:
            while (await http.get(self.url + "/ready")).status_code != 503:
                if time.monotonic() > deadline:
                    raise AssertionError("/ready never answered 503")
                await asyncio.sleep(0.05)
            health = await http.get(self.url + "/health")
        assert health.status_code == 200
        return health.json()

    def workers(self) -> list[psutil.Process]:
        """The worker processes (none with one worker: the process serves itself)."""
        children = psutil.Process(self.process.pid).children()
        return [child for child in children if "spawn_main" in " ".join(child.cmdline())]

    def connections_held(self) -> dict[int, int]:
        """Worker pid -> client connections it holds (the kernel gave them to that worker)."""
        port = int(self.url.rsplit(":", 1)[1])
        return {worker.pid: sum(c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port
                                for c in worker.net_connections(kind="tcp"))
                for worker in self.workers()}

    async def scrape(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """One GET /metrics on a new connection (any worker may answer): sample -> value."""
        async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
            response = await http.get(self.url + "/metrics")
        response.raise_for_status()
        return {(sample.name, frozenset(sample.labels.items())): sample.value
                for family in text_string_to_metric_families(response.text)
                for sample in family.samples}

    def output(self) -> str:
        """What the process has logged so far."""
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def records(self, event: str) -> list[dict[str, object]]:
        """The JSON log records of `event`, in order."""
        return [record for line in self.output().splitlines() if line.startswith("{")
                and (record := json.loads(line)).get("event") == event]


@contextmanager
def rasa_bot(bot: RasaBot | None = None) -> Iterator[tuple[RasaBot, str]]:
    """A Rasa-compatible bot on loopback, for gateway processes to share: (bot, its base URL)."""
    bot = bot or RasaBot()
    with running(bot.app()) as server:
        yield bot, server.url


@contextmanager
def gateway_process(workers: int = 1, drain_timeout: float = 60, start_timeout: float = 60,
                    env: Mapping[str, str] | None = None,
                    rasa: tuple[RasaBot, str] | None = None) -> Iterator[GatewayProcess]:
    """The gateway on a free port; `env` adds settings (SERVER_MAX_ACTIVE_CALLS=2). It talks to
    `rasa` (from `rasa_bot`: instances sharing one conversation store), else a bot of its own."""
    port = free_port()
    with contextlib.ExitStack() as stack:
        bot, rasa_url = rasa or stack.enter_context(rasa_bot())
        env = {
            **os.environ,
            "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
            "TWILIO_API_BASE_URL": "http://127.0.0.1:9",
            "RASA_URL": f"{rasa_url}/webhooks/rest/webhook",
            "STT_ENGINE": "null", "TTS_ENGINE": "null", "SERVER_HOST": "127.0.0.1",
            "SERVER_PUBLIC_URL": "", "SERVER_DRAIN_TIMEOUT_SECONDS": str(drain_timeout),
            "LOGGING_LEVEL": "INFO", **(env or {}),
        }
        with tempfile.TemporaryFile() as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "app", "serve", "--port", str(port),
                 "--workers", str(workers)],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            gateway = GatewayProcess(process, f"http://127.0.0.1:{port}", bot, log)
            try:
                _wait_healthy(gateway, start_timeout)
                yield gateway
            finally:
                if process.poll() is None:  # a failed test: its workers go with its group
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(10)


def _wait_healthy(gateway: GatewayProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if gateway.process.poll() is not None:
            raise RuntimeError(f"gateway exited at start:\n{gateway.output()}")
        try:
            if httpx.get(gateway.url + "/health", timeout=1, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("gateway did not become healthy")
        time.sleep(0.1)


class LiveCall:
    """One Twilio media stream held open by a test: the gateway's marks are echoed at once (its
    audio "plays" instantly), its media messages counted; `turn` makes the null recognizer hear
    the caller finish a sentence."""

    def __init__(self, ws: ClientConnection, twilio: TwilioSide) -> None:
        self.ws, self.twilio = ws, twilio
        self.media = 0
        self.playing = False
        self.last_message = time.monotonic()
        self._receiver = asyncio.create_task(self._receive())

    @classmethod
    @asynccontextmanager
    async def open(cls, url: str, call_sid: str, stream_sid: str | None = None,
                   token: str = AUTH_TOKEN,
                   signed_url: str | None = None) -> AsyncIterator[LiveCall]:
        """Connect to the stream websocket at `url` (signed with `token` over `signed_url`, the
        gateway's public one; default `url`) and start the call (its stream named `stream_sid`,
        a new SID by default)."""
        headers = signed_headers(signed_url or url, token=token)
        async with connect(url, proxy=None, open_timeout=10, additional_headers=headers) as ws:
            twilio = answered(TwilioSide(call_sid=call_sid, stream_sid=stream_sid or new_sid("MZ")),
                              token)
            await ws.send(twilio.connected())
            await ws.send(twilio.start())
            call = cls(ws, twilio)
            try:
                yield call
            finally:
                await call.stop_receiving()

    async def stop_receiving(self) -> None:
        await cancel_and_wait(self._receiver)

    async def _receive(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for data in self.ws:
                self.last_message = time.monotonic()
                event = self.twilio.receive(data, 0.0)
                if event == "media":
                    self.media += 1
                    self.playing = True
                elif event == "mark":
                    for name in self.twilio.played_marks():
                        await self.ws.send(self.twilio.mark(name))
                    self.playing = False

    async def _until(self, condition: Callable[[], bool], deadline: float, what: str) -> None:
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out: {what}")
            await asyncio.sleep(0.02)

    async def turn(self, bot: RasaBot, timeout: float = 10) -> None:
        """Once the bot has finished speaking, say something; wait until the bot got it and
        its reply's audio came back."""
        deadline = time.monotonic() + timeout
        await self._until(lambda: self.media > 0 and not self.playing
                          and time.monotonic() - self.last_message > 0.2, deadline,
                          "the bot's audio to finish")
        asked, heard = self._turns(bot), self.media
        # The recognizer is fed 100 ms batches; a marker counts again only after a batch
        # without one, as when audio streams on between two sentences.
        for frame in [SILENT_FRAME] * 5 + [NULL_FINAL] + [SILENT_FRAME] * 5:
            await self.ws.send(self.twilio.media(frame))
        await self._until(lambda: self._turns(bot) > asked, deadline, "the bot to get the turn")
        await self._until(lambda: self.media > heard, deadline, "the reply's audio")

    def _turns(self, bot: RasaBot) -> int:
        """Turns of this call the bot received (other calls may share the bot)."""
        return sum(r["sender"] == self.twilio.call_sid and r["message"] == NULL_TEXT
                   for r in list(bot.requests))

    async def closed_with(self, timeout: float = 10) -> int | None:
        """Wait for the gateway to close the socket; its close code."""
        await asyncio.wait_for(self.ws.wait_closed(), timeout)
        return self.ws.close_code
