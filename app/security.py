"""Twilio request signatures (X-Twilio-Signature) for the webhooks and the media websocket, and
the stream token that binds a media stream to the call our TwiML started it for.

Twilio signs the URL it called plus the sorted POST parameters. Behind a TLS-terminating proxy the
URL this process sees differs from that one, so server.public_url, when set, replaces the scheme
and host: the URL checked is public_url + path + query (wss:// for the websocket).

The websocket upgrade is signed over its URL only, the same for every call: one captured upgrade
signature would open a stream that names any live CallSid in its `start`. So the `<Stream>` our
TwiML answers with carries, as `<Parameter>`s, the call's identity, what it carries from stream to
stream (app/resume.py), when it was issued, and an HMAC over all of them, sorted by name
(`stream_parameters`);
`check_stream` verifies them on `start`. Only this process's auth token can make one, and one is
good for STREAM_TOKEN_MAX_AGE_SECONDS (Twilio connects within seconds of the TwiML) and for one
stream: a captured start cannot be sent again (UsedStreamTokens, shared by the workers).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from starlette.requests import HTTPConnection
from twilio.request_validator import RequestValidator

from app import metrics
from app.config import Settings
from app.resume import integer
from app.worker_dirs import shared_directory

logger = logging.getLogger("app.security")

SIGNATURE_HEADER = "X-Twilio-Signature"
_REASONS = {
    "missing": "no X-Twilio-Signature header",
    "invalid": "X-Twilio-Signature does not match (wrong auth token or server.public_url?)",
    "no_auth_token": "twilio.auth_token is empty, so no signature can be checked",
    "stream_token_missing": "the stream's start has no token parameter (not our TwiML's stream)",
    "stream_token_invalid": "the stream's token does not match its CallSid and parameters",
    "stream_token_expired": "the stream's token is older than the freshness window (a replay?)",
    "stream_token_replayed": "the stream's token already opened a stream (a replayed start)",
}

ISSUED_PARAMETER = "issued"  # Unix ms when the TwiML was answered
TOKEN_PARAMETER = "token"
STREAM_TOKEN_MAX_AGE_SECONDS = 30.0  # Twilio opens the stream within seconds of our TwiML
_CLOCK_SKEW_MS = 5_000  # an issued time this far ahead is still accepted (several instances)
# A used token is kept this long after its use: by then it fails the freshness check anyway.
_KEEP_USED_SECONDS = STREAM_TOKEN_MAX_AGE_SECONDS + _CLOCK_SKEW_MS / 1000
# The directory the workers of one `serve` run share their used tokens in (shared_used_tokens).
USED_TOKENS_DIR = "VOICE_GATEWAY_USED_STREAM_TOKENS_DIR"
_KEY_LABEL = b"voice-gateway media stream token v2"
_TOKEN_SHAPE = re.compile(r"[0-9a-f]{64}")  # an HMAC-SHA256 hex digest
StreamRefusal = Literal["stream_token_missing", "stream_token_invalid", "stream_token_expired",
                        "stream_token_replayed"]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def stream_parameters(auth_token: str, identity: Mapping[str, str],
                      issued_ms: int | None = None) -> dict[str, str]:
    """The `<Parameter>`s of a `<Stream>`: `identity` (callSid, from, to, resumes, started), the
    issued time, and, when there is an auth token (twilio.auth_token), the token over them all."""
    params = {**identity, ISSUED_PARAMETER: str(now_ms() if issued_ms is None else issued_ms)}
    if auth_token:
        params[TOKEN_PARAMETER] = _stream_token(auth_token, params)
    return params


class UsedStreamTokens:
    """The stream tokens that opened a stream, kept while they could pass the freshness check: a
    token opens one stream. The workers of an instance share them in one directory (`serve`
    makes it per run, shared_used_tokens): a token is a file there, created with O_EXCL, which
    succeeds in one process only. Without one (a single worker, tests), a dict in memory."""

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self._dir = Path(directory) if directory else None
        self._used: dict[str, float] = {}  # token -> when it was used (Unix s)
        self._pruned: float | None = None

    @classmethod
    def for_instance(cls) -> UsedStreamTokens:
        """The instance's: the shared directory when `serve` runs several workers."""
        return cls(os.environ.get(USED_TOKENS_DIR))

    def first_use(self, token: str, at: float | None = None) -> bool:
        """Record `token` (64 hex characters) as used; False when it already was."""
        now = time.time() if at is None else at
        if self._pruned is None or now - self._pruned >= _KEEP_USED_SECONDS:
            self._prune(now)
        if self._dir is not None:
            path = self._dir / token
            try:
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
                os.utime(path, (now, now))  # when it was used, for the pruning
                return True
            except FileExistsError:
                return False
            except OSError as exc:  # the directory gone or full: this worker's memory from now
                self._dir = None
                logger.warning("used stream tokens no longer shared with the other workers: %s",
                               exc, extra={"event": "stream_tokens_unshared"})
        if token in self._used:
            return False
        self._used[token] = now
        return True

    def _prune(self, now: float) -> None:
        """Forget the tokens used more than the window ago: once per window, not per stream."""
        self._pruned = now
        oldest = now - _KEEP_USED_SECONDS
        self._used = {token: at for token, at in self._used.items() if at > oldest}
        if self._dir is None:
            return
        with contextlib.suppress(OSError):  # the directory gone: first_use says so
            for entry in os.scandir(self._dir):
                with contextlib.suppress(FileNotFoundError):  # another worker pruned it first
                    if entry.stat().st_mtime <= oldest:
                        os.unlink(entry.path)


