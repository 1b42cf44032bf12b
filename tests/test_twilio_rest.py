"""TwilioCallControl: the real twilio client against a local server speaking Twilio's Calls API."""

from __future__ import annotations

import base64
import logging
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from prometheus_client import REGISTRY

from app.config import Settings
from app.twilio_rest import TwilioCallControl
from streaming.ports import CallControlError
from tests.support.servers import ServerThread, free_port, running
from tests.support.twilio_api import TwilioApi

CALL = "CA" + "1f" * 16
PUBLIC = "https://voice.bank.example"


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[TwilioApi, ServerThread]]:
    api = TwilioApi()
    with running(api.app()) as thread:
        yield api, thread


@pytest.fixture
def api(server: tuple[TwilioApi, ServerThread]) -> TwilioApi:
    api = server[0]
    api.mode, api.delay_seconds = "ok", 5.0
    api.requests.clear()
    api.ended.clear()
    return api


def make_settings(server: tuple[TwilioApi, ServerThread], **twilio: Any) -> Settings:
    api, thread = server
    return Settings().replace(
        server={"public_url": PUBLIC},
        twilio={**api.credentials(), "api_base_url": thread.url,
                "fallback_phone_number": "+34910000000", "dial_timeout_seconds": 17, **twilio},
        language={"code": "es-ES", "say_voice": "Polly.Lucia"},
    )


@pytest.fixture
async def control(server: tuple[TwilioApi, ServerThread]) -> AsyncIterator[TwilioCallControl]:
    control = TwilioCallControl(make_settings(server))
    yield control
    await control.aclose()


def failures(operation: str, outcome: str) -> float:
    labels = {"operation": operation, "outcome": outcome}
    return REGISTRY.get_sample_value("gateway_call_control_requests_total", labels) or 0.0


def parse(twiml: str | None) -> ET.Element:
    assert twiml is not None
    return ET.fromstring(twiml)


async def test_transfer_says_the_prompt_and_dials_the_fallback_number(
    api: TwilioApi, control: TwilioCallControl
) -> None:
    await control.transfer(CALL)

    [update] = api.updates(CALL)
    assert update.url is None and update.status is None
    root = parse(update.twiml)
    say, dial = list(root)
    assert (say.tag, say.text) == ("Say", Settings().prompts.transfer)
    assert say.attrib == {"language": "es-ES", "voice": "Polly.Lucia"}
    assert dial.tag == "Dial"
    assert dial.attrib == {"timeout": "17", "method": "POST",
                           "action": f"{PUBLIC}/webhook/twilio/fallback?dialed=1"}
    assert [(n.tag, n.text) for n in dial] == [("Number", "+34910000000")]


async def test_transfer_to_the_number_the_bot_asked_for(
    api: TwilioApi, control: TwilioCallControl
) -> None:
    await control.transfer(CALL, "+34600111222")
    await control.transfer(CALL, "sip:agentes@pbx.bank.example")

    first, second = (parse(u.twiml).find("Dial") for u in api.updates(CALL))
    assert [(n.tag, n.text) for n in first] == [("Number", "+34600111222")]
    assert [(n.tag, n.text) for n in second] == [("Sip", "sip:agentes@pbx.bank.example")]


async def test_transfer_without_any_number_apologizes_and_hangs_up(
    server: tuple[TwilioApi, ServerThread], api: TwilioApi
) -> None:
    control = TwilioCallControl(make_settings(server, fallback_phone_number=""))
    try:
        await control.transfer(CALL)
    finally:
        await control.aclose()

    root = parse(api.updates(CALL)[0].twiml)
    assert [child.tag for child in root] == ["Say", "Hangup"]
    assert root[0].text == Settings().prompts.no_answer
    assert root[0].attrib["language"] == "es-ES"


async def test_hang_up_completes_the_call_and_a_second_update_is_refused(
    api: TwilioApi, control: TwilioCallControl
) -> None:
    await control.hang_up(CALL)

    [update] = api.updates(CALL)
    assert update.params == {"Status": "completed"}
    with pytest.raises(CallControlError, match="21220"):
        await control.hang_up(CALL)


async def test_redirect_to_gather_posts_the_speech_webhook_marked_degraded(
    api: TwilioApi, control: TwilioCallControl
) -> None:
    await control.redirect_to_gather(CALL)

    [update] = api.updates(CALL)
    assert update.params == {"Url": f"{PUBLIC}/webhook/twilio/speech?degraded=1", "Method": "POST"}


