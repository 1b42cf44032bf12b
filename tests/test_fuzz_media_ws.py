"""Random and malformed messages on a live media websocket of the real app (null engines): the
call survives them all (a valid turn afterwards still reaches the bot and gets its reply audio),
and once the call stops nothing is left behind: no call registered, no task running."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.gateway import AUTH_TOKEN, RunningGateway, null_gateway
from tests.support.gateway_process import STREAM_PATH, LiveCall
from tests.support.twilio_fuzz import EVENTS, json_values, twilio_shaped

CALL_SID = "CA" + "f" * 32  # one call at a time; each example opens it anew
STREAM_SID = "MZ" + "e" * 32  # known before the call, so the garbage can name the right stream


@pytest.fixture(scope="module")
def gw() -> Iterator[RunningGateway]:
    with null_gateway() as gateway:
        yield gateway


# Anything but a valid `stop`, which rightly ends the call.
garbage = st.one_of(
    st.text(max_size=80),
    st.binary(max_size=40),
    json_values.map(json.dumps),
    twilio_shaped(STREAM_SID, [e for e in EVENTS if e != "stop"]).map(json.dumps),
)


async def garbage_then_a_turn(gw: RunningGateway, messages: list[str | bytes]) -> None:
    url = gw.url.replace("http://", "ws://") + STREAM_PATH
    async with LiveCall.open(url, CALL_SID, STREAM_SID, token=AUTH_TOKEN) as call:
        for message in messages:
            await call.ws.send(message)
        await call.turn(gw.bot)
        await call.ws.send(call.twilio.stop())
        assert await call.closed_with() == 1000


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(garbage, min_size=1, max_size=8))
def test_garbage_never_ends_the_call_nor_leaks(gw: RunningGateway,
                                               messages: list[str | bytes]) -> None:
    before = gw.tasks()
    asyncio.run(garbage_then_a_turn(gw, messages))
    assert gw.wait_settled(before) == []
