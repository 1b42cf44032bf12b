"""The Grafana dashboard and the Prometheus alert rules in deploy/monitoring/ name only metrics a
real gateway exposes: scraped after a call, every metric in every expression is there. Where
promtool is installed (Debian's `prometheus` package), the expressions also parse, and the alert
rules fire on the series they are meant for and stay quiet otherwise (`promtool test rules`)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from app.simulate import Turn, simulate_call
from streaming.stt.null import MARKER
from tests.support.caller_audio import FRAME_BYTES, tone
from tests.support.gateway import AUTH_TOKEN, null_gateway
from tests.support.gateway_process import gateway_process

MONITORING = Path(__file__).resolve().parent.parent / "deploy" / "monitoring"
DASHBOARD = MONITORING / "grafana-dashboard.json"
ALERTS = MONITORING / "prometheus-alerts.yaml"
NULL_FINAL = MARKER.ljust(FRAME_BYTES, MARKER[:1])  # the null recognizer's end of a sentence
# PromQL words that are not metric names (functions and aggregations are followed by "(").
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
            "unless", "bool", "offset"}
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum",
                                                              "_created"), "gauge": ("",)}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def dashboard_expressions() -> list[str]:
    return [target["expr"] for panel in dashboard()["panels"] for target in panel["targets"]]


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"]]


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects."""
    expr = re.sub(r'"[^"]*"|\{[^}]*\}|\[[^\]]*\]', "", expr)  # strings, matchers, ranges
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    return {m[0] for m in re.finditer(r"(?<![\w.])[a-zA-Z_:][\w:]*", expr)
            if m[0] not in KEYWORDS and not expr[m.end():].lstrip().startswith("(")}


def test_the_name_reader_finds_metrics_and_nothing_else() -> None:
    expr = ('histogram_quantile(0.95, sum by (job, le) (rate(a_seconds_bucket{stage="total", '
            'job=~"$job"}[10m]))) > 2.5 and sum without (pid) (b_total offset 5m) / 2^30')
    assert metric_names(expr) == {"a_seconds_bucket", "b_total"}


def test_the_dashboard_shows_what_the_issue_asks_for() -> None:
    board = dashboard()
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    assert all(target["refId"] and target["expr"] for panel in board["panels"]
               for target in panel["targets"])
    named = set().union(*map(metric_names, dashboard_expressions()))
    assert {"gateway_stream_active_calls", "gateway_turn_stage_seconds_bucket",
            "gateway_rasa_errors_total", "gateway_stream_degradations_total",
            "gateway_stream_barge_ins_total", "gateway_signature_rejections_total",
            "gateway_calls_over_capacity_total", "gateway_stream_sessions_replaced_total",
            "gateway_rasa_retries_total"} <= named
    quantiles = " ".join(e for e in dashboard_expressions() if "gateway_turn_stage" in e)
    assert "histogram_quantile(0.5," in quantiles and "histogram_quantile(0.95," in quantiles
    assert {rule["alert"] for rule in alert_rules()} == {
        "VoiceGatewayRasaDown", "VoiceGatewayDegradationsRising", "VoiceGatewayTurnLatencyHigh"}


async def test_every_metric_they_name_is_exposed_by_a_gateway_after_a_call() -> None:
    with null_gateway() as gw:
        result = await simulate_call(gw.url, [Turn(audio=tone(400) + NULL_FINAL)],
                                     auth_token=AUTH_TOKEN, realtime=False, tail=5)
        text = httpx.get(gw.url + "/metrics", trust_env=False, timeout=10).text
    assert result.latencies[0] is not None, result.timeline()
    exposed: set[str] = set()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        exposed |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
        for sample in family.samples:
            exposed.add(sample.name)
            samples[sample.name + str(sorted(sample.labels.items()))] = sample.value
    named = set().union(*map(metric_names, dashboard_expressions()),
                        *(metric_names(rule["expr"]) for rule in alert_rules()))
    assert named - exposed == set()
    # The call itself shows up in the turn-latency panels and the latency alert's series.
    assert samples["gateway_turn_stage_seconds_count[('stage', 'total')]"] >= 1


promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                              reason="promtool not installed (Debian's prometheus package)")


@promtool
def test_promtool_accepts_the_rules_and_the_dashboards_queries(tmp_path: Path) -> None:
    queries = tmp_path / "dashboard-rules.yaml"
    recorded = [{"record": f"dashboard:query:{n}", "expr": expr.replace("$job", ".*")}
                for n, expr in enumerate(dashboard_expressions())]
    queries.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recorded}]}))
    for path in (ALERTS, queries):
        done = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    shown = ",".join(f'{key}="{value}"' for key, value in {"job": "gateway", **labels}.items())
    return {"series": f"{name}{{{shown}}}", "values": values}


def turn_buckets(seconds: float) -> list[dict[str, str]]:
    """Histogram series of 30 turns a minute, all taking `seconds`."""
    edges = ["0.5", "1.0", "2.5", "5.0", "+Inf"]
    return [series("gateway_turn_stage_seconds_bucket",
                   "0+30x40" if edge == "+Inf" or float(edge) >= seconds else "0+0x40",
                   stage="total", le=edge) for edge in edges] + [
        series("gateway_turn_stage_seconds_count", "0+30x40", stage="total")]


