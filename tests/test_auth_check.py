"""GATEWAYZ_METRICS_AUTH_CHECK: a callable that admits scrapes beside bearer / basic credentials."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from conftest import configured_app
from flask import Flask, Request

SCRAPE_ROUTES = ("/metrics", "/metrics/json", "/metrics/health", "/metrics/dashboard")


def from_internal_network(request: Request) -> bool:
    return request.headers.get("X-Internal") == "yes"


def make(tmp_path: Path, **config: Any) -> Flask:
    return configured_app(tmp_path, "auth_check", **config)[0]


def test_check_alone_admits_or_forbids(tmp_path: Path) -> None:
    """With only a check configured, every scrape route answers 200 when it returns True, else 403."""
    client = make(tmp_path, auth_check=from_internal_network).test_client()
    for route in SCRAPE_ROUTES:
        assert client.get(route, headers={"X-Internal": "yes"}).status_code == 200, route
        assert client.get(route).status_code == 403, route


def test_check_beside_basic_credentials(tmp_path: Path) -> None:
    """Either the basic credentials or the check admit; neither is a 401 with the Basic challenge."""
    client = make(tmp_path, auth_check=from_internal_network, auth_username="ops", auth_password="pw").test_client()
    assert client.get("/metrics", auth=("ops", "pw")).status_code == 200
    assert client.get("/metrics", headers={"X-Internal": "yes"}).status_code == 200
    refused = client.get("/metrics", auth=("ops", "wrong"))
    assert refused.status_code == 401 and "Basic" in refused.headers["WWW-Authenticate"]


def test_check_that_raises_or_returns_truthy_refuses(tmp_path: Path, caplog: Any) -> None:
    """A check that raises refuses (logged, never a 500); only True admits, not a truthy value."""

    def broken(request: Request) -> bool:
        raise RuntimeError("directory service down")

    client = make(tmp_path / "a", auth_check=broken).test_client()
    with caplog.at_level(logging.ERROR, logger="flask_gatewayz_metrics"):
        assert client.get("/metrics").status_code == 403
    assert "AUTH_CHECK raised" in caplog.text
    truthy = make(tmp_path / "b", auth_check=lambda request: "yes").test_client()
    assert truthy.get("/metrics").status_code == 403


def test_reset_is_not_opened_by_the_check(tmp_path: Path) -> None:
    """The reset route keeps requiring its own token, whatever the check says."""
    client = make(tmp_path, auth_check=lambda request: True, reset_token="t").test_client()
    assert client.post("/metrics/reset").status_code == 401
    assert client.post("/metrics/reset", headers={"Authorization": "Bearer t"}).status_code == 200


def test_check_must_be_callable(tmp_path: Path) -> None:
    """A value that cannot be called fails init_app naming the key."""
    with pytest.raises(TypeError, match="GATEWAYZ_METRICS_AUTH_CHECK must be a callable"):
        make(tmp_path, auth_check="from_internal_network")
