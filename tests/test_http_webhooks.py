"""The Twilio webhooks of the real app on loopback, signed like Twilio, with a real Rasa bot."""

from __future__ import annotations

import asyncio
import logging
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from app.prompts import greeting_text
from tests.support.http_gateway import AGENT, PUBLIC, SID, Running, gateway
from tests.support.rasa_bot import RasaBot
from tests.support.servers import ServerThread, free_port
from tests.support.twilio_sign import call_params, signed_post

SPEECH = f"{PUBLIC}/webhook/twilio/speech"
DIALED = f"{PUBLIC}/webhook/twilio/fallback?dialed=1"
SAY = {"language": "es-ES", "voice": "Polly.Lucia"}


@pytest.fixture(scope="module")
def gather_gw(bot_server: tuple[RasaBot, ServerThread]) -> Iterator[Running]:
    with gateway(bot_server[1].url, server={"mode": "gather"}) as running_gateway:
        yield running_gateway


@pytest.fixture(scope="module")
def stream_gw(bot_server: tuple[RasaBot, ServerThread]) -> Iterator[Running]:
    """Stream mode, no public URL: URLs come from the request."""
    with gateway(bot_server[1].url, public="") as running_gateway:
        yield running_gateway


@pytest.fixture(scope="module")
def lonely_gw() -> Iterator[Running]:
    """Rasa is down and no agent number is configured."""
    with gateway(
        f"http://127.0.0.1:{free_port()}", twilio={"fallback_phone_number": ""}
    ) as running_gateway:
        yield running_gateway


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def children(element: ET.Element) -> list[str]:
    return [child.tag for child in element]


def assert_gather(element: ET.Element, action: str, **extra: str) -> None:
    assert element.tag == "Gather"
    expected = {
        "input": "speech dtmf",
        "action": action,
        "method": "POST",
        "language": "es-ES",
        "speechModel": "phone_call",
        "enhanced": "true",
        "speechTimeout": "auto",
        "timeout": "6",
        **extra,
    }
    assert element.attrib == expected


def assert_says(elements: list[ET.Element], texts: list[str]) -> None:
    assert [e.tag for e in elements] == ["Say"] * len(texts)
    assert [e.text for e in elements] == texts
    assert all(e.attrib == SAY for e in elements)


def assert_dial(element: ET.Element, number: str = AGENT, dialed: str = DIALED) -> None:
    assert element.tag == "Dial"
    assert element.attrib == {"action": dialed, "method": "POST", "timeout": "30"}
    assert children(element) == ["Number"] and element[0].text == number


# --- voice -----------------------------------------------------------------------------------


def test_voice_stream_mode_connects_the_media_stream(
    stream_gw: Running, caplog: pytest.LogCaptureFixture
) -> None:
    before = int(time.time())
    with caplog.at_level(logging.INFO, logger="app.webhooks"):
        root = stream_gw.twiml("/webhook/twilio/voice")
    host = stream_gw.server.url.removeprefix("http://")
    assert children(root) == ["Connect", "Redirect"]
    (stream,) = root[0]
    assert stream.tag == "Stream"
    assert stream.attrib == {"url": f"ws://{host}/webhook/twilio/stream"}
    params = [(p.tag, p.attrib["name"], p.attrib["value"]) for p in stream]
    started, issued, token = (value for _, _, value in params[4:])
    assert before <= int(started) <= time.time()  # when the call was answered, Unix seconds
    assert before * 1000 <= int(issued) <= time.time() * 1000  # the same, Unix ms
    assert params == [
        ("Parameter", "callSid", SID),
        ("Parameter", "from", "+34600111222"),
        ("Parameter", "to", "+34910000000"),
        ("Parameter", "resumes", "0"),
        ("Parameter", "started", started),
        ("Parameter", "issued", issued),
        ("Parameter", "token", token),  # binds the stream to this call (tests/test_media_ws.py)
    ]
    assert len(token) == 64
    # The stream's end (when the gateway did not hand the call over) asks what next.
    assert root[1].text == f"http://{host}/webhook/twilio/resume?resumes=0&started={started}"
    assert root[1].attrib == {"method": "POST"}
    assert root.find(".//Say") is None  # the session speaks the greeting
    (record,) = [r for r in caplog.records if getattr(r, "event", None) == "incoming_call"]
    assert (record.call_sid, record.from_number, record.to_number) == (
        SID,
        "+34600111222",
        "+34910000000",
    )


