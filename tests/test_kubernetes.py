"""conf/kubernetes/: the manifests agree with each other and with the app, and the container runs.

kubeconform and a cluster are not available here, so the manifests are parsed (pyyaml)
and checked field by field: required fields, labels and selectors, port names, paths
that are the app's routes, the in-memory metrics volume, the protobuf scrape. Then the
Deployment's own command and environment are run for real (gunicorn from this venv on a
loopback port, the metrics directory under a world-writable directory standing for the
emptyDir) and every path the manifests name is requested.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml
from servers import REPO_ROOT, Server, free_port, http, launch_gunicorn, stop

from example_app.app import create_app
from flask_gatewayz_metrics.settings import Settings
from flask_gatewayz_metrics.storage.directory import MetricsDirectoryError, ensure_directory

KUBERNETES = REPO_ROOT / "conf" / "kubernetes"
NAME = {"app.kubernetes.io/name": "gatewayz-api"}
PROTOBUF_ACCEPT = (
    "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,"
    "text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)
REQUIRED_PROBE_KEYS = {"readinessProbe", "livenessProbe"}


def manifests() -> dict[str, dict[str, Any]]:
    """Every document under conf/kubernetes/, by kind (one of each)."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(KUBERNETES.glob("*.yaml")):
        with path.open(encoding="utf-8") as f:
            for document in yaml.safe_load_all(f):
                assert isinstance(document, dict), path
                assert document["kind"] not in out, f"two {document['kind']}s"
                out[document["kind"]] = document
    return out


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only  # type: ignore[no-any-return]


def env_of(spec: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in spec.get("env", [])}


def test_every_manifest_has_its_required_fields() -> None:
    """Each document: apiVersion, kind, metadata.name and the fields its kind requires."""
    documents = manifests()
    assert set(documents) == {"Deployment", "Service", "PodMonitor", "ServiceMonitor"}
    expected_api = {"Deployment": "apps/v1", "Service": "v1"}
    for kind, document in documents.items():
        assert document["apiVersion"] == expected_api.get(kind, "monitoring.coreos.com/v1"), kind
        assert document["metadata"]["name"] == "gatewayz-api", kind
        assert document["metadata"]["labels"]["app.kubernetes.io/name"] == "gatewayz-api", kind
    deployment = documents["Deployment"]["spec"]
    assert isinstance(deployment["replicas"], int) and deployment["replicas"] >= 2  # a fleet
    spec = container(documents["Deployment"])
    assert spec["name"] and spec["image"]
    assert all(isinstance(arg, str) for arg in spec["command"])  # "4", not 4: Kubernetes wants strings
    assert spec.keys() >= REQUIRED_PROBE_KEYS


