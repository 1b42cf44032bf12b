"""Prometheus metrics of the HTTP surface (webhooks, Rasa client, signature checks), and the
exposition of every metric of the process.

One scrape answers for the whole instance. With one worker, that is prometheus_client's default
registry, with its process collector (CPU seconds, resident memory, open file descriptors).
With several, the supervisor runs the workers inside `shared_between_workers`: prometheus_client's
multiprocess mode, where each worker writes its values to memory-mapped files in one directory and
the worker that answers a scrape merges them all (counters and histograms summed, live calls
summed over the live workers, process CPU and memory per worker, labelled `pid`). Per-call
pipeline metrics live in streaming/metrics.py.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import os
import re
from collections.abc import Iterable

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from app.worker_dirs import shared_directory
from streaming.metrics import ACTIVE_CALLS

# prometheus_client chooses its value store from this variable when it is first imported: set,
# every metric is backed by a file in that directory (a spawned worker inherits it).
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
# The files of a worker's "live" gauges; mark_process_dead removes them when the worker is gone.
_LIVE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db")

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
CALLS_OVER_CAPACITY = Counter(
    "gateway_calls_over_capacity_total",
    "Calls answered with the Gather path because the instance had server.max_active_calls live.",
)
RESUMES = Counter(
    "gateway_resumes_total",
    "What the resume webhook answered a call whose stream ended without a hand-over, by outcome: "
    "stream (resumed), gather (the instance was draining or full), handover (carried out a "
    "hand-over Twilio had refused this process), expired (past call.max_duration_seconds: "
    "goodbye and hang-up), exhausted (call.max_resumes: the agent).",
    ["outcome"],
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
RASA_RETRIES = Counter(
    "gateway_rasa_retries_total",
    "Rasa requests sent a second time because the first could not connect (Rasa never saw it).",
)
RASA_ERRORS = Counter(
    "gateway_rasa_errors_total",
    "Rasa requests without a usable reply, by kind "
    "(connect, timeout, transport, http_status, invalid_json, invalid_reply).",
    ["kind"],
)
# Each worker checks Rasa on its own; the instance's answer is the latest check of any worker.
RASA_REACHABLE = Gauge("gateway_rasa_reachable", "1 when the last Rasa health check succeeded.",
                       multiprocess_mode="livemostrecent")
CALL_CONTROL_REQUESTS = Counter(
    "gateway_call_control_requests_total",
    "Live-call updates sent to Twilio's REST API (transfer, hang_up, redirect_to_gather), by "
    "outcome: ok, rest_error, timeout, unreachable, not_configured, invalid_call_sid.",
    ["operation", "outcome"],
)

# The label values the code above is counted with (app/webhooks.py, app/rasa.py,
# app/twilio_rest.py), created at zero once at startup (`create_known_series`): a series that
# does not exist yet reads "no data" on a dashboard or in an alert, not 0.
WEBHOOK_ROUTES = ("voice", "resume", "speech", "fallback", "status")
CALL_MODES = ("stream", "gather")
RESUME_OUTCOMES = ("stream", "gather", "handover", "expired", "exhausted")
FALLBACK_REASONS = ("no_input", "rasa_error", "redirect")
SIGNATURE_REASONS = ("no_auth_token", "missing", "invalid")
RASA_ERROR_KINDS = ("connect", "timeout", "transport", "http_status", "invalid_json",
                    "invalid_reply")
CALL_CONTROL_OPERATIONS = ("transfer", "hang_up", "redirect_to_gather")
CALL_CONTROL_OUTCOMES = ("ok", "rest_error", "timeout", "unreachable", "not_configured",
                         "invalid_call_sid")


def create_known_series(statuses: Iterable[str], signed_paths: Iterable[str],
                        stream_path: str, stream_refusals: Iterable[str]) -> None:
    """Every known label combination at zero: the call statuses counted, the paths whose
    signatures are checked, the media stream's path and why its start may be refused come from
    their owners (app/webhooks.py, app/twiml.py, app/security.py)."""
    children: list[tuple[Counter | Histogram, tuple[str, ...]]] = [
        *((WEBHOOK_SECONDS, (route,)) for route in WEBHOOK_ROUTES),
        *((WEBHOOK_ERRORS, (route,)) for route in WEBHOOK_ROUTES),
        *((INCOMING_CALLS, (mode,)) for mode in CALL_MODES),
        *((RESUMES, (outcome,)) for outcome in RESUME_OUTCOMES),
        *((CALL_STATUS, (status,)) for status in statuses),
        *((SIGNATURE_REJECTIONS, (path, reason)) for path in signed_paths
          for reason in SIGNATURE_REASONS),
        *((SIGNATURE_REJECTIONS, (stream_path, reason)) for reason in stream_refusals),
        *((FALLBACKS, (reason,)) for reason in FALLBACK_REASONS),
        *((RASA_ERRORS, (kind,)) for kind in RASA_ERROR_KINDS),
        *((CALL_CONTROL_REQUESTS, (operation, outcome)) for operation in CALL_CONTROL_OPERATIONS
          for outcome in CALL_CONTROL_OUTCOMES),
    ]
    for metric, values in children:
        metric.labels(*values)


def live_calls() -> int:
    """Streamed calls live on the instance, every worker's: the live-calls gauge, summed over the
    workers' files in multiprocess mode (admission control asks on each new call, ~0.2 ms)."""
    families = ACTIVE_CALLS.collect()  # this process's
    path = os.environ.get(MULTIPROCESS_DIR)
    if path:
        name = families[0].name
        files = glob.glob(os.path.join(path, "gauge_livesum_*.db"))
        families = [family for family in multiprocess.MultiProcessCollector.merge(files)
                    if family.name == name]
    return round(sum(sample.value for family in families for sample in family.samples))


def render() -> bytes:
    """The exposition text of every metric of the instance."""
    return generate_latest(_registry())


@functools.cache
def _registry() -> CollectorRegistry:
    path = os.environ.get(MULTIPROCESS_DIR)
    if not path:
        return REGISTRY  # ours, streaming's, the process collector
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path)
    _WorkerProcesses(registry, path)
    PlatformCollector(registry=registry)
    return registry


def shared_between_workers() -> contextlib.AbstractContextManager[str]:
    """Put the worker processes started inside in multiprocess mode, sharing one new directory
    (under $TMPDIR), removed afterwards: an instance never counts an earlier run's calls."""
    return shared_directory(MULTIPROCESS_DIR, "voice-gateway-metrics-")


def worker_exited(pid: int) -> None:
    """Drop a worker's live gauges (its live calls are gone); its counters keep counting."""
    multiprocess.mark_process_dead(pid, os.environ[MULTIPROCESS_DIR])


def _live_workers(path: str) -> set[int]:
    return {int(match[1]) for name in os.listdir(path) if (match := _LIVE_FILE.fullmatch(name))}


class _WorkerProcesses(Collector):
    """CPU, memory and file descriptors of every live worker, labelled `pid`: multiprocess mode
    has no process metrics, so prometheus_client's ProcessCollector reads each worker's /proc."""

    def __init__(self, registry: CollectorRegistry, path: str) -> None:
        self._path = path
        registry.register(self)

    def collect(self) -> Iterable[Metric]:
        families: dict[str, Metric] = {}
        for pid in sorted(_live_workers(self._path)):
            for family in ProcessCollector(pid=lambda pid=pid: pid, registry=None).collect():
                merged = families.setdefault(
                    family.name, Metric(family.name, family.documentation, family.type))
                for sample in family.samples:
                    merged.add_sample(sample.name, {**sample.labels, "pid": str(pid)},
                                      sample.value)
        return families.values()
