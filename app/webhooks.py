"""The HTTP routes: Twilio's voice/speech/resume/fallback/status webhooks, and service, health,
metrics.

Every Twilio webhook is signature-checked, timed per route, and never answers 500: an unexpected
failure is logged, counted and answered with the apology and the transfer to an agent.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from app import __version__, metrics, security, twiml
from app.config import startup_warnings
from app.gateway import Gateway
from app.logs import redact_digits
from app.prompts import greeting_text
from app.resume import Carried, count
from app.twiml import Urls
from streaming.actions import plan_turn, turn_metadata
from streaming.ports import BotError

logger = logging.getLogger("app.webhooks")

Form = dict[str, str]
Handler = Callable[[Request, Gateway, Form], Awaitable[str]]

FINAL_STATUSES = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})
KNOWN_STATUSES = FINAL_STATUSES | {"queued", "initiated", "ringing", "in-progress"}
XML = "application/xml"
MOST_NO_INPUT = 100  # what a carried no-input count is clamped to
CHANNEL = "twilio_voice_gather"  # the `channel` of this path's turns in Rasa's metadata


async def on_startup(gateway: Gateway) -> None:
    """Say what is dangerous about this configuration, and start learning whether Rasa is up."""
    for warning in startup_warnings(gateway.settings):
        logger.warning(warning, extra={"event": "startup_warning"})
    gateway.rasa.refresh_soon()


def twilio_webhook(route: str) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
    """Wrap a handler with the signature check, the latency histogram and the last-resort answer."""

    def decorate(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        @functools.wraps(handler)
        async def endpoint(request: Request) -> Response:
            started = time.perf_counter()
            try:
                return await _answer(route, handler, request)
            finally:
                metrics.WEBHOOK_SECONDS.labels(route).observe(time.perf_counter() - started)

        return endpoint

    return decorate


async def _answer(route: str, handler: Handler, request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    try:
        raw = await request.form()
    except Exception:
        logger.warning(
            "unreadable webhook body",
            exc_info=True,
            extra={"event": "webhook_bad_request", "route": route},
        )
        return PlainTextResponse("unreadable form body", status_code=400)
    form = {key: value for key, value in raw.items() if isinstance(value, str)}
    call_sid = form.get("CallSid")
    if not security.verify(request, gateway.settings, raw, call_sid):
        return PlainTextResponse("invalid Twilio signature", status_code=403)
    try:
        body = await handler(request, gateway, form)
    except Exception:
        metrics.WEBHOOK_ERRORS.labels(route).inc()
        logger.exception(
            "webhook failed; answering with the fallback",
            extra={"event": "webhook_error", "call_sid": call_sid, "route": route},
        )
        if route == "status":
            body = twiml.empty()
        else:
            apology = [gateway.settings.prompts.apology]
            body = twiml.transfer(gateway.settings, urls_for(request, gateway), apology)
    return Response(body, media_type=XML)


def urls_for(request: Request, gateway: Gateway) -> Urls:
    """Absolute URLs from server.public_url, or from the URL this request came in on."""
    base = gateway.settings.server.public_url or str(request.base_url)
    return Urls(base.rstrip("/"))


@twilio_webhook("voice")
async def voice(request: Request, gateway: Gateway, form: Form) -> str:
    settings = gateway.settings
    call_sid = form.get("CallSid", "")
    from_number, to_number = form.get("From", ""), form.get("To", "")
    # A draining or full instance keeps no new websocket: the stateless Gather path can finish
    # anywhere.
    reason = _why_gather(gateway)
    mode = "stream" if reason is None else "gather"
    metrics.INCOMING_CALLS.labels(mode).inc()
    if reason == "at_capacity":
        metrics.CALLS_OVER_CAPACITY.inc()
    logger.info(
        "incoming call",
        extra={
            "event": "incoming_call",
            "call_sid": call_sid,
            "from_number": from_number,
            "to_number": to_number,
            "mode": mode,
            "reason": reason,
        },
    )
    urls = urls_for(request, gateway)
    if mode == "stream":
        return _connect_stream(gateway, urls, call_sid, from_number, to_number, Carried())
    return twiml.gather(settings, urls, [greeting_text(settings)])


@twilio_webhook("resume")
async def resume(request: Request, gateway: Gateway, form: Form) -> str:
    """The stream ended and the call is still up: the gateway did not hand it over, or Twilio
    refused the hand-over it asked for (app/resume.py says what each instance can know)."""
    settings, urls = gateway.settings, urls_for(request, gateway)
    call_sid = form.get("CallSid", "")
    carried = Carried.read(request.query_params)
    handover = gateway.failed_handovers.take(call_sid)
    reason = _why_gather(gateway)
    if handover is not None:  # this process closed the stream after Twilio refused it
        outcome, body = "handover", twiml.hand_over(settings, urls, handover)
    elif carried.elapsed_seconds() >= settings.call.max_duration_seconds:
        outcome, body = "expired", twiml.goodbye(settings)  # as the session ends such a call
    elif carried.resumes >= settings.call.max_resumes:
        outcome, body = "exhausted", twiml.transfer(settings, urls)
    elif reason is not None:  # the Gather path needs no instance of its own
        outcome, body = "gather", twiml.gather(settings, urls, [settings.prompts.resume])
    else:
        outcome = "stream"
        body = _connect_stream(gateway, urls, call_sid, form.get("From", ""), form.get("To", ""),
                               carried.resumed())
    metrics.RESUMES.labels(outcome).inc()
    logger.info("stream ended without a hand-over: %s", outcome, extra={
        "event": "resume", **_who(form), "outcome": outcome, "resumes": carried.resumes,
        "handover": handover.action if handover else None, "reason": reason})
    return body


@twilio_webhook("speech")
async def speech(request: Request, gateway: Gateway, form: Form) -> str:
    settings, urls = gateway.settings, urls_for(request, gateway)
    call_sid = form.get("CallSid", "")
    no_input = count(request.query_params.get("noinput"), MOST_NO_INPUT)
    digits, spoken = form.get("Digits", "").strip(), form.get("SpeechResult", "").strip()
    text, kind = (digits, "dtmf") if digits else (spoken, "speech")
    log = _who(form)

    if not text:
        if request.query_params.get("degraded") == "1":
            logger.info("degraded call continues on the Gather path",
                        extra={"event": "gather_degraded", **log})
            return twiml.gather(settings, urls, [settings.prompts.degraded], no_input)
        no_input += 1
        metrics.GATHER_NO_INPUT.inc()
        logger.info(
            "no input from the caller", extra={"event": "gather_no_input", "count": no_input, **log}
        )
        if no_input >= settings.gather.no_input_limit:
            metrics.FALLBACKS.labels("no_input").inc()
            return twiml.transfer(settings, urls)
        return twiml.gather(settings, urls, [settings.prompts.reprompt], no_input)

    logger.info(
        "caller said: %s",
        redact_digits(text) if kind == "speech" else f"{len(text)} digits",
        extra={"event": "gather_input", "input": kind, "confidence": form.get("Confidence"), **log},
    )
    metadata = turn_metadata(call_sid, form.get("From", ""), form.get("To", ""), CHANNEL, kind)
    try:
        messages = await gateway.rasa.send(call_sid, text, metadata)
    except BotError:
        metrics.FALLBACKS.labels("rasa_error").inc()
        logger.warning(
            "Rasa failed; apologizing and transferring",
            extra={"event": "gather_fallback", "reason": "rasa_error", **log},
        )
        return twiml.transfer(settings, urls, [settings.prompts.apology])
    return twiml.reply(settings, urls, plan_turn(messages, settings.prompts.goodbye))


@twilio_webhook("fallback")
async def fallback(request: Request, gateway: Gateway, form: Form) -> str:
    settings = gateway.settings
    log = _who(form)
    if request.query_params.get("dialed"):
        status = form.get("DialCallStatus", "")
        logger.info(
            "agent dial ended: %s",
            status,
            extra={"event": "fallback_dial_result", "dial_status": status, **log},
        )
        return twiml.after_dial(settings, status)
    metrics.FALLBACKS.labels("redirect").inc()
    logger.info("transferring to an agent", extra={"event": "fallback_transfer", **log})
    return twiml.transfer(settings, urls_for(request, gateway))


@twilio_webhook("status")
async def status(request: Request, gateway: Gateway, form: Form) -> str:
    call_sid, call_status = form.get("CallSid", ""), form.get("CallStatus", "")
    metrics.CALL_STATUS.labels(call_status if call_status in KNOWN_STATUSES else "other").inc()
    logger.info(
        "call status: %s",
        call_status,
        extra={
            "event": "call_status",
            "call_sid": call_sid,
            "status": call_status,
            "duration_seconds": form.get("CallDuration"),
        },
    )
    if call_status in FINAL_STATUSES:
        session = gateway.calls.get(call_sid)
        if session is not None:
            await session.aclose()
    return twiml.empty()


async def index(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    return JSONResponse(
        {
            "name": "voice-gateway",
            "version": __version__,
            "mode": gateway.settings.server.mode,
            "draining": gateway.draining,
            "engines": {"stt": _name(gateway.stt), "tts": _name(gateway.tts)},
            "active_calls": len(gateway.calls),
        }
    )


async def health(request: Request) -> Response:
    """Liveness: 200 while the process answers; readiness detail from cached checks only."""
    gateway: Gateway = request.app.state.gateway
    gateway.rasa.refresh_soon()
    return JSONResponse(
        {"status": "ok", **_readiness(gateway), "active_calls": len(gateway.calls)}
    )


async def ready(request: Request) -> Response:
    """Readiness: 503 while draining, at server.max_active_calls, or while Rasa is known to be
    unreachable."""
    gateway: Gateway = request.app.state.gateway
    gateway.rasa.refresh_soon()
    readiness = _readiness(gateway)
    return JSONResponse(readiness, status_code=200 if readiness["ready"] else 503)


async def metrics_endpoint(request: Request) -> Response:
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)


def _connect_stream(gateway: Gateway, urls: Urls, call_sid: str, from_number: str,
                    to_number: str, carried: Carried) -> str:
    """The `<Connect><Stream>` whose token binds the stream to this call (app/security.py)."""
    identity = {"callSid": call_sid, "from": from_number, "to": to_number, **carried.params()}
    parameters = security.stream_parameters(gateway.settings.twilio.auth_token, identity)
    return twiml.connect_stream(urls, parameters, carried)


def _who(form: Form) -> dict[str, str | None]:
    """The call's identity for log records."""
    return {
        "call_sid": form.get("CallSid"),
        "from_number": form.get("From"),
        "to_number": form.get("To"),
    }