async def test_without_public_url_the_base_comes_from_the_websocket_request(
    server: tuple[TwilioApi, ServerThread], api: TwilioApi
) -> None:
    settings = make_settings(server).replace(server={"public_url": ""})
    control = TwilioCallControl(settings)
    try:
        with pytest.raises(CallControlError, match="public URL is unknown"):
            await control.redirect_to_gather(CALL)
        with pytest.raises(CallControlError, match="public URL is unknown"):
            await control.transfer(CALL)
        assert api.requests == []

        bound = control.for_base_url("wss://gw.internal.example:8443/")
        await bound.redirect_to_gather(CALL)
        await bound.transfer(CALL)
    finally:
        await control.aclose()

    redirect, transfer = api.updates(CALL)
    assert redirect.url == "https://gw.internal.example:8443/webhook/twilio/speech?degraded=1"
    assert parse(transfer.twiml).find("Dial").attrib["action"] == (
        "https://gw.internal.example:8443/webhook/twilio/fallback?dialed=1")


async def test_a_configured_public_url_wins_over_the_observed_one(
    api: TwilioApi, control: TwilioCallControl
) -> None:
    await control.for_base_url("ws://10.0.0.7:5001").redirect_to_gather(CALL)

    assert api.updates(CALL)[0].url == f"{PUBLIC}/webhook/twilio/speech?degraded=1"


async def test_requests_authenticate_with_the_account_sid_and_auth_token(
    api: TwilioApi, control: TwilioCallControl
) -> None:
    await control.hang_up(CALL)

    [request] = api.requests
    assert request.account_sid == api.account_sid
    token = base64.b64decode(request.authorization.removeprefix("Basic ")).decode()
    assert token == f"{api.account_sid}:{api.auth_token}"


async def test_a_wrong_auth_token_is_a_call_control_error(
    server: tuple[TwilioApi, ServerThread], api: TwilioApi
) -> None:
    control = TwilioCallControl(make_settings(server, auth_token="not-the-token"))
    try:
        with pytest.raises(CallControlError, match=r"HTTP 401 \(error 20003\)"):
            await control.hang_up(CALL)
    finally:
        await control.aclose()
    assert [r.status_code for r in api.requests] == [401]


async def test_twilio_not_found_is_logged_counted_and_raised(
    api: TwilioApi, control: TwilioCallControl, caplog: pytest.LogCaptureFixture
) -> None:
    api.mode = "not_found"
    before = failures("transfer", "rest_error")

    with caplog.at_level(logging.WARNING, logger="app.twilio_rest"):
        with pytest.raises(CallControlError) as raised:
            await control.transfer(CALL)

    assert "HTTP 404 (error 20404)" in str(raised.value)
    assert f"/Calls/{CALL}.json was not found" in str(raised.value)
    assert failures("transfer", "rest_error") == before + 1
    [record] = [r for r in caplog.records if getattr(r, "event", None) == "call_control_failed"]
    assert record.call_sid == CALL and record.operation == "transfer"


async def test_twilio_server_error_is_a_call_control_error(
    api: TwilioApi, control: TwilioCallControl
) -> None:
    api.mode = "error"
    with pytest.raises(CallControlError, match="HTTP 500"):
        await control.redirect_to_gather(CALL)


async def test_a_slow_twilio_times_out(
    server: tuple[TwilioApi, ServerThread], api: TwilioApi
) -> None:
    api.mode = "slow"
    control = TwilioCallControl(make_settings(server, api_timeout_seconds=0.3))
    before = failures("hang_up", "timeout")
    try:
        with pytest.raises(CallControlError, match="did not answer within 0.3 s"):
            await control.hang_up(CALL)
        api.mode = "ok"
        await control.hang_up(CALL)  # the pool recovers from the abandoned request
    finally:
        await control.aclose()
    assert failures("hang_up", "timeout") == before + 1
    assert api.updates(CALL)[-1].status == "completed"


async def test_an_unreachable_api_is_a_call_control_error(
    server: tuple[TwilioApi, ServerThread],
) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    control = TwilioCallControl(make_settings(server, api_base_url=nobody))
    try:
        with pytest.raises(CallControlError, match="cannot reach Twilio"):
            await control.hang_up(CALL)
    finally:
        await control.aclose()


async def test_missing_credentials_fail_when_used_not_when_built(api: TwilioApi) -> None:
    control = TwilioCallControl(Settings().replace(server={"public_url": PUBLIC}))
    before = failures("hang_up", "not_configured")
    try:
        with pytest.raises(CallControlError, match="credentials are not configured"):
            await control.hang_up(CALL)
    finally:
        await control.aclose()
    assert failures("hang_up", "not_configured") == before + 1


async def test_a_call_sid_cannot_reach_another_resource(
    api: TwilioApi, control: TwilioCallControl
) -> None:
    for sid in ("../../Messages", CALL + "\n"):  # "$" alone would let a final newline through
        with pytest.raises(CallControlError, match="not a call SID"):
            await control.hang_up(sid)
    assert api.requests == []


async def test_closing_releases_the_session_and_a_later_use_opens_a_new_one(
    api: TwilioApi, control: TwilioCallControl
) -> None:
    await control.hang_up(CALL)
    await control.aclose()
    await control.aclose()
    await control.redirect_to_gather("CA" + "2e" * 16)

    assert len(api.updates()) == 2
