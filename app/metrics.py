"""Prometheus metrics of the HTTP surface (webhooks, Rasa client, signature checks).

Everything lives in prometheus_client's default registry, which also carries the default process
collector (CPU seconds, resident memory, open file descriptors). Per-call pipeline metrics live
in streaming/metrics.py. Each uvicorn worker exposes its own numbers.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, generate_latest

WEBHOOK_SECONDS = Histogram(
    "gateway_webhook_duration_seconds",
    "Time to answer a Twilio webhook, by route.",
    ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
WEBHOOK_ERRORS = Counter(
    "gateway_webhook_errors_total",
    "Webhooks that failed unexpectedly and were answered with the fallback.",
    ["route"],
)
INCOMING_CALLS = Counter(
    "gateway_incoming_calls_total", "Calls answered by the voice webhook, by path taken.", ["mode"]
)
CALL_STATUS = Counter(
    "gateway_call_status_total", "Call status callbacks received, by CallStatus.", ["status"]
)
SIGNATURE_REJECTIONS = Counter(
    "gateway_signature_rejections_total",
    "Requests refused because X-Twilio-Signature was missing or wrong.",
    ["route", "reason"],
)
GATHER_NO_INPUT = Counter(
    "gateway_gather_no_input_total", "Gather turns that ended without speech or digits."
)
FALLBACKS = Counter(
    "gateway_fallback_transfers_total",
    "Callers sent to the human fallback by the Gather path, by reason.",
    ["reason"],
)
RASA_SECONDS = Histogram(
    "gateway_rasa_request_duration_seconds",
    "Time for Rasa to answer one message, errors included.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16),
)
RASA_ERRORS = Counter(
    "gateway_rasa_errors_total",
    "Rasa requests without a usable reply, by kind "
    "(connect, timeout, transport, http_status, invalid_json, invalid_reply).",
    ["kind"],
)
RASA_REACHABLE = Gauge("gateway_rasa_reachable", "1 when the last Rasa health check succeeded.")
CALL_CONTROL_REQUESTS = Counter(
    "gateway_call_control_requests_total",
    "Live-call updates sent to Twilio's REST API (transfer, hang_up, redirect_to_gather), by "
    "outcome: ok, rest_error, timeout, unreachable, not_configured, invalid_call_sid.",
    ["operation", "outcome"],
)


def render() -> bytes:
    """The exposition text of the default registry (ours, streaming's, the process collector)."""
    return generate_latest()