def _why_gather(gateway: Gateway) -> str | None:
    """Why a new call takes the Gather path (configured, draining, at_capacity), or None."""
    if gateway.settings.server.mode == "gather":
        return "configured"
    if gateway.draining:
        return "draining"
    if gateway.at_capacity():
        return "at_capacity"
    return None


def _readiness(gateway: Gateway) -> dict[str, bool | None]:
    """Whether load balancers should send new calls here, and what says no."""
    draining, at_capacity = gateway.draining, gateway.at_capacity()
    reachable = gateway.rasa.last_known_reachable
    return {"ready": not draining and not at_capacity and reachable is not False,
            "draining": draining, "at_capacity": at_capacity, "rasa_reachable": reachable}


def _name(engine: object) -> str:
    return str(getattr(engine, "name", type(engine).__name__))


routes: list[BaseRoute] = [
    Route("/", index, methods=["GET"]),
    Route("/health", health, methods=["GET"]),
    Route("/ready", ready, methods=["GET"]),
    Route("/metrics", metrics_endpoint, methods=["GET"]),
    Route(twiml.VOICE_PATH, voice, methods=["POST"]),
    Route(twiml.SPEECH_PATH, speech, methods=["POST"]),
    Route(twiml.RESUME_PATH, resume, methods=["POST"]),
    Route(twiml.FALLBACK_PATH, fallback, methods=["POST"]),
    Route(twiml.STATUS_PATH, status, methods=["POST"]),
]