def test_voice_behind_a_tls_proxy_uses_wss(stream_gw: Running) -> None:
    # uvicorn trusts X-Forwarded-Proto from loopback, so the request URL becomes https.
    host = stream_gw.server.url.removeprefix("http://")
    response = signed_post(
        stream_gw.client,
        f"{stream_gw.server.url}/webhook/twilio/voice",
        call_params(SID),
        signed_url=f"https://{host}/webhook/twilio/voice",
        headers={"X-Forwarded-Proto": "https"},
    )
    assert response.status_code == 200
    stream = ET.fromstring(response.text).find("./Connect/Stream")
    assert stream is not None and stream.get("url") == f"wss://{host}/webhook/twilio/stream"


def test_voice_gather_mode_greets_in_spanish(gather_gw: Running) -> None:
    before = greeting_text(gather_gw.settings)
    root = gather_gw.twiml("/webhook/twilio/voice")
    after = greeting_text(gather_gw.settings)
    assert children(root) == ["Gather", "Redirect"]
    assert_gather(root[0], f"{SPEECH}?noinput=0")
    (say,) = root[0]
    assert say.text in {before, after}
    assert say.text.startswith(("Buenos días", "Buenas tardes", "Buenas noches"))
    assert say.attrib == SAY
    assert root[1].text == f"{SPEECH}?noinput=0"


def test_draining_instance_sends_new_calls_to_gather(stream_gw: Running) -> None:
    stream_gw.gateway.draining = True
    try:
        root = stream_gw.twiml("/webhook/twilio/voice")
    finally:
        stream_gw.gateway.draining = False
    assert children(root) == ["Gather", "Redirect"]
    assert root[0].get("action") == f"{stream_gw.server.url}/webhook/twilio/speech?noinput=0"


# --- speech ----------------------------------------------------------------------------------


def test_speech_goes_to_rasa_and_the_reply_is_said(gather_gw: Running, bot: RasaBot) -> None:
    root = gather_gw.twiml(
        "/webhook/twilio/speech?noinput=1",
        SpeechResult="Quiero bloquear mi tarjeta",
        Confidence="0.91",
    )
    assert bot.requests == [
        {
            "sender": SID,
            "message": "Quiero bloquear mi tarjeta",
            "metadata": {
                "from": "+34600111222",
                "to": "+34910000000",
                "call_sid": SID,
                "channel": "twilio_voice_gather",
                "input": "speech",
            },
        }
    ]
    assert children(root) == ["Gather", "Redirect"]
    assert_gather(root[0], f"{SPEECH}?noinput=0")  # an answer resets the no-input count
    assert_says(list(root[0]), ["Ha dicho: Quiero bloquear mi tarjeta"])
    assert root[1].text == f"{SPEECH}?noinput=0"


def test_digits_go_to_rasa_as_dtmf(gather_gw: Running, bot: RasaBot) -> None:
    gather_gw.twiml("/webhook/twilio/speech", Digits="4111111111111111", SpeechResult="")
    assert bot.requests[0]["message"] == "4111111111111111"
    assert bot.requests[0]["metadata"]["input"] == "dtmf"


@pytest.mark.parametrize(
    ("payload", "number"),
    [
        ({"action": "transfer", "number": "+34699000111"}, "+34699000111"),
        ({"action": "transfer"}, AGENT),
    ],
)
def test_transfer_action_dials(
    gather_gw: Running, bot: RasaBot, payload: dict[str, str], number: str
) -> None:
    bot.reply = lambda text: [{"text": "Le paso con un ejecutivo."}, {"custom": payload}]
    root = gather_gw.twiml("/webhook/twilio/speech", SpeechResult="con una persona")
    assert children(root) == ["Say", "Dial"]
    assert_says([root[0]], ["Le paso con un ejecutivo."])
    assert_dial(root[1], number)


