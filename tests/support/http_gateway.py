"""The real app on a loopback port, posted to as Twilio does (signed), for the HTTP tests."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.applications import Starlette

from app.config import Settings
from app.gateway import Gateway
from app.server import create_app
from tests.support.servers import ServerThread, running
from tests.support.twilio_sign import TOKEN, call_params, signed_post

PUBLIC = "https://voice.bank.example"
AGENT = "+34911234567"
SID = "CA0123456789abcdef0123456789abcdef"


@dataclass
class Running:
    server: ServerThread
    app: Starlette
    client: httpx.Client
    public: str

    @property
    def gateway(self) -> Gateway:
        return self.app.state.gateway

    @property
    def settings(self) -> Settings:
        return self.gateway.settings

    def post(self, path: str, **params: str) -> httpx.Response:
        """POST as Twilio does: to this server, signed over the public URL of `path`."""
        base = self.public or self.server.url
        response = signed_post(
            self.client,
            f"{self.server.url}{path}",
            call_params(SID, **params),
            signed_url=f"{base}{path}",
        )
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/xml")
        return response

    def twiml(self, path: str, **params: str) -> ET.Element:
        root = ET.fromstring(self.post(path, **params).text)
        assert root.tag == "Response"
        return root


@contextmanager
def gateway(rasa_url: str, public: str = PUBLIC, **changes: dict[str, Any]) -> Iterator[Running]:
    sections: dict[str, dict[str, Any]] = {
        "server": {"public_url": public},
        "twilio": {"auth_token": TOKEN, "fallback_phone_number": AGENT},
        "rasa": {"url": f"{rasa_url}/webhooks/rest/webhook", "timeout_seconds": 1.0},
        "stt": {"engine": "null"},
        "tts": {"engine": "null"},
    }
    for section, values in changes.items():
        sections[section] = {**sections.get(section, {}), **values}
    app = create_app(Settings().replace(**sections))
    with running(app) as server, httpx.Client(timeout=10) as client:
        yield Running(server, app, client, public)
