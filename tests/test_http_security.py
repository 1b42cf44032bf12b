"""Twilio signatures: forged, missing, tampered and proxied requests; the websocket check."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client import REGISTRY
from starlette.requests import HTTPConnection

from app import security
from app.config import Settings
from tests.support.http_gateway import PUBLIC, SID, Running, gateway
from tests.support.rasa_bot import RasaBot
from tests.support.servers import running
from tests.support.twilio_sign import TOKEN, call_params, signed_headers, signed_post

VOICE = "/webhook/twilio/voice"


@pytest.fixture(scope="module")
def rasa_url() -> Iterator[str]:
    with running(RasaBot().app()) as rasa:
        yield rasa.url


@pytest.fixture(scope="module")
def gw(rasa_url: str) -> Iterator[Running]:
    with gateway(rasa_url) as running_gateway:
        yield running_gateway


def rejections(reason: str, route: str = VOICE) -> float:
    labels = {"route": route, "reason": reason}
    return REGISTRY.get_sample_value("gateway_signature_rejections_total", labels) or 0.0


def test_missing_signature_is_refused_logged_and_counted(
    gw: Running, caplog: pytest.LogCaptureFixture
) -> None:
    before = rejections("missing")
    with caplog.at_level(logging.WARNING, logger="app.security"):
        response = gw.client.post(f"{gw.server.url}{VOICE}", data=call_params(SID))
    assert response.status_code == 403
    assert rejections("missing") == before + 1
    (record,) = [r for r in caplog.records if getattr(r, "event", None) == "signature_rejected"]
    assert record.call_sid == SID and record.reason == "missing"
    assert record.url == f"{PUBLIC}{VOICE}"


@pytest.mark.parametrize(
    "forgery", ["wrong token", "tampered params", "loopback url", "tampered query"]
)
def test_forged_signatures_are_refused(gw: Running, forgery: str) -> None:
    params = call_params(SID, SpeechResult="hola")
    path, signed_path, token, signed_params = VOICE, VOICE, TOKEN, params
    url = f"{PUBLIC}{signed_path}"
    if forgery == "wrong token":
        token = "not-the-token"
    elif forgery == "tampered params":
        signed_params = {**params, "SpeechResult": "adiós"}
    elif forgery == "loopback url":  # what the server sees is not what Twilio signed
        url = f"{gw.server.url}{VOICE}"
    else:
        path = "/webhook/twilio/speech?noinput=5"
        url = f"{PUBLIC}/webhook/twilio/speech?noinput=0"
    route = path.split("?")[0]
    before = rejections("invalid", route)
    response = gw.client.post(
        f"{gw.server.url}{path}", data=params, headers=signed_headers(url, signed_params, token)
    )
    assert response.status_code == 403
    assert rejections("invalid", route) == before + 1


@pytest.mark.parametrize(
    "path",
    [
        "/webhook/twilio/voice",
        "/webhook/twilio/speech?noinput=1",
        "/webhook/twilio/fallback?dialed=1",
        "/webhook/twilio/status",
    ],
)
def test_every_webhook_checks_signatures(gw: Running, path: str) -> None:
    url = f"{gw.server.url}{path}"
    assert gw.client.post(url, data=call_params(SID)).status_code == 403
    response = signed_post(gw.client, url, call_params(SID), signed_url=f"{PUBLIC}{path}")
    assert response.status_code == 200


def test_checks_can_be_disabled_with_a_loud_warning(
    rasa_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.WARNING, logger="app.webhooks"),
        gateway(rasa_url, twilio={"validate_signatures": False}) as open_gw,
    ):
        response = open_gw.client.post(f"{open_gw.server.url}{VOICE}", data=call_params(SID))
    assert response.status_code == 200
    warnings = [
        r.getMessage() for r in caplog.records if getattr(r, "event", "") == "startup_warning"
    ]
    assert any("SECURITY" in w and "NOT checked" in w for w in warnings)


def test_without_auth_token_everything_is_refused(rasa_url: str) -> None:
    with gateway(rasa_url, twilio={"auth_token": ""}) as no_token:
        url = f"{no_token.server.url}{VOICE}"
        # Even a request "signed" with the empty token: that signature anyone can compute.
        response = signed_post(
            no_token.client, url, call_params(SID), token="", signed_url=f"{PUBLIC}{VOICE}"
        )
    assert response.status_code == 403


def websocket_conn(
    path: str, signature: str | None, host: str = "127.0.0.1:8000"
) -> HTTPConnection:
    headers = [(b"host", host.encode())]
    if signature is not None:
        headers.append((b"x-twilio-signature", signature.encode()))
    return HTTPConnection(
        {
            "type": "websocket",
            "scheme": "ws",
            "server": ("127.0.0.1", 8000),
            "path": path,
            "root_path": "",
            "query_string": b"",
            "headers": headers,
        }
    )


def test_websocket_upgrade_signature() -> None:
    path = "/webhook/twilio/stream"
    behind_proxy = Settings().replace(
        twilio={"auth_token": TOKEN}, server={"public_url": "https://voice.bank.example/"}
    )
    assert security.signed_url(websocket_conn(path, None), behind_proxy) == (
        "wss://voice.bank.example/webhook/twilio/stream"
    )
    good = signed_headers("wss://voice.bank.example/webhook/twilio/stream")["X-Twilio-Signature"]
    assert security.verify(websocket_conn(path, good), behind_proxy)
    assert not security.verify(websocket_conn(path, None), behind_proxy)
    http_signed = signed_headers("https://voice.bank.example/webhook/twilio/stream")
    assert not security.verify(
        websocket_conn(path, http_signed["X-Twilio-Signature"]), behind_proxy
    )

    direct = Settings().replace(twilio={"auth_token": TOKEN})
    seen = signed_headers("ws://127.0.0.1:8000/webhook/twilio/stream")["X-Twilio-Signature"]
    assert security.verify(websocket_conn(path, seen), direct)
    assert not security.verify(websocket_conn(path, good), direct)


def test_unreadable_body_is_a_client_error(gw: Running) -> None:
    too_many_fields = {f"f{i}": "x" for i in range(1001)}
    response = httpx.post(f"{gw.server.url}{VOICE}", data=too_many_fields)
    assert response.status_code == 400


# Made by hand (hmac/hashlib, not app code) from the parameters below: a change of the token's
# format breaks every call whose TwiML another instance answered during a rolling deploy.
VECTOR = {"callSid": "CA" + "ab" * 16, "from": "+34600111222", "to": "+34910000000",
          "resumes": "1", "started": "1764650000", "issued": "1764650000123"}
VECTOR_TOKEN = "5a1759e89b4bc80f179022866df40beeffaf9f26e8656417dc8439ffcf30e345"


def check(params: dict[str, str], used: security.UsedStreamTokens | None = None,
          at_ms: int | None = None) -> security.StreamRefusal | None:
    """check_stream for VECTOR's CallSid, with signature checks on."""
    return security.check_stream(Settings().replace(twilio={"auth_token": TOKEN}),
                                 VECTOR["callSid"], params, used or security.UsedStreamTokens(),
                                 at_ms)