def test_hangup_action_hangs_up_after_the_says(gather_gw: Running, bot: RasaBot) -> None:
    bot.reply = lambda text: [
        {"custom": {"action": "hangup"}},
        {"text": "Tarjeta bloqueada."},
        {"text": "Adiós."},
    ]
    root = gather_gw.twiml("/webhook/twilio/speech", SpeechResult="sí")
    assert children(root) == ["Say", "Say", "Hangup"]
    assert_says(list(root)[:2], ["Tarjeta bloqueada.", "Adiós."])


def test_collect_dtmf_action_gathers_digits(gather_gw: Running, bot: RasaBot) -> None:
    bot.reply = lambda text: [
        {"text": "Marque el número de su tarjeta."},
        {
            "custom": {
                "action": "collect_dtmf",
                "max_digits": 16,
                "finish_on_key": "#",
                "timeout_seconds": 4.5,
            }
        },
    ]
    root = gather_gw.twiml("/webhook/twilio/speech", SpeechResult="quiero bloquearla")
    assert children(root) == ["Gather", "Redirect"]
    assert root[0].attrib == {
        "input": "dtmf",
        "action": f"{SPEECH}?noinput=0",
        "method": "POST",
        "numDigits": "16",
        "finishOnKey": "#",
        "timeout": "5",
    }
    assert_says(list(root[0]), ["Marque el número de su tarjeta."])


def test_silence_reprompts_then_transfers(gather_gw: Running, bot: RasaBot) -> None:
    before = sample("gateway_gather_no_input_total")
    first = gather_gw.twiml("/webhook/twilio/speech?noinput=0")
    assert children(first) == ["Gather", "Redirect"]
    assert_gather(first[0], f"{SPEECH}?noinput=1")
    assert_says(list(first[0]), [gather_gw.settings.prompts.reprompt])
    assert first[1].text == f"{SPEECH}?noinput=1"

    second = gather_gw.twiml("/webhook/twilio/speech?noinput=1", SpeechResult="  ")
    assert children(second) == ["Say", "Dial"]
    assert_says([second[0]], [gather_gw.settings.prompts.transfer])
    assert_dial(second[1])
    assert bot.requests == []
    assert sample("gateway_gather_no_input_total") == before + 2


@pytest.mark.parametrize(("carried", "next_tags"), [
    ("", ["Gather", "Redirect"]),       # missing: 0, then 1 after this silence
    ("abc", ["Gather", "Redirect"]),    # not a number: 0
    ("-5", ["Gather", "Redirect"]),     # clamped to 0
    ("99999", ["Say", "Dial"]),         # clamped to 100: past gather.no_input_limit
])
def test_a_bad_no_input_count_is_read_as_a_bound_one(gather_gw: Running, bot: RasaBot,
                                                     carried: str, next_tags: list[str]) -> None:
    root = gather_gw.twiml(f"/webhook/twilio/speech?noinput={carried}")
    assert children(root) == next_tags
    if next_tags[0] == "Gather":
        assert_gather(root[0], f"{SPEECH}?noinput=1")


def test_a_degraded_call_is_prompted_without_counting(gather_gw: Running, bot: RasaBot) -> None:
    root = gather_gw.twiml("/webhook/twilio/speech?degraded=1")
    assert children(root) == ["Gather", "Redirect"]
    assert_gather(root[0], f"{SPEECH}?noinput=0")
    assert_says(list(root[0]), [gather_gw.settings.prompts.degraded])
    assert bot.requests == []


@pytest.mark.parametrize(
    ("mode", "kind"),
    [
        ("error", "http_status"),
        ("garbage", "invalid_json"),
        ("not_a_list", "invalid_reply"),
        ("slow", "timeout"),
    ],
)
def test_rasa_failure_apologizes_and_transfers(
    gather_gw: Running, bot: RasaBot, mode: str, kind: str
) -> None:
    bot.mode, bot.delay_seconds = mode, (3.0 if mode == "slow" else 0.0)
    before = sample("gateway_rasa_errors_total", kind=kind)
    root = gather_gw.twiml("/webhook/twilio/speech", SpeechResult="hola")
    assert children(root) == ["Say", "Say", "Dial"]
    prompts = gather_gw.settings.prompts
    assert_says(list(root)[:2], [prompts.apology, prompts.transfer])
    assert_dial(root[2])
    assert sample("gateway_rasa_errors_total", kind=kind) == before + 1


