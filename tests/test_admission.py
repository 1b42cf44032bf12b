"""Admission control through real processes: at `server.max_active_calls` live calls on the
instance, /ready answers 503 and a voice webhook that still arrives gets the Gather path; below
it again, the instance takes streams. With two workers the limit counts the whole instance,
whichever worker answers."""

from __future__ import annotations

import asyncio
import signal
from contextlib import AsyncExitStack

import httpx

from tests.support.gateway_process import GatewayProcess, LiveCall, gateway_process


async def health_answers(gateway: GatewayProcess, until_seen: int, attempts: int = 200
                         ) -> list[dict[str, object]]:
    """GET /health on new connections until `until_seen` distinct `active_calls` (a per-worker
    figure) have answered, so that every worker did."""
    answers: list[dict[str, object]] = []
    for _ in range(attempts):
        async with httpx.AsyncClient(trust_env=False, timeout=5) as http:
            answers.append((await http.get(gateway.url + "/health")).json())
        if len({answer["active_calls"] for answer in answers}) == until_seen:
            return answers
    raise AssertionError(f"not every worker answered: {answers[-5:]}")


def worker_of(gateway: GatewayProcess, call: LiveCall) -> int:
    """The pid of the worker holding the call's connection."""
    port = call.ws.local_address[1]
    (pid,) = [worker.pid for worker in gateway.workers()
              if any(c.raddr and c.raddr.port == port for c in worker.net_connections("tcp"))]
    return pid


async def ready_status(gateway: GatewayProcess) -> int:
    async with httpx.AsyncClient(trust_env=False, timeout=5) as http:
        return (await http.get(gateway.url + "/ready")).status_code


async def until_ready(gateway: GatewayProcess, expected: int, timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while await ready_status(gateway) != expected:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"/ready never answered {expected}")
        await asyncio.sleep(0.05)


async def test_a_full_instance_is_not_ready_and_answers_new_calls_with_gather() -> None:
    with gateway_process(env={"SERVER_MAX_ACTIVE_CALLS": "2"}) as gateway:
        async with AsyncExitStack() as stack:
            first = await stack.enter_async_context(LiveCall.open(gateway.ws_url, "CA" + "1" * 32))
            await first.turn(gateway.bot)
            assert await ready_status(gateway) == 200
            assert "<Stream" in await gateway.voice("CA" + "2" * 32)
            second = await stack.enter_async_context(LiveCall.open(gateway.ws_url, "CA" + "2" * 32))
            await second.turn(gateway.bot)
            await until_ready(gateway, 503)
            async with httpx.AsyncClient(trust_env=False, timeout=5) as http:
                ready = (await http.get(gateway.url + "/ready")).json()
            assert ready == {"ready": False, "draining": False, "at_capacity": True,
                             "rasa_reachable": True}
            twiml = await gateway.voice("CA" + "3" * 32)
            assert "<Gather" in twiml and "<Stream" not in twiml
            await first.turn(gateway.bot)  # the live calls go on
            samples = await gateway.scrape()
            assert samples[("gateway_calls_over_capacity_total", frozenset())] == 1
            assert samples[("gateway_incoming_calls_total", frozenset({("mode", "gather")}))] == 1
            await second.ws.send(second.twilio.stop())
            assert await second.closed_with() == 1000
            await until_ready(gateway, 200)
            assert "<Stream" in await gateway.voice("CA" + "4" * 32)
        assert '"reason": "at_capacity"' in gateway.output()


async def test_with_two_workers_the_limit_counts_the_whole_instance() -> None:
    with gateway_process(workers=2, env={"SERVER_MAX_ACTIVE_CALLS": "3"}) as gateway:
        async with AsyncExitStack() as stack:
            calls = [await stack.enter_async_context(LiveCall.open(gateway.ws_url, f"CA{i:032x}"))
                     for i in range(3)]
            for call in calls:
                await call.turn(gateway.bot)
            # 3 calls over 2 workers: they hold different numbers, so /health tells them apart.
            held = sorted(gateway.connections_held().values())
            assert sum(held) == 3 and held[0] != held[1]
            for answer in await health_answers(gateway, until_seen=2):
                assert answer["at_capacity"] is True and answer["ready"] is False, answer
            for index in range(6):  # whichever worker takes the webhook
                assert "<Stream" not in await gateway.voice(f"CA{index + 10:032x}")
            # End a call of the worker holding fewer, so the two still hold different numbers.
            held = gateway.connections_held()
            ending = min(calls, key=lambda call: held[worker_of(gateway, call)])
            await ending.ws.send(ending.twilio.stop())
            assert await ending.closed_with() == 1000
            await until_ready(gateway, 200)
            for answer in await health_answers(gateway, until_seen=2):
                assert answer["at_capacity"] is False and answer["ready"] is True, answer
        gateway.signal(signal.SIGTERM)
        assert await asyncio.to_thread(gateway.wait, 15) == 0