def test_stream_token_test_vector() -> None:
    identity = {k: v for k, v in VECTOR.items() if k != "issued"}
    params = security.stream_parameters(TOKEN, identity, issued_ms=1764650000123)
    assert params == {**VECTOR, "token": VECTOR_TOKEN}


def test_every_carried_parameter_is_signed() -> None:
    """A parameter the TwiML carries is signed whatever its name: changed, the token fails."""
    params = security.stream_parameters(TOKEN, {"callSid": VECTOR["callSid"], "lang": "es"})
    assert check(params) is None
    tampered = {**params, "lang": "en"}
    assert check(tampered) == "stream_token_invalid"
    added = {**params, "extra": "1"}
    assert check(added) == "stream_token_invalid"


@pytest.mark.parametrize("token", ["ñ" * 64, "A" * 64, "ab", VECTOR_TOKEN + "0", "g" * 64])
def test_a_malformed_stream_token_is_refused(token: str) -> None:
    """Not 64 lowercase hex characters: refused as invalid (compare_digest would raise on
    non-ASCII text)."""
    params = {**VECTOR, "token": token}
    assert check(params) == "stream_token_invalid"


def test_a_stream_token_opens_one_stream() -> None:
    used = security.UsedStreamTokens()
    params = security.stream_parameters(TOKEN, {"callSid": VECTOR["callSid"]})
    assert check(params, used) is None
    assert check(params, used) == "stream_token_replayed"
    fresh = security.stream_parameters(TOKEN, {"callSid": VECTOR["callSid"], "resumes": "1"})
    assert check(fresh, used) is None  # a new TwiML


def test_workers_share_the_used_tokens(tmp_path) -> None:
    """Two workers of one instance (one directory, made per run by `serve`): the token is used
    once over both."""
    first, second = security.UsedStreamTokens(tmp_path), security.UsedStreamTokens(tmp_path)
    assert first.first_use(VECTOR_TOKEN) is True
    assert second.first_use(VECTOR_TOKEN) is False
    assert first.first_use(VECTOR_TOKEN) is False
    assert second.first_use("1" * 64) is True


@pytest.mark.parametrize("shared", [False, True])
def test_used_tokens_are_forgotten_once_expired(tmp_path, shared: bool) -> None:
    used = security.UsedStreamTokens(tmp_path if shared else None)
    assert used.first_use(VECTOR_TOKEN, at=1000.0) is True
    assert used.first_use(VECTOR_TOKEN, at=1034.0) is False  # 30 s window + 5 s clock skew
    assert used.first_use("1" * 64, at=1036.0) is True  # prunes what is older than 35 s
    assert used.first_use(VECTOR_TOKEN, at=1036.0) is True
    if shared:
        assert sorted(p.name for p in tmp_path.iterdir()) == ["1" * 64, VECTOR_TOKEN]


def test_serve_shares_a_used_tokens_directory() -> None:
    with security.shared_used_tokens() as path:
        assert os.environ[security.USED_TOKENS_DIR] == path and os.listdir(path) == []
        security.UsedStreamTokens.for_instance().first_use(VECTOR_TOKEN)
        assert os.listdir(path) == [VECTOR_TOKEN]
    assert security.USED_TOKENS_DIR not in os.environ and not os.path.exists(path)


def test_the_token_window_is_30_seconds() -> None:
    params = security.stream_parameters(TOKEN, {"callSid": VECTOR["callSid"]}, issued_ms=100_000)
    assert check(params, at_ms=130_000) is None
    assert check(params, at_ms=130_001) == "stream_token_expired"


def test_a_vanished_shared_directory_falls_back_to_memory(tmp_path, caplog) -> None:
    used = security.UsedStreamTokens(tmp_path / "gone")
    with caplog.at_level(logging.WARNING, logger="app.security"):
        assert used.first_use(VECTOR_TOKEN) is True
        assert used.first_use(VECTOR_TOKEN) is False
    assert [r.event for r in caplog.records] == ["stream_tokens_unshared"]
