"""The deployment files agree with the app: manifests parse, probes hit real routes, the grace
period outlasts the drain, names line up, the ConfigMap only sets settings that exist; the nginx
site passes `nginx -t` where nginx is installed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from app import config, metrics
from app.config import Settings, load_settings
from app.server import CLOSE_SECONDS, create_app

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
NGINX_SITE = DEPLOY / "nginx" / "voice-gateway.conf"
LIVE_CALLS = DEPLOY / "k8s-live-calls"


def manifests() -> dict[str, dict[str, Any]]:
    """kind -> the one manifest of that kind under deploy/k8s."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            assert doc and "kind" in doc, f"{path.name}: a document without kind"
            assert doc["kind"] not in found, f"two {doc['kind']} manifests"
            found[doc["kind"]] = doc
    return found


@pytest.fixture(scope="module")
def k8s() -> dict[str, dict[str, Any]]:
    return manifests()


def container(k8s: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (only,) = k8s["Deployment"]["spec"]["template"]["spec"]["containers"]
    return only


def configmap_settings(k8s: dict[str, dict[str, Any]]) -> Settings:
    env = {**k8s["ConfigMap"]["data"], **k8s["Secret"]["stringData"]}
    return load_settings(environ=env)


def test_every_manifest_kind_is_there(k8s: dict[str, dict[str, Any]]) -> None:
    assert {"Deployment", "Service", "Ingress", "HorizontalPodAutoscaler", "ConfigMap",
            "Secret", "Kustomization"} <= set(k8s)
    listed = set(k8s["Kustomization"]["resources"])
    assert listed == {p.name for p in (DEPLOY / "k8s").glob("*.yaml")} - {"kustomization.yaml"}


def test_probes_use_routes_the_app_serves(k8s: dict[str, dict[str, Any]]) -> None:
    paths = {getattr(route, "path", None) for route in create_app(Settings()).routes}
    gateway = container(k8s)
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/health"
    assert {"/ready", "/health"} <= paths
    port_names = {port["name"] for port in gateway["ports"]}
    assert gateway["readinessProbe"]["httpGet"]["port"] in port_names
    assert gateway["livenessProbe"]["httpGet"]["port"] in port_names


def test_grace_period_outlasts_prestop_and_drain(k8s: dict[str, dict[str, Any]]) -> None:
    spec = k8s["Deployment"]["spec"]["template"]["spec"]
    pre_stop = container(k8s)["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain = max(configmap_settings(k8s).server.drain_timeout_seconds,
                load_settings(environ={}).server.drain_timeout_seconds)
    # After the drain, uvicorn gets CLOSE_SECONDS to close what is left before SIGKILL may come.
    assert spec["terminationGracePeriodSeconds"] >= int(pre_stop[1]) + drain + CLOSE_SECONDS


def test_configmap_sets_only_real_settings(k8s: dict[str, dict[str, Any]]) -> None:
    known = set(config.environment_variables())
    for source in (k8s["ConfigMap"]["data"], k8s["Secret"]["stringData"]):
        assert set(source) <= known, set(source) - known
    settings = configmap_settings(k8s)  # and they validate
    assert settings.server.workers == 1
    assert settings.server.public_url.startswith("https://")


def test_names_line_up(k8s: dict[str, dict[str, Any]]) -> None:
    deployment, service = k8s["Deployment"], k8s["Service"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] in {p["name"] for p in container(k8s)["ports"]}
    refs = {ref[kind]["name"] for ref in container(k8s)["envFrom"] for kind in ref}
    assert refs == {k8s["ConfigMap"]["metadata"]["name"], k8s["Secret"]["metadata"]["name"]}
    target = k8s["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    (rule,) = k8s["Ingress"]["spec"]["rules"]
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == service["metadata"]["name"]
    assert backend["port"]["name"] == service["spec"]["ports"][0]["name"]


def test_ingress_keeps_call_websockets_open(k8s: dict[str, dict[str, Any]]) -> None:
    notes = k8s["Ingress"]["metadata"]["annotations"]
    for key in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(notes[f"nginx.ingress.kubernetes.io/{key}"]) >= 3600
    paths = [p["path"] for p in k8s["Ingress"]["spec"]["rules"][0]["http"]["paths"]]
    assert all("/webhook/twilio/stream".startswith(p) for p in paths)


def live_calls_overlay() -> dict[str, Any]:
    """deploy/k8s-live-calls by file name (its one document each)."""
    return {path.name: yaml.safe_load(path.read_text(encoding="utf-8"))
            for path in sorted(LIVE_CALLS.glob("*.yaml"))}


def test_the_live_calls_overlay_scales_the_base_hpa_on_a_metric_the_gateway_serves(
    k8s: dict[str, dict[str, Any]],
) -> None:
    files = live_calls_overlay()
    kustomization = files["kustomization.yaml"]
    assert kustomization["resources"][0] == "../k8s"
    used = {*kustomization["resources"][1:], *(p["path"] for p in kustomization["patches"])}
    assert used | {"kustomization.yaml", "prometheus-adapter.yaml"} == set(files)
    patch = files["hpa-live-calls.yaml"]
    assert (patch["kind"], patch["metadata"]["name"]) == (
        "HorizontalPodAutoscaler", k8s["HorizontalPodAutoscaler"]["metadata"]["name"])
    pods = next(m["pods"] for m in patch["spec"]["metrics"] if m["type"] == "Pods")
    name = pods["metric"]["name"]
    assert f"\n{name} " in metrics.render().decode()  # a gauge of every gateway's /metrics
    # Pods scale out well before they are full (new calls then get the Gather path).
    full = configmap_settings(k8s).server.max_active_calls
    assert pods["target"]["type"] == "AverageValue"
    assert 0 < int(pods["target"]["averageValue"]) <= 0.8 * full


def test_prometheus_scrapes_the_pods_and_the_adapter_serves_the_hpa_its_metric(
    k8s: dict[str, dict[str, Any]],
) -> None:
    files = live_calls_overlay()
    monitor = files["podmonitor.yaml"]["spec"]
    labels = k8s["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert monitor["selector"]["matchLabels"].items() <= labels.items()
    (endpoint,) = monitor["podMetricsEndpoints"]
    assert endpoint["port"] in {port["name"] for port in container(k8s)["ports"]}
    assert endpoint["path"] in {getattr(r, "path", None) for r in create_app(Settings()).routes}
    hpa_metrics = files["hpa-live-calls.yaml"]["spec"]["metrics"]
    hpa_metric = next(m["pods"]["metric"]["name"] for m in hpa_metrics if m["type"] == "Pods")
    (rule,) = files["prometheus-adapter.yaml"]["rules"]["custom"]
    assert rule["seriesQuery"].startswith(hpa_metric + "{")
    assert rule["name"]["as"] == hpa_metric
    # Per pod: the HPA asks for the metric of each pod it scales.
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"},
                                              "pod": {"resource": "pod"}}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_builds_the_base_and_the_live_calls_overlay() -> None:
    def build(folder: Path) -> dict[str, dict[str, Any]]:
        done = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return {doc["kind"]: doc for doc in yaml.safe_load_all(done.stdout)}

    base, overlay = build(DEPLOY / "k8s"), build(LIVE_CALLS)
    assert set(overlay) == set(base) | {"PodMonitor"}
    assert [m["type"] for m in base["HorizontalPodAutoscaler"]["spec"]["metrics"]] == ["Resource"]
    scaled = overlay["HorizontalPodAutoscaler"]["spec"]
    assert [m["type"] for m in scaled["metrics"]] == ["Pods", "Resource"]  # replaced, not merged
    assert scaled["behavior"] == base["HorizontalPodAutoscaler"]["spec"]["behavior"]


def test_nginx_site_proxies_websocket_upgrades() -> None:
    site = NGINX_SITE.read_text(encoding="utf-8")
    for needed in ("proxy_set_header Upgrade $http_upgrade;",
                   "proxy_set_header Connection $connection_upgrade;",
                   "proxy_set_header X-Forwarded-Proto $scheme;",
                   "location = /webhook/twilio/stream"):
        assert needed in site


@pytest.mark.skipif(shutil.which("nginx") is None or shutil.which("openssl") is None,
                    reason="nginx or openssl not installed")
def test_nginx_accepts_the_site(tmp_path: Path) -> None:
    cert, key = tmp_path / "site.crt", tmp_path / "site.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=voice.bank.example", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    site = NGINX_SITE.read_text(encoding="utf-8")
    site = site.replace("/etc/nginx/tls/voice-gateway.crt", str(cert))
    site = site.replace("/etc/nginx/tls/voice-gateway.key", str(key))
    (tmp_path / "site.conf").write_text(site, encoding="utf-8")
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n  access_log off;\n  include {tmp_path}/site.conf;\n}}\n", encoding="utf-8")
    result = subprocess.run(["nginx", "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
