"""Graceful drain of one gateway process on SIGTERM: the listener keeps answering (readiness
503, new calls to the Gather path), live calls go on until they end or server.drain_timeout_seconds
passes, then the process exits 0. Real process, real signals, real websockets."""

from __future__ import annotations

import asyncio
import signal

from tests.support.gateway_process import LiveCall, gateway_process


async def test_live_call_goes_on_while_draining_then_exit_zero() -> None:
    with gateway_process(drain_timeout=60) as gateway:
        assert "<Connect>" in await gateway.voice("CA" + "1" * 32)
        async with LiveCall.open(gateway.ws_url, "CA" + "2" * 32) as call:
            await call.turn(gateway.bot)
            gateway.signal(signal.SIGTERM)
            health = await gateway.until_not_ready()
            assert health["draining"] is True and health["status"] == "ok"
            twiml = await gateway.voice("CA" + "3" * 32)
            assert "<Gather" in twiml and "<Stream" not in twiml
            await call.turn(gateway.bot)  # the live call still talks to the bot
            assert gateway.process.poll() is None
            await call.ws.send(call.twilio.stop())
            assert await call.closed_with() == 1000
        assert await asyncio.to_thread(gateway.wait, 15) == 0
        assert '"event": "draining"' in gateway.output()


async def test_drain_limit_closes_the_calls_left_then_exit_zero() -> None:
    with gateway_process(drain_timeout=1) as gateway:
        async with LiveCall.open(gateway.ws_url, "CA" + "4" * 32) as call:
            await call.turn(gateway.bot)
            gateway.signal(signal.SIGTERM)
            await gateway.until_not_ready()
            # Closed by the server: Twilio then runs the TwiML after </Connect> (the fallback).
            assert await call.closed_with(timeout=15) is not None
        assert await asyncio.to_thread(gateway.wait, 15) == 0


async def test_second_signal_ends_the_drain_at_once() -> None:
    with gateway_process(drain_timeout=300) as gateway:
        async with LiveCall.open(gateway.ws_url, "CA" + "5" * 32) as call:
            await call.turn(gateway.bot)
            gateway.signal(signal.SIGTERM)
            await gateway.until_not_ready()
            gateway.signal(signal.SIGTERM)
            assert await call.closed_with(timeout=15) is not None
        assert await asyncio.to_thread(gateway.wait, 15) == 0
