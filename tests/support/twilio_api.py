"""A local server speaking Twilio's Calls API (`POST .../Calls/{CallSid}.json`) for the tests.

Only the live-call update the gateway uses is served, the way api.twilio.com answers it: HTTP
Basic auth with the account SID and auth token, form parameters (`Twiml`, `Url`, `Method`,
`Status`), a Call resource as JSON, and Twilio's error JSON on failure. Every request is recorded
with a `time.monotonic()` timestamp so tests can order it against what they saw on the websocket.
A call updated with `Status=completed` is over: later updates get Twilio's 21220 error.

    api = TwilioApi()
    with running(api.app()) as server:
        settings = settings.replace(twilio={**api.credentials(), "api_base_url": server.url})
"""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

API_VERSION = "2010-04-01"
Mode = Literal["ok", "not_found", "error", "slow"]


@dataclass(frozen=True, slots=True)
class CallUpdate:
    """One recorded `POST .../Calls/{CallSid}.json`, authorized or not."""

    account_sid: str
    call_sid: str
    params: dict[str, str]
    authorization: str | None
    received_at: float  # time.monotonic() in this process
    status_code: int

    @property
    def twiml(self) -> str | None:
        return self.params.get("Twiml")

    @property
    def url(self) -> str | None:
        return self.params.get("Url")

    @property
    def method(self) -> str | None:
        return self.params.get("Method")

    @property
    def status(self) -> str | None:
        return self.params.get("Status")


@dataclass
class TwilioApi:
    """The fake account; `mode` makes every following request fail the chosen way."""

    account_sid: str = "AC" + "5ef8" * 8
    auth_token: str = "test-auth-token-0123456789abcdef"
    mode: Mode = "ok"
    # How long "slow" holds the answer; a request its client abandons changes nothing.
    delay_seconds: float = 5.0
    requests: list[CallUpdate] = field(default_factory=list)
    ended: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route(f"/{API_VERSION}/Accounts/{{account_sid}}/Calls/{{call_sid}}.json",
                  self._update_call, methods=["POST"]),
        ])

    def credentials(self) -> dict[str, str]:
        """The `twilio` settings section for a gateway that talks to this server."""
        return {"account_sid": self.account_sid, "auth_token": self.auth_token}

    def updates(self, call_sid: str | None = None) -> list[CallUpdate]:
        """Recorded requests that were answered 200, oldest first."""
        with self._lock:
            return [r for r in self.requests
                    if r.status_code == 200 and call_sid in (None, r.call_sid)]

    async def wait_for_updates(
        self, count: int = 1, call_sid: str | None = None, timeout: float = 10.0
    ) -> list[CallUpdate]:
        """Poll (without blocking the caller's event loop) until `count` updates arrived."""
        deadline = time.monotonic() + timeout
        while len(found := self.updates(call_sid)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"expected {count} call update(s) within {timeout} s, got {found!r}")
            await asyncio.sleep(0.01)
        return found

    async def _update_call(self, request: Request) -> Response:
        account_sid = request.path_params["account_sid"]
        call_sid = request.path_params["call_sid"]
        params = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
        authorization = request.headers.get("authorization")
        response = await self._answer(request, account_sid, call_sid, params, authorization)
        with self._lock:
            self.requests.append(CallUpdate(account_sid, call_sid, params, authorization,
                                            time.monotonic(), response.status_code))
        return response

    async def _answer(self, request: Request, account_sid: str, call_sid: str,
                      params: dict[str, str], authorization: str | None) -> Response:
        path = request.url.path
        if authorization != self._expected_authorization():
            return _error(401, 20003, "Authenticate")
        if account_sid != self.account_sid or self.mode == "not_found":
            return _error(404, 20404, f"The requested resource {path} was not found")
        if self.mode == "error":
            return _error(500, 20500, "An internal server error has occurred")
        if self.mode == "slow":
            deadline = time.monotonic() + self.delay_seconds
            while time.monotonic() < deadline:
                if await request.is_disconnected():  # abandoned: like Twilio, nothing applied
                    return _error(499, 20499, "Client closed the request")
                await asyncio.sleep(0.02)
        if call_sid in self.ended:
            return _error(400, 21220, "Call is not in-progress. Cannot redirect.")
        if params.get("Twiml") and params.get("Url"):
            return _error(400, 21205, "Twiml and Url parameters are mutually exclusive")
        if params.get("Status") == "completed":
            self.ended.add(call_sid)
        return JSONResponse(self._call_resource(call_sid, path))

    def _expected_authorization(self) -> str:
        raw = f"{self.account_sid}:{self.auth_token}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def _call_resource(self, call_sid: str, path: str) -> dict[str, Any]:
        now = formatdate(usegmt=True)
        completed = call_sid in self.ended
        return {
            "sid": call_sid,
            "account_sid": self.account_sid,
            "api_version": API_VERSION,
            "date_created": now,
            "date_updated": now,
            "start_time": now,
            "end_time": now if completed else None,
            "duration": "1" if completed else None,
            "status": "completed" if completed else "in-progress",
            "direction": "inbound",
            "from": "+34600000001",
            "from_formatted": "600 00 00 01",
            "to": "+34910000002",
            "to_formatted": "910 00 00 02",
            "parent_call_sid": None,
            "phone_number_sid": "PN" + "0" * 32,
            "answered_by": None,
            "caller_name": None,
            "forwarded_from": None,
            "group_sid": None,
            "trunk_sid": None,
            "queue_time": "0",
            "price": None,
            "price_unit": "USD",
            "uri": path,
            "subresource_uris": {
                "notifications": path.replace(".json", "/Notifications.json"),
                "recordings": path.replace(".json", "/Recordings.json"),
            },
        }


def _error(status: int, code: int, message: str) -> JSONResponse:
    return JSONResponse(
        {"code": code, "message": message,
         "more_info": f"https://www.twilio.com/docs/errors/{code}", "status": status},
        status_code=status,
    )
