"""The resume webhook of the real app on loopback, signed like Twilio: what a call whose stream
ended gets next; and the pieces it stands on (what a call carries, the failed hand-overs a
process remembers). Through real processes and a dead instance: tests/test_resume.py."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from app.resume import Carried, FailedHandovers, Handover, RememberFailures
from streaming.ports import CallControlError
from tests.support.http_gateway import AGENT, PUBLIC, SID, Running, gateway
from tests.support.rasa_bot import RasaBot
from tests.support.servers import ServerThread
from tests.support.twilio_sign import call_params, signed_post

RESUME = "/webhook/twilio/resume"


@pytest.fixture(scope="module")
def gw(bot_server: tuple[RasaBot, ServerThread]) -> Iterator[Running]:
    with gateway(bot_server[1].url) as running_gateway:
        yield running_gateway


@pytest.fixture
def started() -> str:
    """The call began as this test runs: however long the suite has run, it is no older."""
    return str(int(time.time()))


def resumes(outcome: str) -> float:
    return REGISTRY.get_sample_value("gateway_resumes_total", {"outcome": outcome}) or 0.0


def resume(gw: Running, resumes: int, started: str) -> ET.Element:
    return gw.twiml(f"{RESUME}?resumes={resumes}&started={started}")


def test_a_dropped_stream_gets_a_new_one_that_carries_the_count_and_the_start(
    gw: Running, bot: RasaBot, caplog: pytest.LogCaptureFixture, started: str
) -> None:
    before = resumes("stream")
    with caplog.at_level(logging.INFO, logger="app.webhooks"):
        root = resume(gw, 1, started)
    assert [child.tag for child in root] == ["Connect", "Redirect"]
    (stream,) = root[0]
    assert stream.attrib == {"url": "wss://voice.bank.example/webhook/twilio/stream"}
    parameters = {p.attrib["name"]: p.attrib["value"] for p in stream}
    issued, token = parameters.pop("issued"), parameters.pop("token")
    assert parameters == {"callSid": SID, "from": "+34600111222", "to": "+34910000000",
                          "resumes": "2", "started": started}
    assert abs(int(issued) - time.time() * 1000) < 60_000  # Unix ms: when this was answered
    assert re.fullmatch(r"[0-9a-f]{64}", token)  # the HMAC binding them (tests/test_media_ws.py)
    assert root[1].text == f"{PUBLIC}{RESUME}?resumes=2&started={started}"
    assert root.find(".//Say") is None  # the new session speaks prompts.resume itself
    assert bot.requests == []  # the conversation goes on in Rasa as it was
    assert resumes("stream") == before + 1
    (record,) = [r for r in caplog.records if getattr(r, "event", None) == "resume"]
    assert (record.call_sid, record.outcome, record.resumes) == (SID, "stream", 1)


def test_after_max_resumes_the_caller_goes_to_the_agent(gw: Running, started: str) -> None:
    assert gw.settings.call.max_resumes == 2
    before = resumes("exhausted")
    root = resume(gw, 2, started)
    assert [child.tag for child in root] == ["Say", "Dial"]
    assert root[0].text == gw.settings.prompts.transfer
    assert root[1].findtext("Number") == AGENT
    assert resumes("exhausted") == before + 1


@pytest.mark.parametrize("resumes_so_far", [0, 2])  # before the resume limit too
def test_a_resume_after_the_longest_call_says_goodbye_and_hangs_up(
    gw: Running, bot: RasaBot, caplog: pytest.LogCaptureFixture, resumes_so_far: int
) -> None:
    """call.max_duration_seconds counts the whole call, from `started`: a stream that drops
    after it is not resumed, and the call ends as the session ends such a call."""
    assert gw.settings.call.max_duration_seconds == 1800
    started = int(time.time()) - 1801
    before = resumes("expired")
    with caplog.at_level(logging.INFO, logger="app.webhooks"):
        root = gw.twiml(f"{RESUME}?resumes={resumes_so_far}&started={started}")
    assert [child.tag for child in root] == ["Say", "Hangup"]
    assert root[0].text == "Gracias por llamar. Adiós."  # prompts.goodbye
    assert bot.requests == []
    assert resumes("expired") == before + 1
    (record,) = [r for r in caplog.records if getattr(r, "event", None) == "resume"]
    assert (record.levelname, record.outcome, record.resumes) == ("INFO", "expired",
                                                                  resumes_so_far)


def test_a_resume_just_within_the_longest_call_still_streams(gw: Running) -> None:
    root = gw.twiml(f"{RESUME}?resumes=0&started={int(time.time()) - 1700}")
    assert [child.tag for child in root] == ["Connect", "Redirect"]


def test_the_count_cannot_be_lowered_without_breaking_the_signature(gw: Running,
                                                                   started: str) -> None:
    """Twilio signs the URL it requests, query included: a count changed on the way is refused."""
    response = signed_post(
        gw.client, f"{gw.server.url}{RESUME}?resumes=0&started={started}", call_params(SID),
        signed_url=f"{PUBLIC}{RESUME}?resumes=2&started={started}")
    assert response.status_code == 403


def test_a_draining_instance_resumes_on_the_gather_path(gw: Running, started: str) -> None:
    before = resumes("gather")
    gw.gateway.draining = True
    try:
        root = resume(gw, 0, started)
    finally:
        gw.gateway.draining = False
    assert [child.tag for child in root] == ["Gather", "Redirect"]
    assert [say.text for say in root[0]] == [gw.settings.prompts.resume]
    assert root[0].attrib["action"] == f"{PUBLIC}/webhook/twilio/speech?noinput=0"
    assert resumes("gather") == before + 1


@pytest.mark.parametrize(("handover", "expected"), [
    (Handover("transfer", "+34911000111"), ["Say", "Dial"]),
    (Handover("hang_up"), ["Hangup"]),
    (Handover("redirect_to_gather"), ["Gather", "Redirect"]),
])
def test_a_hand_over_twilio_refused_here_is_carried_out_by_the_redirect(
    gw: Running, handover: Handover, expected: list[str], started: str
) -> None:
    before = resumes("handover")
    gw.gateway.failed_handovers.remember(SID, handover)
    root = resume(gw, 0, started)
    assert [child.tag for child in root] == expected
    if handover.action == "transfer":
        assert root[1].findtext("Number") == "+34911000111"  # the number the bot asked for
    if handover.action == "redirect_to_gather":
        assert [say.text for say in root[0]] == [gw.settings.prompts.degraded]
    assert resumes("handover") == before + 1
    # Taken: the same call dropping again later is resumed.
    assert [child.tag for child in resume(gw, 0, started)] == ["Connect", "Redirect"]


def test_what_a_call_carries_survives_its_own_round_trip_and_bad_values(started: str) -> None:
    carried = Carried(resumes=1, started=1767225600)
    assert Carried.read(carried.params()) == carried
    assert carried.resumed() == Carried(resumes=2, started=1767225600)
    before = int(time.time())
    for values in ({}, {"resumes": "x", "started": "soon"}):
        fresh = Carried.read(values)  # a stream from before resumes existed: a new call
        assert fresh.resumes == 0 and before <= fresh.started <= time.time()
    assert Carried.read({"resumes": "-3", "started": started}).resumes == 0
    assert Carried.read({"resumes": "1000", "started": started}).resumes == 100
    assert Carried(started=int(time.time()) + 60).elapsed_seconds() == 0.0  # a clock ahead
    assert Carried(started=int(time.time()) - 90).elapsed_seconds() >= 90


def test_failed_hand_overs_are_taken_once_and_forgotten_in_time() -> None:
    failed = FailedHandovers(keep_seconds=0.2, most=2)
    failed.remember("CA1", Handover("hang_up"))
    assert failed.take("CA1") == Handover("hang_up")
    assert failed.take("CA1") is None
    for sid in ("CA1", "CA2", "CA3"):
        failed.remember(sid, Handover("transfer"))
    assert failed.take("CA1") is None  # beyond `most`, the oldest goes
    assert failed.take("CA3") == Handover("transfer")
    time.sleep(0.3)
    assert failed.take("CA2") is None


class Refusing:
    """Twilio refusing every update (an unreachable API, wrong credentials)."""

    async def transfer(self, call_sid: str, number: str | None = None) -> None:
        raise CallControlError("transfer refused")

    async def hang_up(self, call_sid: str) -> None:
        raise CallControlError("hang-up refused")

    async def redirect_to_gather(self, call_sid: str) -> None:
        return None


def test_a_refused_update_is_remembered_and_still_raised() -> None:
    failed = FailedHandovers()
    control = RememberFailures(Refusing(), failed)
    with pytest.raises(CallControlError):
        asyncio.run(control.transfer("CA1", "+34911000111"))
    with pytest.raises(CallControlError):
        asyncio.run(control.hang_up("CA2"))
    asyncio.run(control.redirect_to_gather("CA3"))  # accepted: nothing to carry out later
    assert failed.take("CA1") == Handover("transfer", "+34911000111")
    assert failed.take("CA2") == Handover("hang_up")
    assert failed.take("CA3") is None


def test_the_voice_webhooks_redirect_is_followed_signed_over_its_whole_url(gw: Running) -> None:
    root = gw.twiml("/webhook/twilio/voice")
    redirect = root.find("Redirect")
    assert redirect is not None and redirect.text is not None
    assert redirect.text.startswith(f"{PUBLIC}{RESUME}?resumes=0&started=")
    # Following it is signed over exactly that URL, as Twilio does.
    response = signed_post(gw.client, redirect.text.replace(PUBLIC, gw.server.url),
                           call_params(SID), signed_url=redirect.text)
    assert response.status_code == 200 and "<Stream" in response.text
