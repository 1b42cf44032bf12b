"""With several workers (`python -m app serve --workers 2`), one GET /metrics answers for the whole
instance: counters summed over the workers, live calls summed over the workers still running,
process figures per worker. Real processes, calls the kernel spread over both workers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from contextlib import AsyncExitStack
from pathlib import Path

from websockets.exceptions import ConnectionClosed

from tests.support.gateway_process import GatewayProcess, LiveCall, gateway_process

MAX_CALLS = 40  # the kernel hands connections to whichever worker accepts first


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def pids(samples: dict, name: str) -> set[int]:
    return {int(dict(labels)["pid"]) for sample, labels in samples if sample == name}


async def calls_on_both_workers(gateway: GatewayProcess, stack: AsyncExitStack) -> list[LiveCall]:
    """Open calls until each worker holds at least one."""
    calls: list[LiveCall] = []
    while min(gateway.connections_held().values()) == 0:
        assert len(calls) < MAX_CALLS, f"all calls on one worker: {gateway.connections_held()}"
        call_sid = f"CA{len(calls):032x}"
        calls.append(await stack.enter_async_context(LiveCall.open(gateway.ws_url, call_sid)))
    return calls


async def until_scraped(gateway: GatewayProcess, name: str, expected: float,
                        timeout: float = 15) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        samples = await gateway.scrape()
        if value(samples, name) == expected:
            return samples
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{name} is {value(samples, name)}, expected {expected}")
        await asyncio.sleep(0.1)


async def test_one_scrape_counts_the_calls_of_every_worker() -> None:
    with gateway_process(workers=2) as gateway:
        shared = Path(re.search(r"workers share their metrics in (\S+)\"", gateway.output())[1])
        assert shared.is_dir()
        webhooks = 6
        for index in range(webhooks):  # each on a new connection
            assert "<Connect>" in await gateway.voice(f"CA{index:032x}")
        async with AsyncExitStack() as stack:
            calls = await calls_on_both_workers(gateway, stack)
            for call in calls:
                await call.turn(gateway.bot)
            workers = {worker.pid for worker in gateway.workers()}
            for _ in range(6):  # each scrape on a new connection: either worker may answer
                samples = await gateway.scrape()
                assert value(samples, "gateway_stream_calls_total") == len(calls)
                assert value(samples, "gateway_stream_active_calls") == len(calls)
                assert value(samples, "gateway_stream_turns_total") == len(calls)
                assert value(samples, "gateway_incoming_calls_total", mode="stream") == webhooks
                assert value(samples, "gateway_webhook_duration_seconds_count",
                             route="voice") == webhooks
                assert pids(samples, "process_cpu_seconds_total") == workers
                assert pids(samples, "process_resident_memory_bytes") == workers
            for call in calls:
                await call.ws.send(call.twilio.stop())
            await until_scraped(gateway, "gateway_stream_active_calls", 0)
        gateway.signal(signal.SIGTERM)
        assert await asyncio.to_thread(gateway.wait, 15) == 0
        assert not shared.exists()  # each start gets a new, empty directory


async def test_a_killed_workers_calls_leave_the_live_gauge_and_its_counts_stay() -> None:
    with gateway_process(workers=2, drain_timeout=60) as gateway:
        async with AsyncExitStack() as stack:
            calls = await calls_on_both_workers(gateway, stack)
            held = gateway.connections_held()
            victim, survivor = sorted(held, key=held.get)
            os.kill(victim, signal.SIGKILL)
            # The supervisor marks the worker dead, then drains the survivor, which still answers.
            samples = await until_scraped(gateway, "gateway_stream_active_calls",
                                          len(calls) - held[victim])
            assert value(samples, "gateway_stream_calls_total") == len(calls)
            assert pids(samples, "process_cpu_seconds_total") == {survivor}
            for call in calls:
                with contextlib.suppress(ConnectionClosed):  # the victim's are gone
                    await call.ws.send(call.twilio.stop())
        assert await asyncio.to_thread(gateway.wait, 15) == 1  # a worker died: the instance fails
        assert '"event": "worker_died"' in gateway.output()