def shared_used_tokens() -> contextlib.AbstractContextManager[str]:
    """A new, empty directory (under $TMPDIR) for the workers started inside to share their used
    stream tokens, removed afterwards; like the metrics' (app/metrics.py), beside it."""
    return shared_directory(USED_TOKENS_DIR, "voice-gateway-stream-tokens-")


def check_stream(settings: Settings, call_sid: str, params: Mapping[str, str],
                 used: UsedStreamTokens, at_ms: int | None = None) -> StreamRefusal | None:
    """Why a stream's `start` is refused, or None: its token was made by `stream_parameters` for
    this very CallSid within the freshness window, and opened no stream before (`used` records
    it). With twilio.validate_signatures off nothing is checked (development, like the
    signatures)."""
    if not settings.twilio.validate_signatures:
        return None
    token = params.get(TOKEN_PARAMETER, "")
    if not token or not settings.twilio.auth_token:
        return "stream_token_missing"
    if (not _TOKEN_SHAPE.fullmatch(token) or params.get("callSid") != call_sid
            or not hmac.compare_digest(token, _stream_token(settings.twilio.auth_token, params))):
        return "stream_token_invalid"
    age_ms = _age_ms(params, at_ms)
    if age_ms is None:  # pragma: no cover - only our own TwiML makes a matching token
        return "stream_token_invalid"
    if not -_CLOCK_SKEW_MS <= age_ms <= STREAM_TOKEN_MAX_AGE_SECONDS * 1000:
        return "stream_token_expired"
    if not used.first_use(token):
        return "stream_token_replayed"
    return None


def answered_seconds_ago(params: Mapping[str, str], at_ms: int | None = None) -> float:
    """How long ago the TwiML that started this stream was answered, by its issued parameter; 0
    (the stream's start, then) when it has none or the clocks disagree (negative, or older than
    a stream token may be)."""
    age_ms = _age_ms(params, at_ms)
    if age_ms is None:
        return 0.0
    age = age_ms / 1000
    return age if 0 <= age <= STREAM_TOKEN_MAX_AGE_SECONDS else 0.0


def _age_ms(params: Mapping[str, str], at_ms: int | None) -> int | None:
    """How long before `at_ms` (now) the stream's TwiML was issued; None without an issued time."""
    issued = integer(params.get(ISSUED_PARAMETER))
    return None if issued is None else (now_ms() if at_ms is None else at_ms) - issued


def refuse_stream(route: str, call_sid: str, reason: StreamRefusal) -> None:
    """Log and count a refused stream `start`, like a refused signature."""
    metrics.SIGNATURE_REJECTIONS.labels(route, reason).inc()
    logger.warning("stream refused: %s", _REASONS[reason], extra={
        "event": "signature_rejected", "call_sid": call_sid, "route": route, "reason": reason})


def _stream_token(auth_token: str, params: Mapping[str, str]) -> str:
    # A key of its own, derived from the auth token: the token itself signs Twilio's requests.
    key = hmac.new(auth_token.encode(), _KEY_LABEL, hashlib.sha256).digest()
    # Every parameter but the token, whatever it is named: one added later is signed too.
    signed = json.dumps(sorted([name, value] for name, value in params.items()
                               if name != TOKEN_PARAMETER), ensure_ascii=True)
    return hmac.new(key, signed.encode(), hashlib.sha256).hexdigest()


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
