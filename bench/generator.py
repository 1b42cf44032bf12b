"""The load generator: N simulated Twilio calls on one server, in a process of their own.

Every call is what Twilio does: a signed voice webhook, a signed websocket, 50 `media` frames a
second on one shared 20 ms clock, marks echoed once the audio before them has "played"
(streaming.twilio_side plays Twilio's role; this only drives the sockets). `Load` is the handle
the benchmark holds: the process runs pinned to LOAD_CORE and reports over a pipe.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from app.simulate import load_wav, on_gateway, parse_twiml
from app.twiml import VOICE_PATH
from audio import mulaw
from audio.framing import FRAME_BYTES, FRAME_SECONDS
from bench.servers import LOAD_CORE, Server
from streaming.protocol import ProtocolError
from streaming.stt.null import MARKER as NULL_STT_MARKER
from streaming.twilio_side import TwilioSide

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
SLOTS = 4  # instants per 20 ms at which calls' frames go out
WARMUP_SECONDS = 3.0  # after every call has started, before the measurement window
WARM_CALL_SECONDS, WARM_SETTLE_SECONDS = 2.0, 1.0  # the one call before the idle baseline


def caller_frames(turns: bool = True) -> list[bytes]:
    """One caller's turn, looped, per 20 ms frame: an utterance, the frame that makes the null
    recognizer emit its final (streaming/stt/null.py), then the line's noise floor while the bot
    answers and a pause: a turn every 8.8 s. Without `turns` the final never comes: the caller
    talks, the bot never answers (the per-frame path alone)."""
    end_of_turn = NULL_STT_MARKER.ljust(FRAME_BYTES, NULL_STT_MARKER[:1])
    audio = load_wav(FIXTURES / "block_my_card.wav")
    audio += mulaw.silence(-len(audio) % FRAME_BYTES)
    audio += end_of_turn if turns else mulaw.silence(FRAME_BYTES)
    audio += load_wav(FIXTURES / "silence.wav") * 3
    audio += mulaw.silence(-len(audio) % FRAME_BYTES)
    return [audio[i:i + FRAME_BYTES] for i in range(0, len(audio), FRAME_BYTES)]


@dataclass
class _Call:
    index: int
    ws: ClientConnection
    side: TwilioSide
    t0: float = field(default_factory=time.monotonic)
    dropped: bool = False
    receiver: asyncio.Task[None] | None = None


class Generator:
    """Places the calls, paces every call's frames on one clock, echoes marks, counts."""

    def __init__(self, url: str, public_url: str, token: str, frames: list[bytes],
                 warmup: float = WARMUP_SECONDS) -> None:
        self.url, self.public_url = url.rstrip("/"), public_url.rstrip("/")
        self.warmup = warmup
        self.validator = RequestValidator(token)
        self.caller_frames = frames  # one caller's loop
        self.frames = self.late = 0
        self.stopping = False

    async def place(self, http: httpx.AsyncClient, index: int) -> _Call | None:
        side = TwilioSide(from_number=f"+346{index:08d}")
        params = {"AccountSid": side.account_sid, "CallSid": side.call_sid,
                  "CallStatus": "ringing", "Direction": "inbound", "From": side.from_number,
                  "To": side.to_number}
        signature = self.validator.compute_signature(self.public_url + VOICE_PATH, params)
        try:
            response = await http.post(self.url + VOICE_PATH, data=params,
                                       headers={"X-Twilio-Signature": signature})
            response.raise_for_status()
            stream_url, side.custom_parameters = parse_twiml(response.text)
            ws = await connect(
                on_gateway(stream_url, self.url), proxy=None, compression=None,
                max_size=None, open_timeout=30, ping_interval=None,
                additional_headers={
                    "X-Twilio-Signature": self.validator.compute_signature(stream_url, {})})
            await ws.send(side.connected())
            await ws.send(side.start())
        except Exception as exc:  # counted as dropped; the run goes on
            print(f"call {index} failed to connect: {exc!r}", file=sys.stderr)
            return None
        call = _Call(index, ws, side)
        call.receiver = asyncio.create_task(self.receive(call))
        return call

    async def receive(self, call: _Call) -> None:
        """Twilio's output side: the gateway's audio, marks and clears into the call's playout."""
        side, t0 = call.side, call.t0
        try:
            async for data in call.ws:
                side.receive(data, time.monotonic() - t0)
        except ConnectionClosed:
            pass
        except ProtocolError as exc:
            print(f"call {call.index}: {exc}", file=sys.stderr)
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
        frames, n = self.caller_frames, len(self.caller_frames)
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
                side = call.side
                try:
                    for name in side.due_marks(time.monotonic() - call.t0):
                        await call.ws.send(side.mark(name))
                    await call.ws.send(side.media(frames[(frame + call.index * 37) % n]))
                except ConnectionClosed:
                    call.dropped = True
                    continue
                self.frames += 1
                if time.monotonic() - due > FRAME_SECONDS:
                    self.late += 1

    async def hang_up(self, calls: list[_Call]) -> None:
        self.stopping = True

        async def one(call: _Call) -> None:
            try:
                await call.ws.send(call.side.stop())
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
        loop.call_later(min(WARM_CALL_SECONDS, self.warmup), stop_warm.set)
        await self.pace(warm, stop_warm)
        await self.hang_up(warm)
        await asyncio.sleep(min(WARM_SETTLE_SECONDS, self.warmup))
        conn.send("warm")
        await loop.run_in_executor(None, conn.recv)  # "go": the idle baseline is taken
        calls = await self.connect_all(count)
        stop = asyncio.Event()
        pacer = asyncio.create_task(self.pace(calls, stop))
        await asyncio.sleep(self.warmup)
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
                       frames: list[bytes], warmup: float) -> None:
    os.sched_setaffinity(0, {LOAD_CORE})
    try:
        import uvloop

        run = uvloop.run
    except ImportError:  # pragma: no cover
        run = asyncio.run
    conn.send(run(Generator(url, public_url, token, frames, warmup).run(conn, count)))


class Load:
    """One load generator process placing `count` calls on one server, step by step; `warmup`
    seconds pass after the calls connect before the window (the warm-up call is no longer)."""

    def __init__(self, server: Server, count: int, frames: list[bytes],
                 warmup: float = WARMUP_SECONDS) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, theirs = ctx.Pipe()
        self.process = ctx.Process(target=_generator_process, daemon=True, args=(
            theirs, server.url, server.public_url, server.token, count, frames, warmup))
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
        """The process ends once it has reported; one still waiting (the run broke) is killed."""
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
