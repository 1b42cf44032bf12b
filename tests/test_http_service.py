"""GET /, /health, /ready and /metrics of the real app on loopback."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app import __version__
from tests.support.http_gateway import Running, gateway
from tests.support.rasa_bot import RasaBot
from tests.support.servers import free_port, running


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture(scope="module")
def up() -> Iterator[Running]:
    bot = RasaBot()
    with running(bot.app()) as rasa, gateway(rasa.url) as gw:
        yield gw


def test_index_describes_the_service(up: Running) -> None:
    body = up.client.get(f"{up.server.url}/").json()
    assert body == {
        "name": "voice-gateway",
        "version": __version__,
        "mode": "stream",
        "draining": False,
        "engines": {"stt": up.gateway.stt.name, "tts": up.gateway.tts.name},
        "active_calls": 0,
    }


def test_health_and_ready_when_rasa_is_up(up: Running) -> None:
    def reachable() -> bool:
        return up.client.get(f"{up.server.url}/health").json()["rasa_reachable"] is True

    assert eventually(reachable)
    health = up.client.get(f"{up.server.url}/health")
    assert health.status_code == 200
    assert health.json() == {
        "status": "ok",
        "ready": True,
        "draining": False,
        "at_capacity": False,
        "rasa_reachable": True,
        "active_calls": 0,
    }
    assert up.client.get(f"{up.server.url}/ready").status_code == 200


def test_draining_is_not_ready_but_alive(up: Running) -> None:
    up.gateway.draining = True
    try:
        ready = up.client.get(f"{up.server.url}/ready")
        health = up.client.get(f"{up.server.url}/health")
    finally:
        up.gateway.draining = False
    assert ready.status_code == 503 and ready.json()["draining"] is True
    assert health.status_code == 200 and health.json()["ready"] is False


def test_rasa_down_is_not_ready_but_alive() -> None:
    with gateway(f"http://127.0.0.1:{free_port()}") as gw:
        assert eventually(lambda: gw.client.get(f"{gw.server.url}/ready").status_code == 503)
        health = gw.client.get(f"{gw.server.url}/health")
        assert health.status_code == 200
        assert health.json()["rasa_reachable"] is False and health.json()["ready"] is False


def test_health_never_waits_for_a_silent_rasa() -> None:
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        rasa = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with gateway(rasa, rasa={"connect_timeout_seconds": 30, "timeout_seconds": 30}) as gw:
            health = gw.client.get(f"{gw.server.url}/health", timeout=5)
            ready = gw.client.get(f"{gw.server.url}/ready", timeout=5)
    # The check started at startup is still waiting: the probes answered from the cache.
    assert health.status_code == 200 and health.json()["rasa_reachable"] is None
    assert ready.status_code == 200


def test_metrics_exposition(up: Running) -> None:
    up.twiml("/webhook/twilio/voice")
    up.twiml("/webhook/twilio/speech", SpeechResult="hola")
    up.twiml("/webhook/twilio/speech")
    up.twiml("/webhook/twilio/status", CallStatus="completed")
    httpx.post(f"{up.server.url}/webhook/twilio/voice", data={"CallSid": "CA1"})  # unsigned
    response = up.client.get(f"{up.server.url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    for name in (
        "gateway_webhook_duration_seconds",
        "gateway_rasa_request_duration_seconds",
        "gateway_rasa_errors",
        "gateway_call_status",
        "gateway_incoming_calls",
        "gateway_signature_rejections",
        "gateway_gather_no_input",
        "gateway_fallback_transfers",
        "process_cpu_seconds",
        "process_resident_memory_bytes",
    ):
        assert name in families, name
    routes = {s.labels.get("route") for s in families["gateway_webhook_duration_seconds"].samples}
    assert {"voice", "speech", "status"} <= routes
    rejected = [
        s
        for s in families["gateway_signature_rejections"].samples
        if s.name.endswith("_total")
        and s.labels == {"route": "/webhook/twilio/voice", "reason": "missing"}
    ]
    assert rejected and rejected[0].value >= 1
    statuses = [
        s
        for s in families["gateway_call_status"].samples
        if s.name.endswith("_total") and s.labels == {"status": "completed"}
    ]
    assert statuses and statuses[0].value >= 1
