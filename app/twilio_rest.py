"""Live-call control over Twilio's REST API: transfer to an agent, hang up, move to the Gather path.

Each operation is one update of the live call (Twilio's "modify a call in progress",
`POST /2010-04-01/Accounts/{Sid}/Calls/{CallSid}.json`), which replaces the running
<Connect><Stream> with new TwiML (`Twiml=`), a TwiML URL (`Url=`), or ends the call
(`Status=completed`). It goes through the official `twilio` client with its aiohttp-based
`AsyncTwilioHttpClient`: one client and one connection pool per process, shared by every call.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import re
from urllib.parse import urlsplit

import aiohttp
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from app.config import Settings, TwilioSettings
from app.metrics import CALL_CONTROL_REQUESTS
from app.twiml import Urls
from app.twiml import transfer as transfer_twiml
from streaming.ports import CallControlError

logger = logging.getLogger("app.twilio_rest")
# twilio's HTTP client logs every request's URL and headers at INFO; we log one line per update.
_http_logger = logging.getLogger("app.twilio_rest.http")
_http_logger.setLevel(logging.WARNING)

DEFAULT_API_BASE_URL = "https://api.twilio.com"
_NO_BASE_URL = ("the gateway's public URL is unknown: set server.public_url "
                "(or bind the request's base URL with for_base_url)")
# A SID goes into the request path: letters and digits only, so it cannot reach another resource.
_SID = re.compile(r"[A-Za-z0-9]{2,64}")
_HTTP_SCHEMES = {"ws": "http", "wss": "https", "http": "http", "https": "https"}


class TwilioCallControl:
    """streaming.ports.CallControl over Twilio's REST API, plus `for_base_url` and `aclose`.

    Credentials are checked when an operation runs, not here, so the gateway starts (and serves
    the Gather path) without them; each operation then raises a clear CallControlError.

    URLs handed to Twilio (the <Dial action> fallback, the Gather redirect) need the gateway's
    public base URL. It is `server.public_url`; when that is empty the base is only known from a
    request, so app/media.py calls `control.for_base_url(base)` with the base URL its websocket
    request was made to and gives the result to the CallSession.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._api = _TwilioApi(settings.twilio)
        self.base_url = _http_base(settings.server.public_url)

    def for_base_url(self, base_url: str) -> TwilioCallControl:
        """A control building its URLs on `base_url` (ws/wss are read as http/https).

        Cheap: it shares this object's client and connection pool. A configured
        `server.public_url` wins over what a request observed (proxies rewrite hosts), so then
        this returns `self`.
        """
        if self._settings.server.public_url:
            return self
        bound = copy.copy(self)
        bound.base_url = _http_base(base_url)
        return bound

    async def transfer(self, call_sid: str, number: str | None = None) -> None:
        """Say the transfer prompt and <Dial> the agent; `number` defaults to the fallback number.

        With no number at all the caller hears `prompts.no_answer` and the call ends.
        """
        settings = self._settings
        target = number or settings.twilio.fallback_phone_number
        if target and not self.base_url:
            raise self._failed("transfer", call_sid, "not_configured", _NO_BASE_URL)
        twiml = transfer_twiml(settings, Urls(self.base_url), number=target)
        await self._update("transfer", call_sid, twiml=twiml)

    async def hang_up(self, call_sid: str) -> None:
        await self._update("hang_up", call_sid, status="completed")

    async def redirect_to_gather(self, call_sid: str) -> None:
        """Send the call to the Gather webhook, which asks again with `prompts.degraded`."""
        if not self.base_url:
            raise self._failed("redirect_to_gather", call_sid, "not_configured", _NO_BASE_URL)
        await self._update("redirect_to_gather", call_sid, url=Urls(self.base_url).degraded,
                           method="POST")

    async def aclose(self) -> None:
        """Close the shared HTTP session (a later operation would open a new one)."""
        await self._api.aclose()

    async def _update(self, operation: str, call_sid: str, **params: str) -> None:
        twilio = self._settings.twilio
        if not (twilio.account_sid and twilio.auth_token):
            raise self._failed(operation, call_sid, "not_configured",
                               "Twilio credentials are not configured "
                               "(twilio.account_sid and twilio.auth_token)")
        if not _SID.fullmatch(call_sid):
            raise self._failed(operation, call_sid, "invalid_call_sid",
                               f"not a call SID: {call_sid[:70]!r}")
        try:
            async with asyncio.timeout(twilio.api_timeout_seconds):
                await self._api.client().calls(call_sid).update_async(**params)
        except TwilioRestException as exc:
            raise self._failed(operation, call_sid, "rest_error",
                               f"Twilio answered HTTP {exc.status} (error {exc.code}): {exc.msg}"
                               ) from exc
        except TimeoutError as exc:
            raise self._failed(operation, call_sid, "timeout",
                               f"Twilio did not answer within {twilio.api_timeout_seconds:g} s"
                               ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise self._failed(operation, call_sid, "unreachable",
                               f"cannot reach Twilio at {twilio.api_base_url}: {exc}") from exc
        CALL_CONTROL_REQUESTS.labels(operation, "ok").inc()
        logger.info("call %s: %s", operation, call_sid,
                    extra={"event": "call_control", "call_sid": call_sid, "operation": operation})

    @staticmethod
    def _failed(operation: str, call_sid: str, outcome: str, reason: str) -> CallControlError:
        CALL_CONTROL_REQUESTS.labels(operation, outcome).inc()
        message = f"{operation} of call {call_sid} failed: {reason}"
        logger.warning(message, extra={"event": "call_control_failed", "call_sid": call_sid,
                                       "operation": operation, "outcome": outcome})
        return CallControlError(message)


class _TwilioApi:
    """The process's one twilio `Client`, created on first use.

    Lazily, so that its aiohttp session is born inside the running event loop and a gateway
    without credentials never builds one.

    Pointing it at another server (`twilio.api_base_url`, the tests' local Calls API): the Calls
    resource lives in the client's `api` domain, and `Domain.base_url` is the one value the
    library joins every one of that domain's request URLs from, so setting `client.api.base_url`
    redirects exactly the requests we make, with auth, form encoding and error parsing untouched.
    Twilio's `edge`/`region` options cannot do it (they only rewrite `*.twilio.com` host names),
    and a custom HttpClient rewriting each URL would re-parse every request for the same effect.
    Edge and region (also read from TWILIO_EDGE/TWILIO_REGION) are cleared for another base URL,
    since they would rewrite its host name.
    """

    def __init__(self, settings: TwilioSettings) -> None:
        self._settings = settings
        self._client: Client | None = None
        self._http: AsyncTwilioHttpClient | None = None

    def client(self) -> Client:
        if self._client is None:
            settings = self._settings
            self._http = AsyncTwilioHttpClient(logger=_http_logger)
            client = Client(settings.account_sid, settings.auth_token, http_client=self._http)
            base_url = settings.api_base_url.rstrip("/")
            if base_url != DEFAULT_API_BASE_URL:
                client.api.base_url = base_url
                client.edge = client.region = None
            self._client = client
        return self._client

    async def aclose(self) -> None:
        http, self._http, self._client = self._http, None, None
        if http is not None:
            await http.close()


def _http_base(url: str) -> str:
    """`wss://host/prefix/` -> `https://host/prefix`; '' stays ''."""
    if not url:
        return ""
    parts = urlsplit(url)
    scheme = _HTTP_SCHEMES.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ValueError(f"not an absolute http(s) or ws(s) URL: {url!r}")
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}"
