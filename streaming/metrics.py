"""Prometheus metrics of the streamed-call pipeline (served by GET /metrics, see app/metrics.py).

Labelled metrics are bound to their children here, once: a `.labels()` lookup takes a lock and a
dict lookup, too much for a path that runs per frame or per chunk.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from streaming.protocol import REASONS

_PREFIX = "gateway_stream_"

# With several workers, the instance's figure is the sum over the workers still running.
ACTIVE_CALLS = Gauge(f"{_PREFIX}active_calls", "Calls with a live media stream on this instance.",
                     multiprocess_mode="livesum")
CALLS = Counter(f"{_PREFIX}calls", "Media streams that reached `start`.")
MEDIA_FRAMES = Counter(f"{_PREFIX}media_frames", "Inbound media frames handled (added per call).")
STT_FEED_ERRORS = Counter(
    f"{_PREFIX}stt_feed_errors",
    "Recognizer feeds that raised (the call degrades to the Gather path).",
)
TURNS = Counter(f"{_PREFIX}turns", "Caller turns (speech or DTMF) sent to the bot.")
BARGE_INS = Counter(f"{_PREFIX}barge_ins", "Replies interrupted by the caller (audio cleared).")
NO_INPUT = Counter(f"{_PREFIX}no_input", "Silences that led to a reprompt or a transfer.")
MEDIA_TIMEOUTS = Counter(
    f"{_PREFIX}media_timeouts",
    "Streams closed because Twilio's media frames stopped (a network cut the socket missed).",
)
MAX_DURATION = Counter(f"{_PREFIX}max_duration",
                       "Calls hung up because they reached call.max_duration_seconds.")
BOT_ERRORS = Counter(f"{_PREFIX}bot_errors", "Bot requests that failed (apology, then transfer).")
MARK_TIMEOUTS = Counter(f"{_PREFIX}mark_timeouts", "Playbacks whose last mark never came back.")
SESSIONS_REPLACED = Counter(
    f"{_PREFIX}sessions_replaced",
    "Live sessions closed because a new stream started for the same CallSid (one per call).",
)

_degradations = Counter(
    f"{_PREFIX}degradations", "Calls moved to the Gather path because an engine failed.", ["reason"]
)
DEGRADATIONS = {reason: _degradations.labels(reason) for reason in ("stt", "tts")}

_control_errors = Counter(
    f"{_PREFIX}call_control_errors", "Transfer / hang-up / redirect requests Twilio refused.",
    ["action"],
)
CALL_CONTROL_ERRORS = {a: _control_errors.labels(a)
                       for a in ("transfer", "hang_up", "redirect_to_gather")}

_frames_rejected = Counter(
    f"{_PREFIX}frames_rejected", "Inbound websocket messages rejected as invalid.", ["reason"]
)
FRAMES_REJECTED = {reason: _frames_rejected.labels(reason) for reason in REASONS}

_ended = Counter(f"{_PREFIX}calls_ended", "How streamed calls ended on the gateway's side.",
                 ["how"])
ENDED = {how: _ended.labels(how) for how in ("transfer", "hang_up", "redirect_to_gather")}

TURN_LATENCY = Histogram(
    f"{_PREFIX}turn_latency_seconds",
    "Final transcript to first reply audio sent: bot time plus synthesis plus the gateway's own.",
    # The millisecond buckets resolve the gateway's own share (bench/load.py: p99 <= 10 ms).
    buckets=(0.001, 0.002, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5,
             2.0, 3.0, 5.0, 10.0),
)
BOT_LATENCY = Histogram(
    f"{_PREFIX}bot_latency_seconds", "Time the bot took to answer a caller turn.",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 4.0,
             8.0),
)

_turn_stages = Histogram(
    "gateway_turn_stage_seconds",
    "Caller turns by stage (streaming/turns.py): endpointing (end of speech by the gateway's VAD, "
    "or last key, to the final input), bot (Rasa round trip), synthesis (reply text to its first "
    "audio), total (end of speech to the reply's first audio sent).",
    ["stage"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.25, 1.5,
             2.0, 2.5, 3.0, 4.0, 5.0, 8.0),
)
TURN_STAGES = {stage: _turn_stages.labels(stage)
               for stage in ("endpointing", "bot", "synthesis", "total")}
GREETING_LATENCY = Histogram(
    f"{_PREFIX}greeting_seconds",
    "The webhook's answer with the stream's TwiML (its issued parameter) to the greeting's first "
    "audio sent: the time to first greeting as the gateway sees it (from the stream's start event "
    "when that is unknown or the clocks disagree).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0),
)