def test_rasa_down_without_agent_apologizes_and_hangs_up(lonely_gw: Running) -> None:
    before = sample("gateway_rasa_errors_total", kind="connect")
    root = lonely_gw.twiml("/webhook/twilio/speech", SpeechResult="hola")
    assert children(root) == ["Say", "Say", "Hangup"]
    prompts = lonely_gw.settings.prompts
    assert_says(list(root)[:2], [prompts.apology, prompts.no_answer])
    assert sample("gateway_rasa_errors_total", kind="connect") == before + 1


# --- fallback --------------------------------------------------------------------------------


def test_fallback_dials_the_agent(gather_gw: Running) -> None:
    root = gather_gw.twiml("/webhook/twilio/fallback")
    assert children(root) == ["Say", "Dial"]
    assert_says([root[0]], [gather_gw.settings.prompts.transfer])
    assert_dial(root[1])


@pytest.mark.parametrize("status", ["no-answer", "busy", "failed", "canceled"])
def test_fallback_after_an_unanswered_dial_says_no_answer(gather_gw: Running, status: str) -> None:
    root = gather_gw.twiml("/webhook/twilio/fallback?dialed=1", DialCallStatus=status)
    assert children(root) == ["Say", "Hangup"]
    assert_says([root[0]], [gather_gw.settings.prompts.no_answer])


def test_fallback_after_a_completed_dial_hangs_up(gather_gw: Running) -> None:
    root = gather_gw.twiml("/webhook/twilio/fallback?dialed=1", DialCallStatus="completed")
    assert children(root) == ["Hangup"]


def test_fallback_without_agent_number(lonely_gw: Running) -> None:
    root = lonely_gw.twiml("/webhook/twilio/fallback")
    assert children(root) == ["Say", "Hangup"]  # no transfer is announced when nobody can take it
    assert_says([root[0]], [lonely_gw.settings.prompts.no_answer])


# --- status ----------------------------------------------------------------------------------


class FakeSession:
    def __init__(self) -> None:
        self.closed = 0

    async def aclose(self) -> None:
        await asyncio.sleep(0)
        self.closed += 1


@pytest.mark.parametrize("final", ["completed", "busy", "failed", "no-answer", "canceled"])
def test_final_status_closes_the_call_session(stream_gw: Running, final: str) -> None:
    session = FakeSession()
    stream_gw.gateway.calls[SID] = session  # type: ignore[assignment]
    try:
        before = sample("gateway_call_status_total", status=final)
        stream_gw.twiml("/webhook/twilio/status", CallStatus="in-progress")
        assert session.closed == 0
        root = stream_gw.twiml("/webhook/twilio/status", CallStatus=final, CallDuration="42")
        assert session.closed == 1
        assert list(root) == []
        assert sample("gateway_call_status_total", status=final) == before + 1
    finally:
        stream_gw.gateway.calls.pop(SID, None)


def test_status_for_an_unknown_call_is_fine(stream_gw: Running) -> None:
    before = sample("gateway_call_status_total", status="other")
    stream_gw.twiml("/webhook/twilio/status", CallStatus="something-new")
    stream_gw.twiml("/webhook/twilio/status", CallStatus="completed")
    assert sample("gateway_call_status_total", status="other") == before + 1


def test_a_failing_handler_never_answers_500(stream_gw: Running) -> None:
    class Broken:
        async def aclose(self) -> None:
            raise RuntimeError("session already gone")

    stream_gw.gateway.calls[SID] = Broken()  # type: ignore[assignment]
    before = sample("gateway_webhook_errors_total", route="status")
    try:
        root = stream_gw.twiml("/webhook/twilio/status", CallStatus="completed")
    finally:
        stream_gw.gateway.calls.pop(SID, None)
    assert list(root) == []
    assert sample("gateway_webhook_errors_total", route="status") == before + 1