@promtool
def test_the_alerts_fire_when_they_should_and_only_then(tmp_path: Path) -> None:
    alerts = tmp_path / "prometheus-alerts.yaml"  # firing is tested here, not the texts
    groups = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    for rule in (rule for group in groups["groups"] for rule in group["rules"]):
        rule.pop("annotations")
    alerts.write_text(yaml.safe_dump(groups))

    def case(input_series: list[dict[str, str]], fired: dict[str, bool],
             at: str = "25m") -> dict[str, Any]:
        return {"interval": "1m", "input_series": input_series, "alert_rule_test": [
            {"eval_time": at, "alertname": name,
             "exp_alerts": [{"exp_labels": {"severity": "page", "job": "gateway"}}] if fires
             else []} for name, fires in fired.items()]}

    calls = series("gateway_stream_calls_total", "0+10x40")
    tests = [
        case([series("gateway_rasa_reachable", "1x10 0x30", instance="a"),
              series("gateway_rasa_reachable", "1x10 0x30", instance="b")],
             {"VoiceGatewayRasaDown": True}),
        case([series("gateway_rasa_reachable", "1x10 0x30", instance="a"),
              series("gateway_rasa_reachable", "1x40", instance="b")],
             {"VoiceGatewayRasaDown": False}),  # one instance still reaches Rasa
        case([calls, series("gateway_stream_degradations_total", "0+2x40", reason="stt")],
             {"VoiceGatewayDegradationsRising": True}),
        case([calls, series("gateway_stream_degradations_total", "0+0.2x40", reason="stt")],
             {"VoiceGatewayDegradationsRising": False}),  # 2% of calls
        case(turn_buckets(3.0), {"VoiceGatewayTurnLatencyHigh": True}),
        case(turn_buckets(0.8), {"VoiceGatewayTurnLatencyHigh": False}),
    ]
    spec = tmp_path / "alerts-test.yaml"
    spec.write_text(yaml.safe_dump({"rule_files": [alerts.name], "evaluation_interval": "1m",
                                    "tests": tests}))
    done = subprocess.run(["promtool", "test", "rules", str(spec)], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


async def test_a_fresh_gateway_exposes_every_known_series_at_zero() -> None:
    """Before any call, webhook or Rasa request: each counted label value is there at 0, so a
    dashboard or an alert reads 0, not "no data"."""
    with gateway_process() as gateway:
        samples = await gateway.scrape()
    expected = [
        ("gateway_incoming_calls_total", {"mode": "stream"}),
        ("gateway_incoming_calls_total", {"mode": "gather"}),
        ("gateway_resumes_total", {"outcome": "stream"}),
        ("gateway_resumes_total", {"outcome": "gather"}),
        ("gateway_resumes_total", {"outcome": "handover"}),
        ("gateway_resumes_total", {"outcome": "expired"}),
        ("gateway_resumes_total", {"outcome": "exhausted"}),
        ("gateway_call_status_total", {"status": "completed"}),
        ("gateway_call_status_total", {"status": "ringing"}),
        ("gateway_call_status_total", {"status": "other"}),
        ("gateway_webhook_errors_total", {"route": "voice"}),
        ("gateway_webhook_errors_total", {"route": "status"}),
        ("gateway_webhook_duration_seconds_count", {"route": "resume"}),
        ("gateway_signature_rejections_total",
         {"route": "/webhook/twilio/voice", "reason": "invalid"}),
        ("gateway_signature_rejections_total",
         {"route": "/webhook/twilio/stream", "reason": "missing"}),
        ("gateway_signature_rejections_total",
         {"route": "/webhook/twilio/stream", "reason": "stream_token_expired"}),
        ("gateway_signature_rejections_total",
         {"route": "/webhook/twilio/stream", "reason": "stream_token_replayed"}),
        ("gateway_fallback_transfers_total", {"reason": "no_input"}),
        ("gateway_fallback_transfers_total", {"reason": "rasa_error"}),
        ("gateway_fallback_transfers_total", {"reason": "redirect"}),
        ("gateway_rasa_errors_total", {"kind": "connect"}),
        ("gateway_rasa_errors_total", {"kind": "timeout"}),
        ("gateway_rasa_errors_total", {"kind": "http_status"}),
        ("gateway_rasa_errors_total", {"kind": "invalid_reply"}),
        ("gateway_call_control_requests_total", {"operation": "transfer", "outcome": "ok"}),
        ("gateway_call_control_requests_total",
         {"operation": "hang_up", "outcome": "unreachable"}),
        ("gateway_call_control_requests_total",
         {"operation": "redirect_to_gather", "outcome": "rest_error"}),
        ("gateway_stream_degradations_total", {"reason": "stt"}),
        ("gateway_stream_frames_rejected_total", {"reason": "invalid_json"}),
        ("gateway_stream_calls_ended_total", {"how": "transfer"}),
    ]
    missing = [(name, labels) for name, labels in expected
               if samples.get((name, frozenset(labels.items()))) != 0]
    assert missing == []
