"""Sign requests the way Twilio does (X-Twilio-Signature), with twilio's own RequestValidator."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict, Unpack

import time

import httpx
from twilio.request_validator import RequestValidator

from app.security import stream_parameters
from streaming.twilio_side import TwilioSide

TOKEN = "test-auth-token-0123456789abcdef"
HEADER = "X-Twilio-Signature"


def signature(url: str, params: Mapping[str, str] | None = None, token: str = TOKEN) -> str:
    """The signature Twilio would send for `url` (full, with query) and the POST params."""
    return RequestValidator(token).compute_signature(url, dict(params or {}))


def signed_headers(
    url: str, params: Mapping[str, str] | None = None, token: str = TOKEN
) -> dict[str, str]:
    """Headers for a websocket upgrade or any request signed like Twilio's."""
    return {HEADER: signature(url, params, token)}


def answered(twilio: TwilioSide, token: str = TOKEN, resumes: int = 0,
             issued_ms: int | None = None) -> TwilioSide:
    """`twilio` with the `<Parameter>`s the voice webhook's TwiML would give its call (the
    stream token included), for tests that open the websocket without asking the webhook."""
    identity = {"callSid": twilio.call_sid, "from": twilio.from_number, "to": twilio.to_number,
                "resumes": str(resumes), "started": str(int(time.time()))}
    twilio.custom_parameters = stream_parameters(token, identity, issued_ms)
    return twilio


class SignOptions(TypedDict, total=False):
    token: str  # default: TOKEN
    signed_url: str | None  # the URL Twilio signed (the public one); default: the URL posted to
    headers: Mapping[str, str] | None  # more headers to send


def signed_form(
    url: str, params: Mapping[str, str], **options: Unpack[SignOptions]
) -> dict[str, Any]:
    """`client.post` keyword arguments for form `params`, signed like Twilio's."""
    signed = signed_headers(options.get("signed_url") or url, params, options.get("token", TOKEN))
    return {"data": dict(params), "headers": {**(options.get("headers") or {}), **signed}}


def signed_post(
    client: httpx.Client, url: str, params: Mapping[str, str], **options: Unpack[SignOptions]
) -> httpx.Response:
    """POST form `params` to `url`, signed over `signed_url` (the public URL; default: `url`)."""
    return client.post(url, **signed_form(url, params, **options))


async def asigned_post(
    client: httpx.AsyncClient, url: str, params: Mapping[str, str], **options: Unpack[SignOptions]
) -> httpx.Response:
    """The async twin of `signed_post`."""
    return await client.post(url, **signed_form(url, params, **options))


def call_params(
    call_sid: str = "CA0123456789abcdef0123456789abcdef", **extra: str
) -> dict[str, str]:
    """The form fields Twilio posts on every voice webhook, plus `extra`."""
    return {
        "CallSid": call_sid,
        "AccountSid": "AC0123456789abcdef0123456789abcdef",
        "From": "+34600111222",
        "To": "+34910000000",
        "Direction": "inbound",
        "ApiVersion": "2010-04-01",
        **extra,
    }
