"""Twilio request signatures (X-Twilio-Signature) for the webhooks and the media websocket.

Twilio signs the URL it called plus the sorted POST parameters. Behind a TLS-terminating proxy the
URL this process sees differs from that one, so server.public_url, when set, replaces the scheme
and host: the URL checked is public_url + path + query (wss:// for the websocket).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from starlette.requests import HTTPConnection
from twilio.request_validator import RequestValidator

from app import metrics
from app.config import Settings

logger = logging.getLogger("app.security")

SIGNATURE_HEADER = "X-Twilio-Signature"
_REASONS = {
    "missing": "no X-Twilio-Signature header",
    "invalid": "X-Twilio-Signature does not match (wrong auth token or server.public_url?)",
    "no_auth_token": "twilio.auth_token is empty, so no signature can be checked",
}


def signed_url(conn: HTTPConnection, settings: Settings) -> str:
    """The URL Twilio signed for this request or websocket upgrade."""
    public = settings.server.public_url.rstrip("/")
    if not public:
        return str(conn.url)
    if conn.scope["type"] == "websocket":
        public = "wss" + public[5:] if public.startswith("https") else "ws" + public[4:]
    query = conn.url.query
    return f"{public}{conn.url.path}" + (f"?{query}" if query else "")


def verify(
    conn: HTTPConnection,
    settings: Settings,
    params: Mapping[str, Any] | None = None,
    call_sid: str | None = None,
) -> bool:
    """True when the request is Twilio's (or checks are off); a refusal is logged and counted.

    `params` are the POST form fields; the websocket passes none.
    """
    if not settings.twilio.validate_signatures:
        return True
    url = signed_url(conn, settings)
    signature = conn.headers.get(SIGNATURE_HEADER, "")
    if not settings.twilio.auth_token:
        reason = "no_auth_token"
    elif not signature:
        reason = "missing"
    elif RequestValidator(settings.twilio.auth_token).validate(url, params or {}, signature):
        return True
    else:
        reason = "invalid"
    route = conn.url.path
    metrics.SIGNATURE_REJECTIONS.labels(route, reason).inc()
    logger.warning(
        "request refused: %s",
        _REASONS[reason],
        extra={
            "event": "signature_rejected",
            "call_sid": call_sid,
            "route": route,
            "reason": reason,
            "url": url,
        },
    )
    return False
