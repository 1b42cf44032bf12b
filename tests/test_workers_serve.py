"""Several uvicorn workers behind one port (`python -m app serve --workers 2`): both answer, and
on SIGTERM each one drains its own calls while the port keeps answering, then the whole instance
exits 0 with no worker left behind."""

from __future__ import annotations

import asyncio
import signal

import httpx

from tests.support.gateway_process import GatewayProcess, LiveCall, gateway_process


async def active_calls_seen(gateway: GatewayProcess, attempts: int = 200) -> set[int]:
    """`active_calls` as answered by whichever worker takes each new connection."""
    seen: set[int] = set()
    for _ in range(attempts):
        async with httpx.AsyncClient(trust_env=False, timeout=5) as http:  # a new connection
            seen.add((await http.get(gateway.url + "/")).json()["active_calls"])
        if len(seen) == 2:
            break
    return seen


async def test_two_workers_share_the_port_and_drain_then_exit_zero() -> None:
    with gateway_process(workers=2, drain_timeout=60) as gateway:
        processes = gateway.workers()
        assert len(processes) == 2
        async with LiveCall.open(gateway.ws_url, "CA" + "6" * 32) as call:
            await call.turn(gateway.bot)
            # One worker holds the call, the other none: both answer on the same port.
            assert await active_calls_seen(gateway) == {0, 1}
            gateway.signal(signal.SIGTERM)
            health = await gateway.until_not_ready()
            assert health["draining"] is True
            assert "<Gather" in await gateway.voice("CA" + "7" * 32)
            await call.turn(gateway.bot)  # the call goes on in its worker
            assert gateway.process.poll() is None
            await call.ws.send(call.twilio.stop())
            assert await call.closed_with() == 1000
        assert await asyncio.to_thread(gateway.wait, 15) == 0
        assert not any(process.is_running() for process in processes)


async def test_idle_workers_exit_zero_at_once_on_sigterm() -> None:
    with gateway_process(workers=2) as gateway:
        processes = gateway.workers()
        assert len(processes) == 2
        async with httpx.AsyncClient(trust_env=False, timeout=5) as http:
            for _ in range(10):
                assert (await http.get(gateway.url + "/health")).status_code == 200
        gateway.signal(signal.SIGTERM)
        assert await asyncio.to_thread(gateway.wait, 10) == 0
        assert not any(process.is_running() for process in processes)