def test_labels_and_selectors_agree() -> None:
    """The Deployment selects its pods; the Service, PodMonitor and ServiceMonitor select them (or the Service)."""
    documents = manifests()
    deployment = documents["Deployment"]["spec"]
    pod_labels = deployment["template"]["metadata"]["labels"]
    assert deployment["selector"]["matchLabels"].items() <= pod_labels.items()
    assert documents["Service"]["spec"]["selector"].items() <= pod_labels.items()
    assert documents["PodMonitor"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service_labels = documents["Service"]["metadata"]["labels"]
    assert documents["ServiceMonitor"]["spec"]["selector"]["matchLabels"].items() <= service_labels.items()
    # job="gatewayz-api" (what the alerts select) comes from this label's value
    for kind in ("PodMonitor", "ServiceMonitor"):
        label = documents[kind]["spec"]["jobLabel"]
        assert pod_labels[label] == service_labels[label] == "gatewayz-api"


def test_ports_and_paths_are_the_apps() -> None:
    """Port names resolve, gunicorn binds the container port, probe and scrape paths are routes of the app."""
    documents = manifests()
    spec = container(documents["Deployment"])
    (port,) = spec["ports"]
    assert port["name"] == "http"
    command = spec["command"]
    assert command[:3] == ["gunicorn", "-c", "python:flask_gatewayz_metrics.gunicorn_conf"]
    assert command[command.index("--bind") + 1] == f"0.0.0.0:{port['containerPort']}"
    (service_port,) = documents["Service"]["spec"]["ports"]
    assert (service_port["name"], service_port["targetPort"]) == ("http", "http")
    (pod_endpoint,) = documents["PodMonitor"]["spec"]["podMetricsEndpoints"]
    (service_endpoint,) = documents["ServiceMonitor"]["spec"]["endpoints"]
    assert pod_endpoint["port"] == port["name"]  # a container port, by name
    assert service_endpoint["port"] == service_port["name"]  # a Service port, by name
    metrics_path = Settings().url_prefix
    assert pod_endpoint["path"] == service_endpoint["path"] == metrics_path
    app = create_app({"TESTING": True})
    routes = {rule.rule for rule in app.url_map.iter_rules()}
    assert metrics_path in routes
    for probe in REQUIRED_PROBE_KEYS:
        get = spec[probe]["httpGet"]
        assert get["port"] == "http" and get["path"] in routes, probe
        assert not get["path"].startswith(metrics_path), "/metrics/health turns 503 with the upstream error rate"


def test_protobuf_scrape_is_asked_for() -> None:
    """Both monitors ask for the protobuf format first and keep the classic buckets beside native ones."""
    documents = manifests()
    for kind in ("PodMonitor", "ServiceMonitor"):
        spec = documents[kind]["spec"]
        assert spec["scrapeProtocols"] == ["PrometheusProto", "OpenMetricsText1.0.0", "PrometheusText0.0.4"]
        assert spec["scrapeClassicHistograms"] is True


def test_metrics_directory_is_a_private_subdirectory_of_an_in_memory_volume() -> None:
    """GATEWAYZ_METRICS_DIR lies strictly under the mount of an emptyDir of medium Memory."""
    documents = manifests()
    pod = documents["Deployment"]["spec"]["template"]["spec"]
    spec = container(documents["Deployment"])
    (volume,) = pod["volumes"]
    assert volume["emptyDir"]["medium"] == "Memory" and volume["emptyDir"]["sizeLimit"]
    (mount,) = [m for m in spec["volumeMounts"] if m["name"] == volume["name"]]
    directory = Path(env_of(spec)["GATEWAYZ_METRICS_DIR"])
    mount_path = Path(mount["mountPath"])
    assert directory.is_absolute() and mount_path in directory.parents


def test_world_writable_mount_point_is_refused_and_its_subdirectory_accepted(tmp_path: Path) -> None:
    """An emptyDir is created 0777: the extension refuses it as the metrics directory, and makes a 0700 one inside."""
    empty_dir = tmp_path / "emptydir"
    empty_dir.mkdir()
    empty_dir.chmod(0o777)
    with pytest.raises(MetricsDirectoryError, match="world-writable"):
        ensure_directory(str(empty_dir))
    inside = Path(ensure_directory(str(empty_dir / "metrics")))
    assert stat.S_IMODE(inside.stat().st_mode) == 0o700


def test_the_deployments_container_serves_every_path_the_manifests_name(tmp_path: Path) -> None:
    """The container's command and env run for real (loopback, a 0777 dir as emptyDir): probes and scrapes answer."""
    documents = manifests()
    spec = container(documents["Deployment"])
    (mount,) = spec["volumeMounts"]
    empty_dir = tmp_path / "emptydir"
    empty_dir.mkdir()
    empty_dir.chmod(0o777)  # as Kubernetes creates an emptyDir
    metrics_dir = empty_dir / Path(env_of(spec)["GATEWAYZ_METRICS_DIR"]).relative_to(mount["mountPath"])
    port = free_port()
    command = list(spec["command"])
    assert command[0] == "gunicorn"
    arguments = command[1:]
    bind = arguments.index("--bind")
    del arguments[bind : bind + 2]  # launch_gunicorn binds 127.0.0.1:port (gunicorn would bind both)
    arguments[arguments.index("--workers") + 1] = "2"  # a small machine
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAYZ_METRICS_", "GATEWAY_"))}
    env.update(env_of(spec))
    env["GATEWAYZ_METRICS_DIR"] = str(metrics_dir)
    env["GATEWAY_DB_PATH"] = str(tmp_path / "models.sqlite3")
    # launch_gunicorn runs `python -m gunicorn -c conf/gunicorn.conf.py --bind ... <arguments>`:
    # the manifest's later `-c python:flask_gatewayz_metrics.gunicorn_conf` wins.
    server: Server = launch_gunicorn(arguments, env, metrics_dir, tmp_path / "gunicorn.log", port=port)
    try:
        for probe in REQUIRED_PROBE_KEYS:
            status, _ = http("GET", server.url + spec[probe]["httpGet"]["path"], timeout=5.0)
            assert status == 200, probe
        (endpoint,) = documents["PodMonitor"]["spec"]["podMetricsEndpoints"]
        status, body = http("GET", server.url + endpoint["path"], timeout=10.0)
        assert status == 200 and b"# TYPE http_requests_total counter" in body
        status, body = http("GET", server.url + endpoint["path"], timeout=10.0, headers={"Accept": PROTOBUF_ACCEPT})
        assert status == 200 and not body.startswith(b"#")  # length-delimited protobuf, not text
        assert stat.S_IMODE(metrics_dir.stat().st_mode) == 0o700
        assert any(metrics_dir.iterdir())
    finally:
        stop(server.process)
